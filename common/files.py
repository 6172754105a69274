"""Atomic file writes (a temporary file in the same folder, renamed over the target, so no reader sees half a
file) and the sha256 of a file read in chunks."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], *, durable: bool = False) -> Path:
    """Write `path` through `write(binary_file)`, atomically; return the path.

    The bytes go to `<name>.<random>.tmp` beside `path`, which is renamed over `path` once complete; a crash
    or an exception leaves the old file (or none) and removes the temporary one. `durable` also fsyncs the
    file and the folder, so the new content survives a power cut (checkpoints). The file gets the usual
    umask-respecting mode, not mkstemp's 0600.
    """
    path = Path(path)
    handle, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(handle, 0o666 & ~umask)
        with os.fdopen(handle, "wb") as tmp_file:
            write(tmp_file)
            if durable:
                tmp_file.flush()
                os.fsync(tmp_file.fileno())
        os.replace(tmp_name, path)
    except OSError as err:
        Path(tmp_name).unlink(missing_ok=True)
        if err.filename is None and err.strerror is not None:  # a write into the open file (a full disk)
            err.filename = str(path)  # names no file: name the target
        raise
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    if durable:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text to `path` atomically."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, data: object) -> Path:
    """Write `data` as indented JSON (one trailing newline) to `path` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def check_writable(path: str | Path, *, folder: bool) -> None:
    """Raise the OSError that creating `path` (a file, or a folder when `folder`) would raise, writing nothing.

    Found: a folder where a file is wanted or the reverse (IsADirectoryError / NotADirectoryError), a file
    among the parents (NotADirectoryError naming it), a read-only file system (EROFS) or no permission
    (PermissionError) in the nearest existing folder. Permissions are asked with os.access, so for root,
    whose writes ignore them, only a read-only file system fails, as its writes would.
    """
    path = Path(path)
    if path.exists() and folder != path.is_dir():
        if folder:
            raise NotADirectoryError(errno.ENOTDIR, f"{os.strerror(errno.ENOTDIR)} (it is a file)", str(path))
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    nearest = path if path.is_dir() else path.parent  # the folder the output is created in
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{os.strerror(errno.ENOTDIR)} ({nearest} is a file)", str(path))
    for target in ([path] if path.is_file() else []) + [nearest]:
        if os.statvfs(target).f_flag & os.ST_RDONLY:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(target))
        if not os.access(target, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(target))


def sha256_of_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (weight files are 0.5 GB for vgg19, released features tens of GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
