"""Robust image loading for extraction: decode any PIL mode to RGB, crop, and report failures, never raise."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from extract.transforms import crop_image

logger = logging.getLogger(__name__)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit grayscale PNG/TIFF decode to these
_ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    - 16-bit grayscale ("I;16*", and "I" as 16-bit PNGs decode) is scaled 0..65535 -> 0..255 (PIL's own
      convert would clip everything above 255 to white);
    - alpha (RGBA, LA, PA, P with a transparency entry) is composited on white, not dropped, so a
      transparent background does not turn into whatever colour its hidden RGB values hold;
    - CMYK, L, 1, P, YCbCr go through PIL's convert (CMYK without ICC colour management; EXIF rotation is
      not applied, as in torchvision's ImageFolder).
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        levels = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.round(levels / 257.0), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.round(np.asarray(image)), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def load_crops(path: str | Path, crops: int) -> torch.Tensor:
    """Open, fully decode, convert to RGB and crop one image -> uint8 [crops, 3, 224, 224]. May raise."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise OSError("empty file (0 bytes)")
    with Image.open(path) as image:
        image.load()  # decode now: truncated files raise here (LOAD_TRUNCATED_IMAGES stays False)
        return crop_image(to_rgb(image), crops)


class ImageDataset(Dataset):
    """Items (row index, absolute path) -> (index, uint8 crops [crops, 3, 224, 224]) or (index, error str)."""

    def __init__(self, indices: Sequence[int], paths: Sequence[str | Path], *, crops: int) -> None:
        if len(indices) != len(paths):
            raise ValueError(f"{len(indices)} indices but {len(paths)} paths")
        self.indices = [int(i) for i in indices]
        self.paths = [str(p) for p in paths]
        self.crops = crops

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor | str]:
        index, path = self.indices[position], self.paths[position]
        try:
            return index, load_crops(path, self.crops)
        except Exception as error:  # any decode failure becomes a failure record, the run goes on
            return index, f"{type(error).__name__}: {error}"


@dataclass
class CropBatch:
    """Collated batch: decoded images and the rows that failed, in one object."""

    indices: torch.Tensor  # int64 [B] store rows of the decoded images
    crops: torch.Tensor  # uint8 [B, crops, 3, 224, 224]
    failed_indices: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one reason per failed row

    def pin_memory(self) -> "CropBatch":
        """Called by DataLoader(pin_memory=True) so the host-to-GPU copy can be non-blocking."""
        return CropBatch(self.indices.pin_memory(), self.crops.pin_memory(), self.failed_indices, self.errors)

    def __len__(self) -> int:
        return len(self.indices) + len(self.failed_indices)


def collate_crops(items: list[tuple[int, torch.Tensor | str]], *, crops: int = 10) -> CropBatch:
    """Stack the decoded items of a batch; carry failures along as (index, reason) lists."""
    good = [(index, value) for index, value in items if isinstance(value, torch.Tensor)]
    bad = [(index, value) for index, value in items if not isinstance(value, torch.Tensor)]
    if good:
        stacked = torch.stack([value for _, value in good])
    else:
        stacked = torch.empty((0, crops, 3, 224, 224), dtype=torch.uint8)
    return CropBatch(indices=torch.tensor([index for index, _ in good], dtype=torch.int64), crops=stacked,
                     failed_indices=[index for index, _ in bad], errors=[reason for _, reason in bad])


class _Collate:
    """Picklable collate bound to a crop count (workers may be spawned)."""

    def __init__(self, crops: int) -> None:
        self.crops = crops

    def __call__(self, items: list[tuple[int, torch.Tensor | str]]) -> CropBatch:
        return collate_crops(items, crops=self.crops)


def make_loader(dataset: ImageDataset, *, batch_size: int, workers: int, pin_memory: bool) -> DataLoader:
    """Ordered DataLoader over ``dataset``; workers decode + resize + crop, the main process runs the CNN."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=_Collate(dataset.crops), pin_memory=pin_memory,
                      prefetch_factor=4 if workers > 0 else None, persistent_workers=False)
