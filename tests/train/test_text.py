"""Tests of train/text.py: tokenizer, vocabulary from train captions only, JSON round trip."""

from pathlib import Path

import pytest

from features.reader import FeatureStore
from train.text import SPECIAL_TOKENS, UNK, Vocabulary, build_vocabulary, caption_tokens, tokenize

from tests.synthetic_store import VAL_ONLY_WORD


def test_tokenize_lowercases_and_splits_punctuation():
    assert tokenize("A Man's dog, running-fast!") == ["a", "man's", "dog", ",", "running", "-", "fast", "!"]
    assert tokenize("  two   spaces\tand tab.") == ["two", "spaces", "and", "tab", "."]


def test_vocabulary_never_sees_val_or_test_words(store_path: Path):
    with FeatureStore(store_path) as store:
        vocab = build_vocabulary(store, splits=["train"], min_count=4)
        assert VAL_ONLY_WORD not in vocab
        assert "red" in vocab and "circle" in vocab
        val_rows = store.caption_indices(["val"])
        ids = vocab.encode(caption_tokens(store, [int(val_rows[0])])[0])
    assert vocab.unk_id in ids.tolist()  # the val-only word maps to <unk>


def test_min_count_and_special_ids():
    vocab = Vocabulary.build([["a", "b"], ["a", "c"], ["a", "b"]], min_count=2)
    assert vocab.words[:4] == list(SPECIAL_TOKENS) and vocab.word_to_id["<pad>"] == 0
    assert vocab.words[4:] == ["a", "b"]  # by count, c is dropped
    assert vocab.decode(vocab.encode(["b", "c"])) == ["<start>", "b", UNK, "<end>"]


def test_store_tokens_are_used_when_present(store_path: Path):
    with FeatureStore(store_path) as store:
        assert store.caption_tokens is not None
        assert caption_tokens(store, [0]) == [[token.lower() for token in store.caption_tokens[0]]]


def test_json_round_trip_and_errors(tmp_path: Path):
    vocab = Vocabulary.build([["x", "y", "x"]], min_count=1)
    vocab.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path / "vocab.json").words == vocab.words
    with pytest.raises(FileNotFoundError, match="missing.json"):
        Vocabulary.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="must start with"):
        Vocabulary(["x", "<pad>"])
