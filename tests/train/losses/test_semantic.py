"""Tests of train/losses/semantic.py: preprocessing, train-only fitting, the cache beside the store."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from train.losses import semantic
from train.losses.semantic import (
    fit_semantic_model,
    load_or_fit_semantic_vectors,
    preprocess_caption,
    transform,
)

TRAIN_CAPTIONS = [
    "A dog runs across the green grass.",
    "Two dogs running on the grass field",
    "A black cat sleeps on a sofa",
    "The cat is sleeping on the red sofa.",
    "A man riding a bicycle down the street",
    "People riding bicycles in a busy street",
    "A plate of pasta with tomato sauce",
    "Pizza and pasta on a wooden table",
]
VAL_CAPTIONS = ["A dog on a sofa", "A man eating pizza"]
# "zebra" and "giraffe" occur only in test captions.
TEST_CAPTIONS = [
    "A zebra and a dog on grass",
    "A dog on grass",
    "A giraffe eating leaves",
    "A dog runs across the green grass.",
]


@dataclass
class FakeStore:
    """The attributes of features.reader.FeatureStore that semantic.py reads."""

    caption_texts: list[str]
    caption_splits: np.ndarray
    attrs: dict = field(default_factory=lambda: {"created": "2025-01-01T00:00:00"})


def make_store() -> FakeStore:
    texts = TRAIN_CAPTIONS + VAL_CAPTIONS + TEST_CAPTIONS
    splits = ["train"] * len(TRAIN_CAPTIONS) + ["val"] * len(VAL_CAPTIONS) + ["test"] * len(TEST_CAPTIONS)
    return FakeStore(caption_texts=texts, caption_splits=np.array(splits))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("running dogs", ["run", "dog"]),
        ("Two dogs, 3 cats & 42 birds!!", ["dog", "cat", "bird"]),  # digits, punctuation, stop word "two"
        ("The man is riding a horse.", ["man", "ride", "hors"]),
        ("t-shirt 1990s", ["shirt"]),  # "t" and "s" are single letters once non-letters become spaces
        ("a the of and is", []),
        ("Nobody anywhere, everything", []),  # stop words whose stems ("nobodi") are not stop words
        ("", []),
    ],
)
def test_preprocess_caption(text: str, expected: list[str]) -> None:
    assert preprocess_caption(text) == expected


def test_preprocess_caption_output_is_clean() -> None:
    tokens = preprocess_caption("A café's 2nd-floor WINDOWS, seen from outside; ÉTÉ 2020 #tag")
    assert tokens, "expected some content words"
    for token in tokens:
        assert token.isascii() and token.isalpha() and token.islower() and len(token) >= 2
        assert token not in semantic.ENGLISH_STOP_WORDS


def test_fit_on_train_only_ignores_unseen_words() -> None:
    model = fit_semantic_model(TRAIN_CAPTIONS, dim=4, seed=0)
    vocabulary = model.vectorizer.vocabulary_
    assert "dog" in vocabulary and "zebra" not in vocabulary and "giraff" not in vocabulary
    with_zebra, without, giraffe = transform(model, ["A zebra and a dog on grass", "A dog on grass", "a giraffe"])
    np.testing.assert_array_equal(with_zebra, without)
    np.testing.assert_array_equal(giraffe, np.zeros(model.dim, dtype=np.float32))


def test_transform_shapes_dtype_and_identical_captions() -> None:
    model = fit_semantic_model(TRAIN_CAPTIONS, dim=5, seed=0)
    vectors = transform(model, [TRAIN_CAPTIONS[2], "a dog", TRAIN_CAPTIONS[2], "A BLACK cat sleeps on a sofa!"])
    assert vectors.shape == (4, 5) and vectors.dtype == np.float32 and np.isfinite(vectors).all()
    np.testing.assert_array_equal(vectors[0], vectors[2])
    np.testing.assert_array_equal(vectors[0], vectors[3])  # same stems after preprocessing
    assert not np.allclose(vectors[0], vectors[1])
    # Related captions are closer than unrelated ones (LSA keeps the dog/grass topic together).
    dog_a, dog_b, cat = transform(model, TRAIN_CAPTIONS[:3])
    assert dog_a @ dog_b > dog_a @ cat
    assert transform(model, []).shape == (0, 5)


def test_fit_is_deterministic_for_a_seed() -> None:
    first = transform(fit_semantic_model(TRAIN_CAPTIONS, dim=3, seed=7), TEST_CAPTIONS)
    second = transform(fit_semantic_model(TRAIN_CAPTIONS, dim=3, seed=7), TEST_CAPTIONS)
    np.testing.assert_array_equal(first, second)


def test_dim_reduced_for_tiny_vocabulary(caplog: pytest.LogCaptureFixture) -> None:
    captions = ["red apple", "green apple", "red pear", "green pear", "yellow banana", "apple banana"]
    with caplog.at_level(logging.INFO, logger="train.losses.semantic"):
        model = fit_semantic_model(captions, dim=400)
    assert model.vocabulary_size == 6
    assert model.dim == 5
    assert transform(model, ["red banana"]).shape == (1, 5)
    assert any("reduced to 5" in record.getMessage() for record in caplog.records)


def test_dim_limited_by_number_of_captions() -> None:
    model = fit_semantic_model(["red apple green pear", "yellow banana blue plum", "white grape"], dim=400)
    assert model.dim == 2  # 3 captions -> rank at most 3, keep 3 - 1


@pytest.mark.parametrize(
    ("captions", "match"),
    [([], "no training captions"), (["the a of", "and is"], "no content words"), (["dog"], "at least two")],
)
def test_fit_rejects_degenerate_input(captions: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit_semantic_model(captions, dim=4)


def test_load_or_fit_covers_all_captions_with_train_only_model(tmp_path: Path) -> None:
    store = make_store()
    store_path = tmp_path / "coco_resnet152.h5"
    vectors = load_or_fit_semantic_vectors(store_path, store, dim=4)
    assert vectors.shape == (len(store.caption_texts), 4) and vectors.dtype == np.float32
    test_rows = {text: i for i, text in enumerate(store.caption_texts) if store.caption_splits[i] == "test"}
    # A test caption equal to a train caption gets the same vector; test-only words are ignored.
    np.testing.assert_array_equal(vectors[test_rows[TRAIN_CAPTIONS[0]]], vectors[0])
    with_zebra, without_zebra = test_rows["A zebra and a dog on grass"], test_rows["A dog on grass"]
    np.testing.assert_array_equal(vectors[with_zebra], vectors[without_zebra])
    # Same vectors as fitting directly on the train captions.
    expected = transform(fit_semantic_model(TRAIN_CAPTIONS, dim=4, seed=0), store.caption_texts)
    np.testing.assert_array_equal(vectors, expected)

    (npy_path,) = tmp_path.glob("coco_resnet152.h5.semantic-4-*.npy")
    meta = json.loads(npy_path.with_suffix(".json").read_text())
    assert meta["train_splits"] == ["train"] and meta["num_train_captions"] == len(TRAIN_CAPTIONS)
    assert meta["dim"] == 4 and meta["l2_normalised"] is False
    assert not list(tmp_path.glob("*.tmp"))


def test_cache_reused_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store()
    store_path = tmp_path / "store.h5"
    fits: list[int] = []
    real_fit = semantic.fit_semantic_model

    def counting_fit(texts, **kwargs):
        fits.append(len(texts))
        return real_fit(texts, **kwargs)

    monkeypatch.setattr(semantic, "fit_semantic_model", counting_fit)
    first = load_or_fit_semantic_vectors(store_path, store, dim=4)
    second = load_or_fit_semantic_vectors(store_path, store, dim=4)
    assert fits == [len(TRAIN_CAPTIONS)]
    np.testing.assert_array_equal(first, second)

    # Other train splits: another file, another fit (order of splits does not matter).
    both = load_or_fit_semantic_vectors(store_path, store, train_splits=("val", "train"), dim=4)
    assert fits == [len(TRAIN_CAPTIONS), len(TRAIN_CAPTIONS) + len(VAL_CAPTIONS)]
    load_or_fit_semantic_vectors(store_path, store, train_splits=("train", "val"), dim=4)
    assert len(fits) == 2
    assert not np.array_equal(first, both)
    assert len(list(tmp_path.glob("store.h5.semantic-4-*.npy"))) == 2

    # A re-created store (new "created" attr) is not served the old vectors.
    store.attrs["created"] = "2025-02-02T00:00:00"
    load_or_fit_semantic_vectors(store_path, store, dim=4)
    assert len(fits) == 3


def test_inconsistent_or_partial_cache_is_refitted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store()
    store_path = tmp_path / "store.h5"
    reference = load_or_fit_semantic_vectors(store_path, store, dim=4)
    (npy_path,) = tmp_path.glob("*.npy")
    json_path = npy_path.with_suffix(".json")

    np.save(npy_path, np.zeros((3, 4), dtype=np.float32))  # wrong number of rows
    np.testing.assert_array_equal(load_or_fit_semantic_vectors(store_path, store, dim=4), reference)

    json_path.unlink()  # an interrupted write leaves the array without its description
    calls: list[int] = []
    real_fit = semantic.fit_semantic_model
    monkeypatch.setattr(semantic, "fit_semantic_model", lambda texts, **kw: calls.append(1) or real_fit(texts, **kw))
    np.testing.assert_array_equal(load_or_fit_semantic_vectors(store_path, store, dim=4), reference)
    assert calls == [1] and json_path.exists()


def test_load_or_fit_rejects_bad_input(tmp_path: Path) -> None:
    store = make_store()
    with pytest.raises(ValueError, match="restval"):
        load_or_fit_semantic_vectors(tmp_path / "s.h5", store, train_splits=("train", "restval"), dim=4)
    with pytest.raises(ValueError, match="empty"):
        load_or_fit_semantic_vectors(tmp_path / "s.h5", store, train_splits=(), dim=4)
    store.attrs = {}
    with pytest.raises(ValueError, match="created"):
        load_or_fit_semantic_vectors(tmp_path / "s.h5", store, dim=4)
    assert not list(tmp_path.iterdir())
