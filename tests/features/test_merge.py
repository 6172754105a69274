"""Tests for features.merge: joining shard stores equals one full extraction."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from features.merge import merge_stores
from features.reader import FeatureStore
from features.store import FeatureStoreWriter


def _fill_shard(writer: FeatureStoreWriter, feats_1c: np.ndarray, feats_10c: np.ndarray, *, shard: int,
                num_shards: int, failed: dict[int, str]) -> None:
    """Do what extract --shard shard/num_shards does: rows with index % num_shards == shard."""
    rows = np.array([row for row in writer.pending_indices() if row % num_shards == shard and row not in failed])
    writer.write_rows(rows, feats_1c[rows], feats_10c[rows])
    mine = {row: error for row, error in failed.items() if row % num_shards == shard}
    if mine:
        writer.mark_failed(np.array(list(mine)), list(mine.values()))
    writer.close()


def test_merge_of_two_shards_equals_full_store(make_store, random_features, tmp_path: Path) -> None:
    feats_1c, feats_10c = random_features(5, 10, seed=9)
    failed = {3: "truncated JPEG"}
    for shard in (0, 1):
        _fill_shard(make_store(f"shard{shard}.h5"), feats_1c, feats_10c, shard=shard, num_shards=2, failed=failed)
    _fill_shard(make_store("full.h5"), feats_1c, feats_10c, shard=0, num_shards=1, failed=failed)

    summary = merge_stores([tmp_path / "shard0.h5", tmp_path / "shard1.h5"], tmp_path / "merged.h5",
                           chunk_bytes=1)  # one row per chunk exercises the chunked copy
    assert summary == {"total": 5, "pending": 0, "done": 4, "failed": 1, "done_in_several_shards": 0}
    assert not (tmp_path / "merged.h5.partial").exists()
    with FeatureStore(tmp_path / "merged.h5") as merged, FeatureStore(tmp_path / "full.h5") as full:
        for kind in ("1c", "10c"):
            rows = full.image_indices(["train", "val", "test", "restval"])
            np.testing.assert_array_equal(merged.features(kind)[rows], full.features(kind)[rows])
        np.testing.assert_array_equal(merged.image_status, full.image_status)
        assert merged.image_errors.tolist() == full.image_errors.tolist()
        assert merged.caption_tokens == full.caption_tokens
        for key in ("backbone", "mean", "crops", "dtype", "feature_dim", "command"):
            assert merged.attrs[key] == full.attrs[key]
        assert merged.attrs["merged_from"] == [str(tmp_path / "shard0.h5"), str(tmp_path / "shard1.h5")]


def test_merge_reports_pending_and_takes_first_done(make_store, random_features, tmp_path: Path, caplog) -> None:
    feats_1c, feats_10c = random_features(5, 10, seed=10)
    first = make_store("first.h5")
    first.write_rows(np.array([0, 1]), feats_1c[:2], feats_10c[:2])
    first.close()
    second = make_store("second.h5")
    second.write_rows(np.array([1, 2]), feats_1c[:2] + 1, feats_10c[:2] + 1)
    second.close()
    summary = merge_stores([first.path, second.path], tmp_path / "merged.h5")
    assert summary["pending"] == 2 and summary["done"] == 3 and summary["done_in_several_shards"] == 1
    assert "still pending" in caplog.text
    with FeatureStore(tmp_path / "merged.h5") as merged:
        np.testing.assert_array_equal(merged.features("1c")[1], feats_1c[1])


def test_merge_refuses_other_config(make_store, tmp_path: Path, tiny_index, config_attrs: dict) -> None:
    make_store("a.h5").close()
    FeatureStoreWriter.create(tmp_path / "b.h5", tiny_index, attrs=dict(config_attrs, layer="fc7"),
                              feature_dim=6, crops=10, dtype="float32").close()
    with pytest.raises(ValueError, match="another config .*layer: 'avgpool' vs 'fc7'"):
        merge_stores([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "merged.h5")
    assert not (tmp_path / "merged.h5").exists()


def test_merge_refuses_other_dataset(make_store, tmp_path: Path, tiny_index, config_attrs: dict) -> None:
    make_store("a.h5").close()
    other = dataclasses.replace(tiny_index, caption_texts=["changed"] + tiny_index.caption_texts[1:])
    FeatureStoreWriter.create(tmp_path / "b.h5", other, attrs=config_attrs, feature_dim=6, crops=10,
                              dtype="float32").close()
    with pytest.raises(ValueError, match="differ in captions/text"):
        merge_stores([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "merged.h5")


def test_merge_argument_errors(make_store, tmp_path: Path) -> None:
    make_store("a.h5").close()
    with pytest.raises(ValueError, match="no shard stores"):
        merge_stores([], tmp_path / "merged.h5")
    with pytest.raises(ValueError, match="also a shard"):
        merge_stores([tmp_path / "a.h5"], tmp_path / "a.h5")
    with pytest.raises(ValueError, match="given twice"):
        merge_stores([tmp_path / "a.h5", tmp_path / "a.h5"], tmp_path / "merged.h5")
    (tmp_path / "merged.h5").write_text("old")
    with pytest.raises(ValueError, match="already exists; pass --overwrite"):
        merge_stores([tmp_path / "a.h5"], tmp_path / "merged.h5")
    assert merge_stores([tmp_path / "a.h5"], tmp_path / "merged.h5", overwrite=True)["pending"] == 5
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        merge_stores([tmp_path / "missing.h5"], tmp_path / "other.h5")
