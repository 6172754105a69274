"""Tests for region stores (crops=0, regions=K): create, write, resume, read by kind, merge."""

from pathlib import Path

import h5py
import numpy as np
import pytest

from features.merge import merge_stores
from features.reader import FeatureStore
from features.store import FeatureStoreWriter

FEATURE_DIM = 6
REGIONS = 4
ALL_SPLITS = ["train", "val", "test", "restval"]


def _regions(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, REGIONS, FEATURE_DIM)).astype(np.float32)


def _create(path: Path, dataset, attrs: dict, **overrides) -> FeatureStoreWriter:
    arguments = dict(attrs=attrs, feature_dim=FEATURE_DIM, crops=0, regions=REGIONS, dtype="float32") | overrides
    return FeatureStoreWriter.create(path, dataset, **arguments)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_region_store_round_trip(tmp_path: Path, tiny_index, config_attrs: dict, dtype: str) -> None:
    values = _regions(5)
    with _create(tmp_path / "r.h5", tiny_index, config_attrs, dtype=dtype) as writer:
        assert (writer.regions, writer.feature_kinds) == (REGIONS, ("regions",))
        writer.write_rows(np.array([4, 0, 2, 1, 3]), None, None, regions=values)
    with h5py.File(tmp_path / "r.h5", "r") as h5file:
        assert sorted(h5file["features"]) == ["regions"]  # no 1c, no 10c
        assert h5file["features/regions"].id.get_offset() is not None  # allocated early, contiguous
    with FeatureStore(tmp_path / "r.h5") as store:
        assert (store.regions, store.crops, store.feature_kinds) == (REGIONS, 0, ("regions",))
        assert store.attrs["regions"] == REGIONS
        expected = values[np.argsort([4, 0, 2, 1, 3])].astype(dtype)
        features = store.features("regions")
        assert isinstance(features, np.memmap) and features.shape == (5, REGIONS, FEATURE_DIM)
        np.testing.assert_array_equal(features, expected)
        np.testing.assert_array_equal(store.feature_rows("regions")[np.array([1, 3])], expected[[1, 3]])
        assert store.image_indices(ALL_SPLITS).tolist() == [0, 1, 2, 3, 4]


def test_cnn_store_has_regions_zero_and_old_stores_stay_readable(make_store, random_features, tmp_path) -> None:
    writer = make_store(crops=10)
    writer.write_rows(np.arange(5), *random_features(5, 10, seed=1))
    writer.close()
    with FeatureStore(tmp_path / "store.h5") as store:
        assert (store.regions, store.feature_kinds, store.attrs["regions"]) == (0, ("1c", "10c"), 0)
    with h5py.File(tmp_path / "store.h5", "r+") as h5file:
        del h5file.attrs["regions"]  # as written before region stores existed
    with FeatureStore(tmp_path / "store.h5") as store:
        assert (store.regions, store.feature_kinds) == (0, ("1c", "10c"))


def test_missing_kind_is_one_error_naming_what_the_store_holds(tmp_path: Path, tiny_index, config_attrs: dict,
                                                               make_store) -> None:
    _create(tmp_path / "r.h5", tiny_index, config_attrs).close()
    make_store("one.h5", crops=1).close()
    with FeatureStore(tmp_path / "r.h5") as store:
        for kind in ("1c", "10c"):
            with pytest.raises(ValueError, match=f"has no '{kind}' features: it holds regions \\(a region store, "
                                                 f"4 regions per image\\); a region store holds no crop"):
                store.feature_rows(kind)
    with FeatureStore(tmp_path / "one.h5") as store:
        with pytest.raises(ValueError, match="has no 'regions' features: it holds 1c .*pipeline.py import-features"):
            store.features("regions")


def test_region_write_rows_checks_arguments(tmp_path: Path, tiny_index, config_attrs: dict) -> None:
    with _create(tmp_path / "r.h5", tiny_index, config_attrs, dtype="float16") as writer:
        with pytest.raises(ValueError, match=r"holds regions features: pass regions of shape \['n', 4, 6\]"):
            writer.write_rows(np.array([0]), None, None)
        with pytest.raises(ValueError, match="pass feats_1c=None"):
            writer.write_rows(np.array([0]), np.zeros((1, FEATURE_DIM)), None, regions=_regions(1))
        with pytest.raises(ValueError, match=r"regions has shape \(1, 3, 6\), expected \(1, 4, 6\)"):
            writer.write_rows(np.array([0]), None, None, regions=_regions(1)[:, :3])
        with pytest.raises(ValueError, match="float16 overflows"):
            writer.write_rows(np.array([0]), None, None, regions=np.full((1, REGIONS, FEATURE_DIM), 1e6))
        assert writer.summary()["done"] == 0


@pytest.mark.parametrize("overrides, message", [
    ({"crops": 1}, "a region store holds no crops; pass crops=0"),
    ({"regions": -1}, "regions=-1 must be an integer >= 1"),
    ({"regions": 0}, "crops=0 is not supported; use one of"),
])
def test_region_create_rejects_bad_sizes(tmp_path: Path, tiny_index, config_attrs: dict, overrides: dict,
                                         message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _create(tmp_path / "r.h5", tiny_index, config_attrs, **overrides)
    assert not list(tmp_path.iterdir())


def test_region_store_resumes(tmp_path: Path, tiny_index, config_attrs: dict) -> None:
    values = _regions(5, seed=3)
    with _create(tmp_path / "r.h5", tiny_index, config_attrs) as writer:
        writer.write_rows(np.array([3, 0]), None, None, regions=values[[3, 0]])
    expected = dict(config_attrs, crops=0, dtype="float32")
    with FeatureStoreWriter.open_existing(tmp_path / "r.h5", expected_attrs=expected, dataset=tiny_index) as writer:
        assert writer.pending_indices().tolist() == [1, 2, 4]
        writer.write_rows(writer.pending_indices(), None, None, regions=values[[1, 2, 4]])
    with pytest.raises(ValueError, match="crops: stored 0 vs requested 1"):
        FeatureStoreWriter.open_existing(tmp_path / "r.h5", expected_attrs=dict(expected, crops=1))
    with FeatureStore(tmp_path / "r.h5") as store:
        np.testing.assert_array_equal(store.features("regions"), values)


def test_merge_region_shards(tmp_path: Path, tiny_index, config_attrs: dict, make_store) -> None:
    values = _regions(5, seed=5)
    for shard in (0, 1):
        with _create(tmp_path / f"shard{shard}.h5", tiny_index, config_attrs) as writer:
            rows = np.arange(shard, 5, 2)
            writer.write_rows(rows, None, None, regions=values[rows])
    summary = merge_stores([tmp_path / "shard0.h5", tmp_path / "shard1.h5"], tmp_path / "merged.h5", chunk_bytes=1)
    assert summary["done"] == 5
    with FeatureStore(tmp_path / "merged.h5") as merged:
        assert merged.regions == REGIONS
        np.testing.assert_array_equal(merged.features("regions"), values)
    make_store("cnn.h5", crops=1).close()
    with pytest.raises(ValueError, match="regions: 4 vs 0|crops: 0 vs 1"):
        merge_stores([tmp_path / "shard0.h5", tmp_path / "cnn.h5"], tmp_path / "bad.h5")
