"""What the server lets in and out: requests for its own host names, image files only from inside the image root
(served with their sniffed image type), uploads bounded and decoded safely."""

from __future__ import annotations

import functools
import io
import ipaddress
import os
import re
import warnings
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

from extract.transforms import RESIZE

# Formats an upload may be in: the common photo formats (no TIFF/PSD/EPS, whose decoders are larger surfaces).
UPLOAD_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
# The only types a gallery file is served as, chosen by what Pillow reads in the file, never by its name: a
# GIF/JavaScript polyglot named x.js is sent as image/gif (with nosniff, a browser will not run it as script).
IMAGE_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "BMP": "image/bmp", "WEBP": "image/webp"}
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
ANY_ADDRESS = "*address*"  # in host_names: any IP address is a name of this server (a wildcard bind)
_HOST = re.compile(r"(?P<name>\[[0-9a-fA-F:.]+\]|[^:\[\]]+)(?::(?P<port>[0-9]{1,5}))?")


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
        if "\x00" in path:  # a backslash is a legal character of a POSIX file name, served as such
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
                                     f"{max_pixels:,} (the model sees every image at {RESIZE} x {RESIZE}): "
                                     "upload a smaller one", status=413)
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


@functools.lru_cache(maxsize=4096)  # keyed by the file's mtime too: a rewritten file is read again
def _image_type_of(file: Path, modified_ns: int) -> str | None:
    try:
        with Image.open(file, formats=UPLOAD_FORMATS) as image:
            return IMAGE_TYPES.get(image.format or "")
    except (OSError, ValueError, SyntaxError, EOFError, UnidentifiedImageError, Image.DecompressionBombError):
        return None


def image_type(file: Path) -> str | None:
    """The served type of a gallery file from what Pillow reads in its header (IMAGE_TYPES), else None; read once
    per version of the file (every thumbnail of every result is asked for again)."""
    return _image_type_of(file, file.stat().st_mtime_ns)


def host_names(bind_host: str) -> set[str]:
    """The names a request may carry in its Host header: the loopback names and the bound address (IPv6 in []);
    for a wildcard bind (0.0.0.0, ::) also ANY_ADDRESS: every address of the machine, written as an address."""
    bound = f"[{bind_host}]" if ":" in bind_host else bind_host
    wildcard = bind_host in ("0.0.0.0", "::")
    return {*LOOPBACK_NAMES, bound.lower(), *([ANY_ADDRESS] if wildcard else [])}


def host_allowed(header: str, *, names: set[str], port: int | None) -> bool:
    """Whether a Host header names this server: one of `names` (or any IP address, with ANY_ADDRESS among them),
    and the port it listens on when one is given. A host *name* other than localhost is a page of another site
    whose name was rebound to this address (DNS rebinding)."""
    match = _HOST.fullmatch(header.strip())
    if match is None:
        return False
    name = match["name"].lower()
    if name not in names and not (ANY_ADDRESS in names and _is_address(name)):
        return False
    return match["port"] is None or port is None or int(match["port"]) == port


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False


def cross_site(headers: dict[str, str], *, host: str) -> bool:
    """Whether a request comes from a page of another origin: its Sec-Fetch-Site is not same-origin/none, or its
    Origin is not http://HOST (a form or fetch() of another site may POST here; the browser says so)."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return True
    origin = headers.get("origin")
    return origin is not None and origin.lower() != f"http://{host.lower()}"
