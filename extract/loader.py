"""Robust image loading for extraction: decode any PIL mode to RGB, crop, and report failures, never raise."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from extract.transforms import crop_image

logger = logging.getLogger(__name__)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit grayscale PNG/TIFF decode to these
_ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white
DEFAULT_IMAGE_TIMEOUT_S = 60.0  # one image may take this long to open and decode before it is marked failed
_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class DecodeTimeout(TimeoutError):
    """One image took longer than its time limit to open and decode (the row is marked failed)."""


class LoaderStalled(TimeoutError):
    """No batch came from the DataLoader workers in time: a decode hangs where no signal reaches it."""


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


def open_image_file(path: str | Path) -> BinaryIO:
    """Open a regular file for reading; anything else (FIFO, device, directory) is an OSError at once.

    The file is opened non-blocking and checked with fstat on the open descriptor, so a FIFO never blocks
    the open or a read, and nothing can be swapped in between the check and the read.
    """
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for is_kind, name in _FILE_KINDS if is_kind(info.st_mode)), "not a regular file")
            raise OSError(f"{kind}, not an image file")
        if info.st_size == 0:
            raise OSError("empty file (0 bytes)")
        os.set_blocking(descriptor, True)
    except BaseException:
        os.close(descriptor)
        raise
    handle = os.fdopen(descriptor, "rb")
    handle.raw.name = str(path)  # decoders name the file in their errors
    return handle


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise DecodeTimeout inside the block once `seconds` have passed (0 = no limit).

    Uses SIGALRM, so it works only in a process's main thread (the main process, or a DataLoader worker);
    elsewhere the block runs without a limit. Known limit: the signal interrupts blocking system calls
    (a read from a hung network share) and Python code, but C code that loops without returning (a decoder
    spinning on a hostile file) is only stopped by the DataLoader timeout (`make_loader(stall_timeout=)`).
    """
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise DecodeTimeout(f"not decoded within {seconds:g} s (--image-timeout)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def load_crops(path: str | Path, crops: int, *, resize: str = "square") -> torch.Tensor:
    """Open, fully decode, convert to RGB and crop one image -> uint8 [crops, 3, 224, 224] (`resize`: see
    extract.transforms.crop_image). May raise."""
    with open_image_file(path) as handle, Image.open(handle) as image:
        image.load()  # decode now: truncated files raise here (LOAD_TRUNCATED_IMAGES stays False)
        return crop_image(to_rgb(image), crops, resize=resize)


class ImageDataset(Dataset):
    """Items (row index, absolute path) -> (index, uint8 crops [crops, 3, 224, 224]) or (index, error str).

    Each image gets `timeout_s` seconds to open and decode (time_limit) before it becomes a failure record.
    `resize`: how the image is resized before cropping (extract.transforms.crop_image; "square" = the paper's).
    """

    def __init__(self, indices: Sequence[int], paths: Sequence[str | Path], *, crops: int,
                 timeout_s: float = DEFAULT_IMAGE_TIMEOUT_S, resize: str = "square") -> None:
        if len(indices) != len(paths):
            raise ValueError(f"{len(indices)} indices but {len(paths)} paths")
        self.indices = [int(i) for i in indices]
        self.paths = [str(p) for p in paths]
        self.crops = crops
        self.timeout_s, self.resize = timeout_s, resize

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor | str]:
        index, path = self.indices[position], self.paths[position]
        try:
            with time_limit(self.timeout_s):
                return index, load_crops(path, self.crops, resize=self.resize)
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


def stall_timeout(image_timeout_s: float, batch_size: int) -> float:
    """How long to wait for a batch from the workers: every image of it may take its full time limit, plus
    two more limits for a worker's start and the queue (0 = no limit)."""
    return image_timeout_s * (batch_size + 2)


def make_loader(dataset: ImageDataset, *, batch_size: int, workers: int, pin_memory: bool,
                stall_timeout: float = 0.0, collate: object = None) -> DataLoader:
    """Ordered DataLoader over ``dataset``; workers decode + resize + crop, the main process runs the CNN.

    With workers, `stall_timeout` > 0 makes a batch that does not come within that many seconds an error
    (iterate with `iter_batches` to get it as LoaderStalled naming the rows). `collate` replaces the default
    collate into a CropBatch (device decoding collects JPEG bytes instead).
    """
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate or _Collate(dataset.crops), pin_memory=pin_memory,
                      prefetch_factor=4 if workers > 0 else None, persistent_workers=False,
                      timeout=stall_timeout if workers > 0 else 0)


def iter_batches(loader: DataLoader) -> Iterator[CropBatch]:
    """Iterate an ImageDataset loader; a worker timeout becomes LoaderStalled naming the batch that did not come.

    The workers are shut down (joined, then terminated) before LoaderStalled is raised, so none is left.
    """
    iterator, position = iter(loader), 0
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except RuntimeError as err:  # torch says "DataLoader timed out after N seconds" and nothing more specific
            if "timed out" not in str(err):
                raise
        else:
            position += len(batch)
            yield batch
            continue
        del iterator  # the last reference: torch's __del__ shuts the workers down
        dataset = loader.dataset
        rows = dataset.indices[position:position + loader.batch_size]
        raise LoaderStalled(f"no batch from the decode workers within {loader.timeout:g} s: an image of rows "
                            f"{rows[0]}..{rows[-1]} hangs while decoding (the first is {dataset.paths[position]}); "
                            "every finished row is kept: fix or remove that image and rerun the same command")
