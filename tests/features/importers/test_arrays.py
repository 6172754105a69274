"""Tests of features/importers/arrays.py: .npy and .npz arrays read by row blocks, refused when unsafe or unusable."""

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from common.files import sha256_of_file
from features.importers.arrays import ArraySource


@pytest.fixture
def features() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((7, 3, 4)).astype(np.float32)


@pytest.mark.parametrize("kind", ["npy", "npz", "npz-compressed"])
def test_every_block_reads_back_the_saved_rows(tmp_path: Path, features: np.ndarray, kind: str):
    path = tmp_path / f"feats.{kind.split('-')[0]}"
    if kind == "npy":
        np.save(path, features)
    elif kind == "npz":
        np.savez(path, feats=features)
    else:
        np.savez_compressed(path, feats=features)
    source = ArraySource(path)
    assert source.shape == (7, 3, 4) and source.dtype == np.float32
    assert source.label == (str(path) if kind == "npy" else f"{path}[feats]")
    # forward, then backward (a compressed member restarts its stream), then the whole array
    for begin, end in ((0, 2), (2, 7), (1, 3), (0, 7)):
        block = source.read(begin, end)
        assert block.flags.c_contiguous and np.array_equal(block, features[begin:end])
    source.close()


def test_an_npz_of_several_arrays_needs_the_key(tmp_path: Path, features: np.ndarray):
    path = tmp_path / "two.npz"
    np.savez(path, feats=features, other=features[:2])
    with pytest.raises(ValueError, match=r"holds 2 arrays \(feats, other\).*--array-key"):
        ArraySource(path)
    with pytest.raises(ValueError, match="has no array 'nope'; its arrays: feats, other"):
        ArraySource(path, key="nope")
    source = ArraySource(path, key="other")
    assert np.array_equal(source.read(0, 2), features[:2])
    source.close()


def test_a_pickled_object_array_is_refused_without_unpickling(tmp_path: Path, monkeypatch):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    monkeypatch.setattr(pickle, "loads", lambda *args, **kwargs: pytest.fail("unpickled"))
    with pytest.raises(ValueError, match=r"objects.npy holds Python objects.*allow_pickle stays off.*np.save"):
        ArraySource(path)
    npz = tmp_path / "objects.npz"
    np.savez(npz, feats=np.array([None], dtype=object))
    with pytest.raises(ValueError, match=r"objects.npz holds Python objects"):
        ArraySource(npz)


def test_a_plain_pickle_file_is_neither_npy_nor_npz(tmp_path: Path):
    path = tmp_path / "feats.npy"
    path.write_bytes(pickle.dumps([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"feats.npy is neither a .npy nor an .npz file"):
        ArraySource(path)


@pytest.mark.parametrize("array,match", [
    (np.arange(12, dtype=np.int64).reshape(3, 4), "holds int64 values, not floating-point"),
    (np.asfortranarray(np.ones((3, 4), dtype=np.float32)), "Fortran order"),
    (np.zeros((0, 4), dtype=np.float32), "no rows to import"),
])
def test_unusable_arrays_are_refused_with_the_fix(tmp_path: Path, array: np.ndarray, match: str):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(ValueError, match=match):
        ArraySource(path)


def test_a_truncated_npy_is_refused_before_any_row(tmp_path: Path, features: np.ndarray):
    path = tmp_path / "short.npy"
    np.save(path, features)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"short.npy cannot be read as a .npy array.*download it again"):
        ArraySource(path)


def test_a_damaged_compressed_member_fails_on_the_read_naming_the_file(tmp_path: Path):
    path = tmp_path / "feats.npz"
    np.savez_compressed(path, feats=np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the deflated rows, past the array header
    path.write_bytes(bytes(data))
    source = ArraySource(path)
    with pytest.raises(ValueError, match=r"feats.npz\[feats\]: rows 0..63 cannot be read .*download it again"):
        source.read(0, 64)
    source.close()


def test_missing_file_names_the_path(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nowhere.npy"):
        ArraySource(tmp_path / "nowhere.npy")


def test_sha256_is_the_files(tmp_path: Path, features: np.ndarray):
    path = tmp_path / "feats.npy"
    np.save(path, features)
    assert sha256_of_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_reading_a_large_file_block_by_block_keeps_the_memory_of_one_block(tmp_path: Path):
    # 256 MB on disk, read 8 MB at a time: the resident memory stays near one block (reading the same blocks through
    # the memmap np.load gives measured +272 MB: every touched page stays mapped).
    path = tmp_path / "large.npy"
    rows, dim = 2048, 32768
    header = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    del header  # a sparse file of zeros: nothing to write
    before, grown = _rss(), 0
    source = ArraySource(path)
    for begin in range(0, rows, 64):
        assert source.read(begin, begin + 64).shape == (64, dim)
        grown = max(grown, _rss() - before)
    source.close()
    assert grown < 48 * 2**20, grown
