"""A released feature matrix (.npy, or one array of an .npz) read by row blocks: memory one block, never the file."""

from __future__ import annotations

import logging
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from features.rows import FeatureRows

logger = logging.getLogger(__name__)

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
ZIP_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # a zip member's local file header (30 bytes)
SAVE_FIX = "save the features as a float array: np.save(path, np.ascontiguousarray(features, dtype=np.float32))"


class _ZipMemberRows:
    """Rows of a compressed .npz member, decompressed by streaming (forward reads are cheap, a backward one
    restarts the stream): the importer reads rows in increasing order, so every byte is inflated once."""

    def __init__(self, path: Path, member: str, *, data_start: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self._zip = zipfile.ZipFile(path)
        self._stream = self._zip.open(member)
        self.data_start, self.shape, self.dtype = data_start, shape, dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        begin, count = int(rows[0]), len(rows)
        assert np.array_equal(rows, np.arange(begin, begin + count)), "zip members are read by runs of rows"
        position = self.data_start + begin * self.row_bytes
        if self._stream.tell() != position:
            self._stream.seek(position)
        data = self._stream.read(count * self.row_bytes)
        if len(data) != count * self.row_bytes:
            raise OSError(f"short read at row {begin}: the member ends early")
        return np.frombuffer(data, dtype=self.dtype).reshape((count,) + self.shape[1:])

    def close(self) -> None:
        self._stream.close()
        self._zip.close()


class ArraySource:
    """One released feature array: its shape and dtype, and `read(begin, end)` -> a fresh [end - begin, ...] block.

    A .npy file is opened with np.load(mmap_mode="r", allow_pickle=False) to validate its header, then read with
    pread (FeatureRows): a memmap would keep every page it touched mapped, so the RSS of one pass over a 33 GB
    file would grow to 33 GB. An .npz member stored uncompressed (np.savez) is read the same way at its offset in
    the zip; a compressed one (np.savez_compressed) is inflated as a stream.
    """

    def __init__(self, path: str | Path, *, key: str = "") -> None:
        self.path = Path(path)
        self.key = key
        if not self.path.is_file():
            raise FileNotFoundError(f"feature file {str(self.path)!r} does not exist; check the path")
        with open(self.path, "rb") as file:
            magic = file.read(len(NPY_MAGIC))
        if magic.startswith(ZIP_MAGIC):
            self._open_npz()
        elif magic == NPY_MAGIC:
            if key:
                raise ValueError(f"{self.path} is a .npy file, which holds one array; drop --array-key {key!r}")
            self._open_npy()
        else:
            raise ValueError(f"{self.path} is neither a .npy nor an .npz file (it starts with {magic!r}); a pickle "
                             f"or text file cannot be imported: {SAVE_FIX}")
        self.label = f"{self.path}[{self.key}]" if self.key else str(self.path)

    def _check_header(self, shape: tuple[int, ...], dtype: np.dtype, fortran_order: bool) -> None:
        if dtype.hasobject:
            raise ValueError(f"{self.path} holds Python objects (dtype {dtype}: a pickled array), which are never "
                             f"loaded (allow_pickle stays off); {SAVE_FIX}")
        if dtype.kind != "f":
            raise ValueError(f"{self.path} holds {dtype} values, not floating-point features; {SAVE_FIX}")
        if fortran_order and len(shape) > 1:
            raise ValueError(f"{self.path} is stored in Fortran order, so its rows are not contiguous on disk; {SAVE_FIX}")
        if not shape or shape[0] == 0:
            raise ValueError(f"{self.path} has shape {shape}: no rows to import; check the file")
        self.shape, self.dtype = tuple(int(size) for size in shape), dtype

    def _open_npy(self) -> None:
        try:
            array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except ValueError as err:
            if "object" in str(err).lower() or "pickle" in str(err).lower():
                raise ValueError(f"{self.path} holds Python objects (a pickled array), which are never loaded "
                                 f"(allow_pickle stays off); {SAVE_FIX}") from err
            raise ValueError(f"{self.path} cannot be read as a .npy array ({err}); the file is truncated or not "
                             f"a numpy array: download it again or {SAVE_FIX}") from err
        except (OSError, EOFError) as err:
            raise ValueError(f"{self.path} cannot be read as a .npy array ({err}); download it again or "
                             f"{SAVE_FIX}") from err
        self._check_header(array.shape, array.dtype, fortran_order=array.flags.f_contiguous
                           and not array.flags.c_contiguous)
        self._rows = FeatureRows(self.path, offset=array.offset, shape=self.shape, dtype=self.dtype)
        del array  # the header is read; rows come through pread

    def _open_npz(self) -> None:
        try:
            with zipfile.ZipFile(self.path) as archive:
                members = {name[:-len(".npy")]: archive.getinfo(name) for name in archive.namelist()
                           if name.endswith(".npy")}
                info = self._member(members)
                with archive.open(info) as stream:
                    version = np.lib.format.read_magic(stream)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, fortran_order, dtype = read_header(stream)
                    header_bytes = stream.tell()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            raise ValueError(f"{self.path} cannot be read as an .npz archive ({err}); download it again or "
                             f"{SAVE_FIX}") from err
        self._check_header(shape, dtype, fortran_order)
        if info.compress_type == zipfile.ZIP_STORED:
            with open(self.path, "rb") as file:  # the member's bytes start after its local header
                file.seek(info.header_offset)
                fields = ZIP_LOCAL_HEADER.unpack(file.read(ZIP_LOCAL_HEADER.size))
            data_offset = info.header_offset + ZIP_LOCAL_HEADER.size + fields[-2] + fields[-1] + header_bytes
            self._rows = FeatureRows(self.path, offset=data_offset, shape=self.shape, dtype=self.dtype)
        else:
            self._rows = _ZipMemberRows(self.path, info.filename, data_start=header_bytes, shape=self.shape,
                                        dtype=self.dtype)

    def _member(self, members: dict[str, zipfile.ZipInfo]) -> zipfile.ZipInfo:
        if self.key:
            if self.key not in members:
                raise ValueError(f"{self.path} has no array {self.key!r}; its arrays: {', '.join(members) or 'none'}")
            return members[self.key]
        if len(members) != 1:
            raise ValueError(f"{self.path} holds {len(members)} arrays ({', '.join(members) or 'none'}); name the "
                             "feature array with --array-key")
        self.key = next(iter(members))
        return members[self.key]

    @property
    def num_rows(self) -> int:
        """Rows of the array (its first dimension)."""
        return self.shape[0]

    def read(self, begin: int, end: int) -> np.ndarray:
        """Rows [begin, end) as a fresh array; ValueError naming the file when it is shorter than its header says
        or a compressed member is damaged."""
        try:
            return self._rows[np.arange(begin, end, dtype=np.int64)]
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:  # a damaged zip member's CRC or stream
            raise ValueError(f"{self.label}: rows {begin}..{end - 1} cannot be read ({err}); the file is truncated "
                             "or damaged: download it again") from err

    def close(self) -> None:
        """Release the file descriptor (or the zip stream)."""
        self._rows.close()
