"""Tests for features.reader: validation, memmap features, done-only indices."""

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest

from features.reader import FeatureStore


@pytest.mark.parametrize("crops", [1, 10])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_memmap_equals_h5py_read(make_store, random_features, crops: int, dtype: str) -> None:
    writer = make_store(crops=crops, dtype=dtype)
    feats_1c, feats_10c = random_features(5, crops, seed=4)
    writer.write_rows(np.arange(5), feats_1c, feats_10c)
    writer.close()
    with FeatureStore(writer.path) as store, h5py.File(writer.path, "r") as h5file:
        for kind in ("1c", "10c") if crops == 10 else ("1c",):
            features = store.features(kind)
            assert isinstance(features, np.memmap) and features.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(np.asarray(features), h5file[f"features/{kind}"][()])
        np.testing.assert_array_equal(store.features("1c"), feats_1c.astype(dtype))
        if crops == 10:
            np.testing.assert_array_equal(store.features("10c")[:, 4], store.features("1c"))


def test_memmap_of_partly_written_store(make_store, random_features) -> None:
    writer = make_store(crops=1)
    feats_1c, _ = random_features(2, 1, seed=5)
    writer.write_rows(np.array([1, 3]), feats_1c, None)
    writer.close()
    with FeatureStore(writer.path) as store:
        rows = store.image_indices(["train", "val", "test", "restval"])
        assert rows.tolist() == [1, 3]
        np.testing.assert_array_equal(store.features("1c")[rows], feats_1c)


def _chunked_copy(source: Path, target: Path) -> None:
    with h5py.File(source, "r") as h5source, h5py.File(target, "w") as h5target:
        for group in ("images", "captions"):
            h5source.copy(group, h5target)
        h5target.attrs.update(h5source.attrs)
        for kind in ("1c", "10c"):
            h5target.create_dataset(f"features/{kind}", data=h5source[f"features/{kind}"][()], chunks=True,
                                    compression="gzip")


def test_chunked_store_falls_back_to_h5py_with_warning(make_store, random_features, tmp_path: Path, caplog) -> None:
    writer = make_store(crops=10)
    feats_1c, feats_10c = random_features(5, 10, seed=6)
    writer.write_rows(np.arange(5), feats_1c, feats_10c)
    writer.close()
    _chunked_copy(writer.path, tmp_path / "chunked.h5")
    with caplog.at_level(logging.WARNING, logger="features.reader"), FeatureStore(tmp_path / "chunked.h5") as store:
        features = store.features("10c")
        assert isinstance(features, h5py.Dataset)
        np.testing.assert_array_equal(features[np.array([0, 2, 4])], feats_10c[[0, 2, 4]])
        np.testing.assert_array_equal(features[()], feats_10c)
    assert "falling back to h5py reads" in caplog.text and "chunked" in caplog.text


def test_indices_exclude_failed_and_pending(make_store, random_features) -> None:
    writer = make_store(crops=1)
    writer.write_rows(np.array([0, 2, 3, 4]), random_features(4, 1, seed=7)[0], None)
    writer.mark_failed(np.array([0]), ["0-byte file"])
    writer.close()
    with FeatureStore(writer.path) as store:
        assert store.image_indices(["train"]).tolist() == []  # row 0 failed, row 1 pending
        assert store.image_indices(["train", "val", "test"]).tolist() == [2, 3]
        assert store.image_indices("restval").tolist() == [4]
        # captions: image 0 -> 0, 1; image 1 -> 2; image 2 (val) -> 3, 4, 5
        assert store.caption_indices(["train", "val"]).tolist() == [3, 4, 5]
        assert store.caption_indices(["train", "val"]).dtype == np.int64
        assert store.summary() == {"total": 5, "pending": 1, "done": 3, "failed": 1}
        assert store.image_errors[0] == "0-byte file"
        with pytest.raises(ValueError, match="unknown split 'dev'; valid splits: train, val, test, restval"):
            store.image_indices(["train", "dev"])
        with pytest.raises(ValueError, match="no splits given"):
            store.caption_indices([])


def test_require_complete(make_store, random_features) -> None:
    writer = make_store(crops=1)
    writer.write_rows(np.array([2, 3]), random_features(2, 1, seed=8)[0], None)
    writer.mark_failed(np.array([4]), ["truncated"])
    writer.close()
    with FeatureStore(writer.path) as store:
        store.require_complete(["val", "test", "restval"])  # failed rows do not block
        with pytest.raises(ValueError, match=r"2 of 2 images in splits \['train'\] are still pending; rerun"):
            store.require_complete(["train"])


def test_tables_and_attrs_read_back(make_store, tiny_index) -> None:
    writer = make_store(crops=1, dtype="float16")
    writer.close()
    with FeatureStore(writer.path) as store:
        assert (store.num_images, store.num_captions, store.feature_dim, store.crops) == (5, 9, 6, 1)
        assert store.image_paths.tolist() == tiny_index.image_paths
        assert store.caption_texts == tiny_index.caption_texts
        assert store.caption_tokens == tiny_index.caption_tokens
        assert store.caption_splits.tolist() == tiny_index.caption_splits
        np.testing.assert_array_equal(store.caption_image_index, tiny_index.caption_image_index)
        assert store.attrs["mean"] == [0.485, 0.456, 0.406] and store.attrs["dtype"] == "float16"
        with pytest.raises(ValueError, match="has no .10c. features: it holds 1c"):
            store.features("10c")
        with pytest.raises(ValueError, match="unknown feature kind '5c'"):
            store.features("5c")


def test_rejects_other_schema_version_and_missing_dataset(make_store) -> None:
    writer = make_store(crops=10)
    writer._file.attrs["schema_version"] = 7
    writer.close()
    with pytest.raises(ValueError, match="schema_version 7 found, this code supports 2"):
        FeatureStore(writer.path)
    with h5py.File(writer.path, "r+") as h5file:
        h5file.attrs["schema_version"] = 2
        del h5file["features/10c"]
    with pytest.raises(ValueError, match="'features/10c' is missing"):
        FeatureStore(writer.path)


def test_rejects_inconsistent_shapes(make_store) -> None:
    writer = make_store(crops=1)
    writer._file.attrs["feature_dim"] = 8
    writer.close()
    with pytest.raises(ValueError, match=r"'features/1c' is float32 \(5, 6\), attrs say float32 \(5, 8\)"):
        FeatureStore(writer.path)


def test_missing_file_and_partial_hint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run `pipeline.py extract` first"):
        FeatureStore(tmp_path / "none.h5")
    (tmp_path / "half.h5.partial").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="creation was interrupted"):
        FeatureStore(tmp_path / "half.h5")
