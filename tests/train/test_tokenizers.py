"""The tokenizer choice of train/text.py: "basic" (this project's) and "nltk" (the reference VSE++ code's), recorded
with the vocabulary."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from train.text import BASIC, NLTK, Vocabulary, build_vocabulary, caption_tokens, tokenize


def test_nltk_tokenizer_splits_as_the_treebank_rules_and_basic_stays_as_it_was():
    text = 'A man\'s dog isn\'t "running", see?'
    assert tokenize(text) == ["a", "man's", "dog", "isn't", '"', "running", '"', ",", "see", "?"]
    assert tokenize(text, NLTK) == ["a", "man", "'s", "dog", "is", "n't", "``", "running", "''", ",", "see", "?"]


def test_nltk_tokenizer_without_punkt_keeps_an_inner_sentence_end_on_its_word():
    # word_tokenize would split sentences first (punkt) and give "hat", "."; the known difference
    assert tokenize("A red hat. Two cats.", NLTK) == ["a", "red", "hat.", "two", "cats", "."]


def test_unknown_tokenizer_is_refused():
    with pytest.raises(ValueError, match="unknown tokenizer 'spacy'; valid: basic, nltk"):
        tokenize("a dog", "spacy")
    with pytest.raises(ValueError, match="unknown tokenizer 'spacy' in a vocabulary"):
        Vocabulary.from_dict({"words": ["<pad>", "<start>", "<end>", "<unk>"], "tokenizer": "spacy"})


def test_vocabulary_records_its_tokenizer_and_older_files_read_as_basic():
    vocab = Vocabulary.build([["is", "n't"]], min_count=1, tokenizer=NLTK)
    again = Vocabulary.from_dict(vocab.to_dict())
    assert again.tokenizer == NLTK and again.words == vocab.words
    assert again.tokenize("It isn't") == ["it", "is", "n't"]
    assert Vocabulary.from_dict({"words": vocab.words}).tokenizer == BASIC


def test_caption_tokens_with_nltk_tokenize_the_text_and_ignore_the_dataset_tokens():
    store = SimpleNamespace(caption_texts=["A dog isn't here.", "Cats."],
                            caption_tokens=[["a", "dog", "isnt", "here"], ["cats"]],
                            caption_indices=lambda splits: np.array([0, 1]))
    assert caption_tokens(store, [0]) == [["a", "dog", "isnt", "here"]]
    assert caption_tokens(store, [0], tokenizer=NLTK) == [["a", "dog", "is", "n't", "here", "."]]
    vocab = build_vocabulary(store, splits=["train"], min_count=1, tokenizer=NLTK)
    assert vocab.tokenizer == NLTK and "n't" in vocab and "isnt" not in vocab
