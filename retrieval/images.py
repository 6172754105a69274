"""New images for a trained model: folders and lists checked up front, decoded and cropped as extract's 1C."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from extract.loader import collate_crops, load_crops, to_rgb
from extract.transforms import crop_image

# Files a folder contributes (by suffix, case-insensitive); PIL decodes them all.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

ImageInput = str | Path | Image.Image


def list_images(inputs: Sequence[str | Path]) -> list[str]:
    """Image paths of `inputs`: each a file (kept as given) or a folder (its image files, recursively, sorted).

    Checked before anything runs: a missing path is a FileNotFoundError, a file without an image suffix or a
    folder without images a ValueError naming it.
    """
    paths: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(str(child) for child in path.rglob("*")
                           if child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"folder {str(path)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        elif not path.is_file():
            raise FileNotFoundError(f"image {str(path)!r} does not exist")
        elif path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{str(path)!r} is not an image file (suffix {path.suffix!r}); pass images with one of "
                             f"the suffixes {', '.join(IMAGE_SUFFIXES)}")
        else:
            paths.append(str(path))
    if not paths:
        raise ValueError("no image given")
    return paths


class ImageInputs(Dataset):
    """Items (paths or PIL images) -> (position, uint8 center crop [1, 3, 224, 224]) or (position, reason).

    The crop is extract's 1C (resize 256x256, center 224, RGB conversion of any PIL mode); a file that
    cannot be decoded becomes a reason, as in extract's ImageDataset, so a loader never dies on it.
    """

    crops = 1

    def __init__(self, items: Sequence[ImageInput], *, resize: str = "square") -> None:
        self.items = list(items)
        self.resize = resize  # "keep-aspect" for a model that reads images as the reference code does

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor | str]:
        item = self.items[position]
        try:
            if isinstance(item, Image.Image):
                return position, crop_image(to_rgb(item), 1, resize=self.resize)
            return position, load_crops(item, 1, resize=self.resize)
        except Exception as error:  # reported by the caller with the image's name
            return position, f"{type(error).__name__}: {error}"


def describe(item: ImageInput) -> str:
    """A name for an image input in messages: its path, or the PIL image's mode and size."""
    if isinstance(item, Image.Image):
        return f"PIL image ({item.mode}, {item.width}x{item.height})"
    return repr(str(item))


def crop_batches(items: Sequence[ImageInput], *, batch_size: int, workers: int,
                 resize: str = "square") -> Iterator[torch.Tensor]:
    """uint8 center crops [B, 3, 224, 224] of `items` in order (`resize`: extract.transforms.crop_image's);
    ValueError naming the first unreadable one."""
    for item in items:
        if not isinstance(item, (str, Path, Image.Image)):
            raise ValueError(f"images must be paths or PIL images, got {type(item).__name__}")
        if not isinstance(item, Image.Image) and not Path(item).is_file():
            raise FileNotFoundError(f"image {str(item)!r} does not exist")
    loader = DataLoader(ImageInputs(items, resize=resize), batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=_collate_one_crop)
    for batch in loader:
        if batch.failed_indices:
            position = batch.failed_indices[0]
            raise ValueError(f"image {describe(items[position])} cannot be read as an image ({batch.errors[0]})")
        yield batch.crops[:, 0]


def _collate_one_crop(items: list) -> object:
    return collate_crops(items, crops=1)
