"""What the server lets in and out: image files only from inside the image root, uploads bounded and decoded safely."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

# Formats an upload may be in: the common photo formats (no TIFF/PSD/EPS, whose decoders are larger surfaces).
UPLOAD_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")


class QueryError(ValueError):
    """A request the page answers with a message (HTTP 400, or `status`): a bad query, a bad upload."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ImageFiles:
    """The gallery's image files, served by their path relative to the root; anything else is "not found".

    A path is served only when it is one of the gallery's images and, with every symlink resolved, lies inside the
    image root: `../` paths, absolute paths, other files of the root and links that escape it are refused alike.
    """

    def __init__(self, root: str | Path, relative_paths: list[str]) -> None:
        self.root = Path(root).resolve()
        self.allowed = {self.normalise(path) for path in relative_paths} - {None}

    @staticmethod
    def normalise(path: str) -> str | None:
        """The path as a plain relative POSIX path, or None when it is absolute, climbs (..) or holds a NUL."""
        if "\x00" in path or "\\" in path:
            return None
        pure = PurePosixPath(path)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts:
            return None
        return pure.as_posix()

    def file(self, path: str) -> Path | None:
        """The file to send for a requested path, or None (the caller answers 404)."""
        relative = self.normalise(path)
        if relative is None or relative not in self.allowed:
            return None
        resolved = (self.root / relative).resolve()  # follows symlinks: a link out of the root is refused
        if not resolved.is_relative_to(self.root) or not resolved.is_file() or not os.access(resolved, os.R_OK):
            return None
        return resolved


def relative_inside(root: str | Path, file: str | Path) -> str | None:
    """The POSIX path of `file` (absolute, or relative to the working folder) under `root`, both with symlinks
    resolved; None when it lies outside."""
    root, resolved = Path(root).resolve(), Path(file).resolve()
    return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else None


def decode_upload(data: bytes, *, max_pixels: int) -> Image.Image:
    """An uploaded file -> RGB PIL image; QueryError (400) for anything that is not a readable image of at most
    `max_pixels` pixels. The size is read from the header before any pixel is decoded (no decompression bomb)."""
    if not data:
        raise QueryError("the upload is empty: choose an image file (JPEG, PNG, GIF, BMP or WebP)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise QueryError(f"the image is {width} x {height} = {width * height:,} pixels; the limit is "
                                     f"{max_pixels:,}: upload a smaller one", status=413)
                image.load()
                return image.convert("RGB")
    except QueryError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise QueryError(f"the upload is not an image this page reads ({', '.join(UPLOAD_FORMATS)}): "
                         f"{type(error).__name__}") from error
    except (OSError, ValueError, SyntaxError, EOFError) as error:  # truncated or corrupt files
        raise QueryError(f"the image could not be decoded ({type(error).__name__}: {error}); is the file complete?") \
            from error
