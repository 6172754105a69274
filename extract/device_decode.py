"""`--decode gpu`: DataLoader workers only read JPEG bytes; the batch is decoded, resized and cropped on the device.

On a GPU the decode is the ceiling of extraction long before the CNN (clip-retrieval's resize bottleneck,
torchvision's batched nvJPEG decode far above one CPU thread). Here a batch of JPEG files is decoded with
torchvision.io.decode_jpeg(list, device=...) in one call, resized to 256x256 with antialiased bilinear
interpolation and cut into the paper's crops, all on the device. Anything that is not a JPEG (PNG, CMYK,
16-bit, alpha) is decoded in the worker by the CPU path (extract/loader.py), and a batch whose decode fails is
decoded again image by image on the device, so a bad file fails alone.
Tolerance against the CPU path (measured on the CPU, where decode_jpeg and PIL give identical pixels): the
256x256 resize differs from PIL's by at most 1 intensity level per pixel (mean 0.14 on a 640x480 photo-like
JPEG); nvJPEG's decode on a GPU may add a level or two (not measured here: no GPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from extract.loader import CropBatch, ImageDataset, load_crops, open_image_file, time_limit
from extract.transforms import CROP, RESIZE, five_crop_boxes
from features.schema import CENTER_CROP_INDEX

JPEG_MAGIC = b"\xff\xd8\xff"


class JpegBytesDataset(ImageDataset):
    """Items (row, JPEG file bytes as uint8 [n]) for JPEG files, else (row, CPU-decoded crops) or (row, error)."""

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor | str]:
        index, path = self.indices[position], self.paths[position]
        try:
            with time_limit(self.timeout_s):
                with open_image_file(path) as handle:
                    data = handle.read()
                if data.startswith(JPEG_MAGIC):
                    return index, torch.frombuffer(bytearray(data), dtype=torch.uint8)
                return index, load_crops(path, self.crops)
        except Exception as error:  # any read or decode failure becomes a failure record, the run goes on
            return index, f"{type(error).__name__}: {error}"


@dataclass
class BytesBatch:
    """A batch of JPEG bytes to decode on the device, the rows the CPU already decoded, and the failures."""

    jpeg_indices: list[int]
    jpegs: list[torch.Tensor]  # uint8 [n] each
    decoded: CropBatch
    failed_indices: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def pin_memory(self) -> BytesBatch:
        return BytesBatch(self.jpeg_indices, [data.pin_memory() for data in self.jpegs], self.decoded.pin_memory(),
                          self.failed_indices, self.errors)

    def __len__(self) -> int:
        return len(self.jpeg_indices) + len(self.decoded) + len(self.failed_indices)


class CollateBytes:
    """Picklable collate of JpegBytesDataset items: 1-D tensors are JPEG bytes, 4-D ones decoded crops."""

    def __init__(self, crops: int) -> None:
        self.crops = crops

    def __call__(self, items: list[tuple[int, torch.Tensor | str]]) -> BytesBatch:
        jpegs = [(index, value) for index, value in items if isinstance(value, torch.Tensor) and value.dim() == 1]
        crops = [(index, value) for index, value in items if isinstance(value, torch.Tensor) and value.dim() == 4]
        bad = [(index, value) for index, value in items if isinstance(value, str)]
        stacked = (torch.stack([value for _, value in crops]) if crops
                   else torch.empty((0, self.crops, 3, CROP, CROP), dtype=torch.uint8))
        decoded = CropBatch(indices=torch.tensor([index for index, _ in crops], dtype=torch.int64), crops=stacked)
        return BytesBatch([index for index, _ in jpegs], [value for _, value in jpegs], decoded,
                          [index for index, _ in bad], [reason for _, reason in bad])


def crops_on_device(image: torch.Tensor, crops: int) -> torch.Tensor:
    """uint8 [3, H, W] on any device -> uint8 [crops, 3, 224, 224]: the paper's 256x256 resize (antialiased
    bilinear), then the center crop or TenCrop (five boxes, then the same boxes of the mirror image)."""
    resized = F.interpolate(image.unsqueeze(0).float(), size=(RESIZE, RESIZE), mode="bilinear", antialias=True,
                            align_corners=False)[0].round_().clamp_(0, 255).to(torch.uint8)
    boxes = five_crop_boxes(RESIZE, CROP)
    if crops == 1:
        boxes = [boxes[CENTER_CROP_INDEX]]
    cut = [resized[:, top:top + height, left:left + width] for top, left, height, width in boxes]
    if crops == 10:
        mirror = resized.flip(-1)
        cut += [mirror[:, top:top + height, left:left + width] for top, left, height, width in boxes]
    return torch.stack(cut)


def decode_jpegs(jpegs: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor | str]:
    """Each JPEG as uint8 [3, H, W] on `device`, or the reason it failed; one batched call, then one call per
    image if the batch fails (a bad file fails alone)."""
    if not jpegs:
        return []
    try:
        return list(decode_jpeg(list(jpegs), mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        decoded: list[torch.Tensor | str] = []
        for data in jpegs:
            try:
                decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError as error:
                decoded.append(f"RuntimeError: {error}".splitlines()[0])
        return decoded


def decode_batch(batch: BytesBatch, *, device: torch.device, crops: int) -> CropBatch:
    """A BytesBatch -> the CropBatch the CNN takes, its JPEGs decoded and cropped on `device`."""
    indices, stacks = batch.decoded.indices.tolist(), [batch.decoded.crops.to(device, non_blocking=True)]
    failed, errors = list(batch.failed_indices), list(batch.errors)
    for index, image in zip(batch.jpeg_indices, decode_jpegs(batch.jpegs, device)):
        if isinstance(image, str):
            failed.append(index)
            errors.append(image)
        else:
            indices.append(index)
            stacks.append(crops_on_device(image, crops).unsqueeze(0))
    return CropBatch(indices=torch.tensor(indices, dtype=torch.int64), crops=torch.cat(stacks),
                     failed_indices=failed, errors=errors)
