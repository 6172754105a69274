"""Thumbnails of the images a report shows (Pillow), written once per image beside index.html."""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

logger = logging.getLogger(__name__)

THUMB_DIR = "thumbs"
JPEG_QUALITY = 85
PLACEHOLDER_GREY = (200, 200, 200)


class Thumbnails:
    """thumbs/<name>.jpg for image rows of a split; an unreadable image gets a placeholder that says so."""

    def __init__(self, out_dir: Path, *, image_root: Path, image_paths: list[str], size: int) -> None:
        self.folder = out_dir / THUMB_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob("image*.jpg"):  # an earlier report's: the rows shown may differ now
            stale.unlink()
        self.image_root, self.image_paths, self.size = image_root, image_paths, size
        self.made: dict[int, str] = {}
        self.missing: list[str] = []

    def src(self, row: int) -> str:
        """The thumbnail's path relative to index.html, made on first use."""
        if row not in self.made:
            name = f"{THUMB_DIR}/image{row:06d}.jpg"
            self._write(self.image_root / self.image_paths[row], self.folder.parent / name)
            self.made[row] = name
        return self.made[row]

    def _write(self, source: Path, target: Path) -> None:
        try:
            with Image.open(source) as image:
                image.draft("RGB", (self.size, self.size))  # JPEG: decode at a reduced scale, much faster
                thumb = ImageOps.exif_transpose(image).convert("RGB")
            thumb.thumbnail((self.size, self.size))
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            logger.warning("thumbnail of %s: %s; a placeholder is shown", source, error)
            self.missing.append(str(source))
            thumb = placeholder(self.size, "image not readable")
        thumb.save(target, quality=JPEG_QUALITY)


def placeholder(size: int, text: str) -> Image.Image:
    """A grey square saying `text`."""
    image = Image.new("RGB", (size, size), PLACEHOLDER_GREY)
    ImageDraw.Draw(image).text((8, size // 2 - 6), text, fill=(60, 60, 60))
    return image
