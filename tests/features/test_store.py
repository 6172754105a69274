"""Tests for features.store: creation, row writes, failures, resume checks."""

import dataclasses
from pathlib import Path

import h5py
import numpy as np
import pytest

from features import store as store_module
from features.schema import CONFIG_ATTRS, SCHEMA_VERSION, Status
from features.store import FeatureStoreWriter


def test_create_allocates_contiguous_features_all_pending(make_store, tmp_path: Path) -> None:
    writer = make_store(crops=10, dtype="float16")
    assert writer.pending_indices().tolist() == [0, 1, 2, 3, 4]
    assert writer.summary() == {"total": 5, "pending": 5, "done": 0, "failed": 0}
    assert not (tmp_path / "store.h5.partial").exists()
    for name, shape in (("features/1c", (5, 6)), ("features/10c", (5, 10, 6))):
        dataset = writer._file[name]
        assert dataset.id.get_offset() is not None
        assert dataset.chunks is None and dataset.compression is None and dataset.maxshape == shape
        assert dataset.dtype == np.float16


def test_create_writes_tables_and_attrs(make_store) -> None:
    writer = make_store(crops=1)
    h5file = writer._file
    assert "features/10c" not in h5file
    assert h5file["images/path"].asstr()[()].tolist() == ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    assert h5file["captions/split"].asstr()[()].tolist()[:4] == ["train", "train", "train", "val"]
    assert h5file["captions/tokens"].asstr()[0] == "caption 0 of image 0"
    assert h5py.check_string_dtype(h5file["images/path"].dtype).encoding == "utf-8"
    assert h5file.attrs["schema_version"] == SCHEMA_VERSION and h5file.attrs["crops"] == 1
    assert h5file.attrs["mean"].dtype == np.float64 and h5file.attrs["mean"].tolist() == [0.485, 0.456, 0.406]
    assert writer.attrs["weights_sha256"] == "" and writer.attrs["shard"] == ""


def test_write_rows_out_of_order_then_resume(make_store, tmp_path: Path, config_attrs: dict,
                                             tiny_index, random_features) -> None:
    writer = make_store(crops=10)
    feats_1c, feats_10c = random_features(3, 10, seed=0)
    writer.write_rows(np.array([3, 0, 1]), feats_1c, feats_10c)
    writer.close()
    expected = dict(config_attrs, crops=10, dtype="float32")
    with FeatureStoreWriter.open_existing(tmp_path / "store.h5", expected_attrs=expected,
                                          dataset=tiny_index) as resumed:
        assert resumed.pending_indices().tolist() == [2, 4]
        np.testing.assert_array_equal(resumed._file["features/1c"][[0, 1, 3]], feats_1c[[1, 2, 0]])
        np.testing.assert_array_equal(resumed._file["features/10c"][3], feats_10c[0])


def test_mark_failed_and_retry(make_store, random_features) -> None:
    writer = make_store(crops=1)
    writer.mark_failed(np.array([4, 1]), ["truncated file", "not an image"])
    assert writer.pending_indices().tolist() == [0, 2, 3]
    assert writer.pending_indices(retry_failed=True).tolist() == [0, 1, 2, 3, 4]
    assert writer._file["images/error"].asstr()[()].tolist() == ["", "not an image", "", "", "truncated file"]
    assert writer._file["images/status"][()].tolist() == [0, Status.FAILED, 0, 0, Status.FAILED]
    writer.write_rows(np.array([1]), random_features(1, 1, seed=1)[0], None)
    assert writer._file["images/error"].asstr()[1] == ""
    assert writer.summary() == {"total": 5, "pending": 3, "done": 1, "failed": 1}


def test_crash_between_features_and_status_leaves_rows_pending(make_store, monkeypatch, random_features) -> None:
    writer = make_store(crops=1)

    def crash(*args, **kwargs) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(FeatureStoreWriter, "_set_status", crash)
    with pytest.raises(KeyboardInterrupt):
        writer.write_rows(np.array([0, 1]), random_features(2, 1, seed=2)[0], None)
    assert writer._file["images/status"][()].tolist() == [0] * 5


def test_interrupted_create_leaves_no_file(tmp_path: Path, tiny_index, config_attrs: dict, monkeypatch) -> None:
    def crash(*args, **kwargs) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(store_module, "_create_contiguous", crash)
    with pytest.raises(KeyboardInterrupt):
        FeatureStoreWriter.create(tmp_path / "s.h5", tiny_index, attrs=config_attrs, feature_dim=6, crops=1,
                                  dtype="float32")
    assert list(tmp_path.iterdir()) == []


def test_open_existing_refuses_other_config(make_store, tmp_path: Path, config_attrs: dict) -> None:
    make_store(crops=10).close()
    requested = dict(config_attrs, backbone="vgg19", crops=10, dtype="float32")
    with pytest.raises(ValueError) as error:
        FeatureStoreWriter.open_existing(tmp_path / "store.h5", expected_attrs=requested)
    message = str(error.value)
    assert "backbone: stored 'resnet18' vs requested 'vgg19'" in message
    assert "--overwrite" in message and "--out" in message and "crops" not in message


def test_open_existing_refuses_other_dataset(make_store, tmp_path: Path, config_attrs: dict, tiny_index) -> None:
    make_store(crops=1).close()
    other = dataclasses.replace(tiny_index, image_paths=["a.jpg", "b.jpg", "X.jpg", "d.jpg", "e.jpg"])
    with pytest.raises(ValueError, match="images/path differs at row 2"):
        FeatureStoreWriter.open_existing(tmp_path / "store.h5", dataset=other,
                                         expected_attrs=dict(config_attrs, crops=1, dtype="float32"))


def test_open_existing_errors(tmp_path: Path, config_attrs: dict) -> None:
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        FeatureStoreWriter.open_existing(tmp_path / "missing.h5", expected_attrs=config_attrs)
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="cannot be opened as HDF5"):
        FeatureStoreWriter.open_existing(tmp_path / "junk.h5", expected_attrs=dict(config_attrs, crops=1, dtype="x"))
    with pytest.raises(ValueError, match="lacks the config attributes"):
        FeatureStoreWriter.open_existing(tmp_path / "junk.h5", expected_attrs={"backbone": "vgg19"})


@pytest.mark.parametrize("indices, feats_shape, message", [
    ([0, 0], (2, 6), "row index 0 is given more than once"),
    ([0, 5], (2, 6), "row index 5 is outside"),
    ([0, 1], (2, 7), "feats_1c has shape (2, 7), expected (2, 6)"),
    ([0, 1, 2], (2, 6), "3 indices but 2 feature rows"),
])
def test_write_rows_rejects_bad_input(make_store, indices: list, feats_shape: tuple, message: str) -> None:
    writer = make_store(crops=1)
    with pytest.raises(ValueError) as error:
        writer.write_rows(np.array(indices), np.zeros(feats_shape, dtype=np.float32), None)
    assert message in str(error.value)
    assert writer.summary()["done"] == 0


def test_write_rows_checks_crops_and_finiteness(make_store) -> None:
    ten_crop_writer = make_store("ten.h5", crops=10, dtype="float16")
    with pytest.raises(ValueError, match="pass feats_10c"):
        ten_crop_writer.write_rows(np.array([0]), np.zeros((1, 6)), None)
    with pytest.raises(ValueError, match="float16 overflows"):
        ten_crop_writer.write_rows(np.array([0]), np.full((1, 6), 1e6), np.zeros((1, 10, 6)))
    one_crop_writer = make_store("one.h5", crops=1)
    with pytest.raises(ValueError, match="feats_10c=None"):
        one_crop_writer.write_rows(np.array([0]), np.zeros((1, 6)), np.zeros((1, 10, 6)))


def test_create_rejects_bad_arguments(tmp_path: Path, tiny_index, config_attrs: dict) -> None:
    def create(**overrides):
        arguments = dict(attrs=config_attrs, feature_dim=6, crops=1, dtype="float32") | overrides
        return FeatureStoreWriter.create(tmp_path / "s.h5", tiny_index, **arguments)

    with pytest.raises(ValueError, match="crops=5"):
        create(crops=5)
    with pytest.raises(ValueError, match="dtype='float64'"):
        create(dtype="float64")
    with pytest.raises(ValueError, match=r"lack the config attributes \['backbone'\]"):
        create(attrs={key: value for key, value in config_attrs.items() if key != "backbone"})
    with pytest.raises(ValueError, match="contradicts crops=1"):
        create(attrs=dict(config_attrs, crops=10))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FeatureStoreWriter.create(tmp_path / "no" / "s.h5", tiny_index, attrs=config_attrs, feature_dim=6,
                                  crops=1, dtype="float32")
    assert set(CONFIG_ATTRS) - {"crops", "dtype"} <= set(config_attrs)


def test_create_replaces_existing_store(make_store, random_features) -> None:
    first = make_store(crops=1)
    first.write_rows(np.array([0]), random_features(1, 1, seed=3)[0], None)
    first.close()
    assert make_store(crops=1).summary()["done"] == 0
