"""A store another process holds open is never reopened, replaced or raced for; free space and allocation."""

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from features import disk
from features.disk import StoreInUseError, StoreSpaceError, held_by_another_process, locked_partial
from features.reader import FeatureStore
from features.store import FeatureStoreWriter
from tests.features.conftest import FEATURE_DIM

_HOLD = """
import sys, h5py
handle = h5py.File(sys.argv[1], sys.argv[2])
print("ready", flush=True)
sys.stdin.read()  # hold the file until the test closes our stdin
handle.close()
"""


@contextlib.contextmanager
def held_open(path: Path, mode: str) -> Iterator[subprocess.Popen]:
    """Another process with `path` open through h5py (HDF5's lock) for the block; it ends when the block does."""
    process = subprocess.Popen([sys.executable, "-c", _HOLD, str(path), mode], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        yield process
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _complete_store(make_store, random_features) -> Path:
    writer = make_store(crops=1)
    feats_1c, _ = random_features(5, 1, seed=0)
    writer.write_rows(np.arange(5), feats_1c, None)
    writer.close()
    return writer.path


def test_a_store_held_by_another_process_is_in_use_not_a_bad_file(make_store, random_features, config_attrs,
                                                                    tiny_index) -> None:
    path = _complete_store(make_store, random_features)
    expected = {**config_attrs, "crops": 1, "dtype": "float32"}
    with held_open(path, "r+"):
        assert held_by_another_process(path)
        with pytest.raises(StoreInUseError, match="is in use by another process") as raised:
            FeatureStoreWriter.open_existing(path, expected_attrs=expected)
        assert "--overwrite" not in str(raised.value).split(";")[0]
        with pytest.raises(StoreInUseError, match="in use by another process .an extract or a merge is writing"):
            FeatureStore(path)
        with pytest.raises(StoreInUseError, match="--overwrite does not replace a store in use"):
            FeatureStoreWriter.create(path, tiny_index, attrs=config_attrs, feature_dim=FEATURE_DIM, crops=1,
                                      dtype="float32", replace=True)
    assert not held_by_another_process(path) and not Path(f"{path}.partial").exists()
    with FeatureStore(path) as store:  # untouched: still the complete store
        assert store.summary()["done"] == 5


def test_the_loser_of_a_creation_race_leaves_the_winners_partial_alone(tmp_path: Path, tiny_index,
                                                                       config_attrs) -> None:
    path = tmp_path / "store.h5"
    partial = tmp_path / "store.h5.partial"
    with h5py.File(partial, "w") as h5file:
        h5file.attrs["winner"] = 1
    with held_open(partial, "r+"):  # the winner, still writing its .partial
        with pytest.raises(StoreInUseError, match="store.h5.partial is in use by another process .another extract or "
                                                  "merge is creating this store"):
            FeatureStoreWriter.create(path, tiny_index, attrs=config_attrs, feature_dim=FEATURE_DIM, crops=1,
                                      dtype="float32")
        assert partial.stat().st_size > 0 and not path.exists()
    with h5py.File(partial, "r") as h5file:
        assert h5file.attrs["winner"] == 1


def test_a_partial_left_by_a_crash_is_reused(tmp_path: Path, tiny_index, config_attrs) -> None:
    partial = tmp_path / "store.h5.partial"
    partial.write_bytes(b"half a store from a killed run")
    writer = FeatureStoreWriter.create(tmp_path / "store.h5", tiny_index, attrs=config_attrs,
                                       feature_dim=FEATURE_DIM, crops=1, dtype="float32")
    writer.close()
    assert not partial.exists() and writer.summary()["pending"] == 5


def test_a_store_that_appeared_meanwhile_is_not_replaced_without_replace(make_store, random_features,
                                                                        tiny_index, config_attrs) -> None:
    path = _complete_store(make_store, random_features)
    with pytest.raises(FileExistsError, match="created by another process meanwhile; rerun the same command"):
        FeatureStoreWriter.create(path, tiny_index, attrs=config_attrs, feature_dim=FEATURE_DIM, crops=1,
                                  dtype="float32", replace=False)
    with FeatureStore(path) as store:
        assert store.summary()["done"] == 5


def test_locked_partial_removes_only_its_own_file(tmp_path: Path) -> None:
    partial = tmp_path / "x.partial"
    with pytest.raises(RuntimeError), locked_partial(partial):
        raise RuntimeError("creation failed")
    assert not partial.exists()
    with pytest.raises(RuntimeError), locked_partial(partial):
        partial.rename(tmp_path / "x")  # renamed into place, then a later step failed: the store stays
        partial.write_bytes(b"another creator's file")
        raise RuntimeError("failed after the rename")
    assert (tmp_path / "x").exists() and partial.read_bytes() == b"another creator's file"


def test_a_created_store_is_allocated_and_short_space_is_refused(tmp_path: Path, tiny_index, config_attrs,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    writer = FeatureStoreWriter.create(tmp_path / "store.h5", tiny_index, attrs=config_attrs,
                                       feature_dim=FEATURE_DIM, crops=10, dtype="float32")
    writer.close()
    assert disk.unallocated_bytes(writer.path) == 0
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda folder: SimpleNamespace(total=100, used=90, free=10))
    with pytest.raises(StoreSpaceError, match=r"needs 1.1 MB of disk space but only 0.0 MB is free"):
        FeatureStoreWriter.create(tmp_path / "other.h5", tiny_index, attrs=config_attrs, feature_dim=FEATURE_DIM,
                                  crops=10, dtype="float32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.h5"]


def test_a_shard_store_allocates_only_its_own_rows(tmp_path: Path, config_attrs) -> None:
    from features.datasets import DatasetIndex

    images = 400
    dataset = DatasetIndex(image_paths=[f"{row}.jpg" for row in range(images)], image_splits=["train"] * images,
                           caption_texts=["a caption"] * images, caption_tokens=None,
                           caption_image_index=np.arange(images))
    whole = FeatureStoreWriter.create(tmp_path / "whole.h5", dataset, attrs=config_attrs, feature_dim=256, crops=10,
                                      dtype="float32")
    whole.close()
    shard = FeatureStoreWriter.create(tmp_path / "shard.h5", dataset, attrs=config_attrs, feature_dim=256, crops=10,
                                      dtype="float32", rows=np.arange(100, 200))
    shard.reserve_space(rows=np.arange(100, 200))  # a resume allocates the same rows again: nothing more
    shard.close()
    feature_bytes = images * 11 * 256 * 4
    allocated = {name: os.stat(tmp_path / name).st_blocks * 512 for name in ("whole.h5", "shard.h5")}
    assert allocated["whole.h5"] >= feature_bytes
    assert feature_bytes / 4 <= allocated["shard.h5"] < feature_bytes / 4 + 2 ** 20  # its quarter, plus tables
