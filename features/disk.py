"""The store's file on disk: locks other processes hold, the race-free `.partial`, free space, preallocation."""

import contextlib
import errno
import fcntl
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

# HDF5 (1.10+) locks every file it opens with flock(): shared for reading, exclusive for writing. The probes
# here use the same call, so they see HDF5's locks of other processes (unless HDF5_USE_FILE_LOCKING=FALSE).


class StoreInUseError(BlockingIOError):
    """A store (or its .partial) is open in another process; nothing was changed."""


def is_lock_error(err: OSError) -> bool:
    """True when h5py failed to open a file because another process holds its lock."""
    return isinstance(err, BlockingIOError) or "unable to lock file" in str(err)


HOLDERS = "an extract, a merge or a training has it open"  # who may hold a store (readers block writers too)


def in_use_error(path: Path, holder: str, advice: str) -> StoreInUseError:
    """The error for a file another process holds open: which file, who may hold it, what to do."""
    return StoreInUseError(f"{path} is in use by another process ({holder}); {advice}")


def held_by_another_process(path: Path) -> bool:
    """True when another process holds `path` open through HDF5 (its flock); False for a free or missing file."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # closing releases the probe's lock
    return False


@contextlib.contextmanager
def locked_partial(partial: Path) -> Iterator[int]:
    """Hold an exclusive lock on `partial` (created if missing) for the block; yield its descriptor.

    A creator that finds the file locked gets StoreInUseError and touches nothing, so two extracts racing for
    one store never delete or truncate each other's file; a `.partial` left by a crash is not locked and is
    reused. The caller writes the file only while holding the lock (h5py with locking=False: this lock
    stands in for HDF5's own) and renames it before the block ends.
    """
    descriptor = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise in_use_error(partial, "another extract or merge is creating this store",
                               "wait for it to finish, then rerun to resume that store") from None
        # The file may have been renamed into place (or removed) by its previous holder between our open and
        # our lock: then the descriptor is not the .partial any more, and writing it would clobber that store.
        opened = os.fstat(descriptor)
        if not _same_file(partial, opened):
            raise in_use_error(partial, "another extract or merge has just created this store",
                               "rerun the same command to resume that store")
        os.ftruncate(descriptor, 0)  # a stale file of a crashed creation: its content is of no use
        try:
            yield descriptor
        except BaseException:
            if _same_file(partial, opened):  # still ours (not renamed into place, not replaced by another)
                partial.unlink()
            raise
    finally:
        os.close(descriptor)


def _same_file(path: Path, opened: os.stat_result) -> bool:
    named = _stat_or_none(path)
    return named is not None and (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


class StoreSpaceError(OSError):
    """Not enough disk space for a store: found before creating or resuming it, or hit while writing it."""


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e9 else f"{num_bytes / 1e6:.1f} MB"


def check_free_space(path: Path, needed_bytes: int, *, what: str) -> None:
    """StoreSpaceError unless the file system of `path` (a file or its folder) has `needed_bytes` free."""
    folder = path if path.is_dir() else path.parent
    free = shutil.disk_usage(folder).free
    if needed_bytes > free:
        raise StoreSpaceError(f"{what} {path} needs {_size(needed_bytes)} of disk space but only "
                              f"{_size(free)} is free in {folder}; free some space or choose another --out")


def reserve_space(descriptor: int, path: Path, ranges: list[tuple[int, int]] | None = None) -> None:
    """Allocate the blocks of the open file now (its feature datasets are holes until written), so a full
    disk shows at once and not as a failed write in the middle of the run; a no-op where unsupported.

    `ranges` [(offset, length)] limits it to those bytes (a shard's rows); None = the whole file.
    """
    ranges = [(0, os.fstat(descriptor).st_size)] if ranges is None else ranges
    try:
        for offset, length in ranges:
            if length:
                os.posix_fallocate(descriptor, offset, length)
    except OSError as err:
        if err.errno in NO_SPACE_ERRNOS:
            size = sum(length for _, length in ranges)
            raise StoreSpaceError(f"{path} needs {_size(size)} of disk space, which the file system "
                                  f"could not allocate ({err.strerror}); free some space or choose another "
                                  "--out") from err
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        logger.debug("%s: the file system cannot preallocate (%s); space is taken as rows are written", path, err)


def unallocated_bytes(path: Path) -> int:
    """Bytes of `path` not yet backed by disk blocks (the holes a resume still has to fill)."""
    info = os.stat(path)
    return max(0, info.st_size - info.st_blocks * 512)
