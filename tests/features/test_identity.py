"""features/identity.py: store fingerprints and the digests that count training data among evaluated rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from features.identity import (
    count_shared, data_identity, row_digests, split_digests, store_fingerprint, text_digests, training_overlap,
)
from features.reader import FeatureStore
from tests.synthetic_store import FEATURE_DIM, synthetic_dataset, synthetic_features, write_features_store

SPLITS = {"train": 20, "val": 6, "test": 6}


def write_store(path: Path, *, splits: list[str] | None = None, dtype: str = "float32", crops: int = 10,
                noise: float = 0.0) -> Path:
    """The synthetic dataset of SPLITS as a store; `splits` reassigns the images' splits (same photos)."""
    dataset, attributes = synthetic_dataset(splits=SPLITS)
    if splits is not None:
        dataset = dataclasses.replace(dataset, image_splits=splits)
    features = synthetic_features(attributes, feature_dim=FEATURE_DIM) + noise
    if crops == 10:
        return write_features_store(path, dataset, features, dtype=dtype)
    return write_features_store(path, dataset, features[:, 4], kind="1c", dtype=dtype)


def resplit(count: int, moved: int) -> list[str]:
    """SPLITS' image splits with the first `moved` training images put in test (and as many test ones in train)."""
    splits = [split for split, number in SPLITS.items() for _ in range(number)]
    first_test = splits.index("test")
    for offset in range(moved):
        splits[offset], splits[first_test + offset] = "test", "train"
    assert len(splits) == count
    return splits


def test_fingerprint_names_the_data_not_the_file(tmp_path: Path):
    one, copy = write_store(tmp_path / "one.h5"), write_store(tmp_path / "copy.h5", dtype="float16", crops=1)
    other = write_store(tmp_path / "other.h5", splits=resplit(32, 2))
    with FeatureStore(one) as a, FeatureStore(copy) as b, FeatureStore(other) as c:
        assert store_fingerprint(a) == store_fingerprint(b)  # same paths, splits, captions: another file, dtype
        assert store_fingerprint(a) != store_fingerprint(c)  # two images in other splits
        assert len(store_fingerprint(a)) == 32


def test_content_digests_agree_across_dtypes_and_tell_other_features_apart(tmp_path: Path):
    paths = [write_store(tmp_path / "a.h5"), write_store(tmp_path / "b.h5", dtype="float16"),
             write_store(tmp_path / "c.h5", noise=0.5)]
    digests = []
    for path in paths:
        with FeatureStore(path) as store:
            rows = store.image_indices(["train"])
            digests.append(row_digests(store.feature_rows("1c"), rows, chunk_rows=7))  # chunks of 7: 3 chunks
            assert len(set(digests[-1].tolist())) == len(rows)
    np.testing.assert_array_equal(digests[0], digests[1])
    assert not np.isin(digests[2], digests[0]).any()


def test_split_digests_and_counts(tmp_path: Path):
    with FeatureStore(write_store(tmp_path / "a.h5")) as store:
        train = split_digests(store, ["train"])
        test = split_digests(store, ["test"])
        assert len(train.paths) == len(train.content) == 20
        assert len(train.captions) <= 60 and train.captions.dtype == np.uint64
        assert np.all(np.diff(train.paths.astype(np.float64)) > 0)  # sorted, unique
        assert count_shared(test.paths, train.paths) == 0 and count_shared(train.paths, train.paths) == 20
        identity = data_identity(store, ["train"])
        assert identity["splits"] == ["train"] and identity["content_kind"] == "1c"
        assert training_overlap(identity, store, ["test"])["any"] is False
        assert training_overlap(identity, store, ["train"]) == {
            "images": 20, "captions": 60, "images_by_path": 20, "images_by_content": 20,
            "captions_by_text": len(train.captions), "any": True}
    assert count_shared(np.array([], dtype=np.uint64), train.paths) == 0
    assert text_digests(["a", "a", "b"]).tolist()[0] == text_digests(["a"]).tolist()[0]


def test_overlap_of_a_resplit_store_counts_the_moved_images(tmp_path: Path):
    with FeatureStore(write_store(tmp_path / "a.h5")) as trained_on:
        identity = data_identity(trained_on, ["train"])
    with FeatureStore(write_store(tmp_path / "b.h5", splits=resplit(32, 3))) as other:
        overlap = training_overlap(identity, other, ["test"])
    assert (overlap["images"], overlap["images_by_path"], overlap["images_by_content"]) == (6, 3, 3)
    assert overlap["any"]


@pytest.mark.parametrize("rows", [0, 1])
def test_row_digests_of_few_rows(tmp_path: Path, rows: int):
    with FeatureStore(write_store(tmp_path / "a.h5")) as store:
        assert len(row_digests(store.feature_rows("10c"), np.arange(rows))) == rows


def test_a_region_store_is_identified_by_its_region_rows(tmp_path: Path):
    dataset, attributes = synthetic_dataset(splits=SPLITS)
    regions = synthetic_features(attributes, feature_dim=FEATURE_DIM)[:, :3]  # [N, 3, D]: three "regions"
    write_features_store(tmp_path / "regions.h5", dataset, regions, kind="regions")
    with FeatureStore(tmp_path / "regions.h5") as store, FeatureStore(write_store(tmp_path / "cnn.h5")) as cnn:
        identity = data_identity(store, ["train"])
        assert identity["content_kind"] == "regions" and len(identity["content"]) == 20
        assert identity["fingerprint"] == store_fingerprint(cnn)  # the same dataset, whatever its features
        overlap = training_overlap(identity, cnn, ["train"])  # other feature kinds: content is not compared
        assert (overlap["images_by_path"], overlap["images_by_content"]) == (20, 0)
