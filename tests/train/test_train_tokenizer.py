"""train --tokenizer: the vocabulary is built with the chosen tokenizer (the reference's nltk one, or basic), recorded
in config.json and vocab.json, kept by a resume and by a fine-tune; a resume with another tokenizer is refused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from features.datasets import DatasetIndex
from retrieval.model import load_model
from tests.synthetic_store import write_features_store
from train.config import TrainConfig
from train.finetune.config import CHECKPOINT_FIELDS
from train.run import run_train
from train.text import Vocabulary, tokenize

# Words that the two tokenizers split differently: basic keeps "isn't" and '"', nltk gives is / n't and `` / ''
TRAIN_CAPTIONS = ('the dog isn\'t "small"', 'a cat isn\'t "red"', "the bird sits", "a man's hat")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """16 train and 4 val images, 2 captions each."""
    images = 20
    texts = [TRAIN_CAPTIONS[(row + k) % len(TRAIN_CAPTIONS)] for row in range(images) for k in range(2)]
    dataset = DatasetIndex(image_paths=[f"{row}.jpg" for row in range(images)],
                           image_splits=["train"] * 16 + ["val"] * 4, caption_texts=texts,
                           caption_tokens=[tokenize(text) for text in texts],  # as extract stores them
                           caption_image_index=np.repeat(np.arange(images), 2))
    features = np.random.default_rng(0).standard_normal((images, 6)).astype(np.float32)
    return write_features_store(tmp_path / "store.h5", dataset, features, kind="1c")


def small_config(store: Path, out_dir: Path, **overrides) -> TrainConfig:
    return TrainConfig(store=str(store), out_dir=str(out_dir), embed_dim=8, word_dim=4, vocab_min_count=1,
                       batch_size=8, epochs=1, max_steps=1, device="cpu", log_every=1, **overrides)


@pytest.mark.parametrize("tokenizer, present, absent", [
    ("nltk", {"is", "n't", "``", "''", "man", "'s"}, {"isn't", '"', "man's"}),
    ("basic", {"isn't", '"', "man's"}, {"n't", "``"}),
])
def test_the_vocabulary_is_built_and_recorded_with_the_chosen_tokenizer(store, tmp_path, tokenizer, present, absent):
    run_train(small_config(store, tmp_path / "run", tokenizer=tokenizer))
    vocab = Vocabulary.load(tmp_path / "run" / "vocab.json")
    assert vocab.tokenizer == tokenizer and present <= set(vocab.words) and not absent & set(vocab.words)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["tokenizer"] == tokenizer
    loaded = load_model(tmp_path / "run" / "last.pt")
    assert loaded.vocab.tokenizer == tokenizer and loaded.config.tokenizer == tokenizer


@pytest.mark.slow
def test_a_resume_keeps_the_tokenizer_and_refuses_another(store, tmp_path):
    cfg = small_config(store, tmp_path / "run", tokenizer="nltk")
    run_train(cfg)
    last = str(tmp_path / "run" / "last.pt")
    with pytest.raises(ValueError, match=r"options differ from the checkpoint's \(tokenizer: 'nltk' -> 'basic'\)"):
        run_train(dataclasses.replace(cfg, tokenizer="basic", resume=last, max_steps=2))
    run_train(dataclasses.replace(cfg, resume=last, max_steps=2))
    assert Vocabulary.load(tmp_path / "run" / "vocab.json").tokenizer == "nltk"
    assert "tokenizer" in CHECKPOINT_FIELDS  # a fine-tune takes the train checkpoint's, as its vocabulary


def test_cli_tokenizer_option(store, tmp_path):
    import pipeline

    args = ["--log-level", "WARNING", "train", "--store", str(store), "--out-dir", str(tmp_path / "run"),
            "--embed-dim", "8", "--word-dim", "4", "--vocab-min-count", "1", "--batch-size", "8", "--max-steps", "1",
            "--device", "cpu"]
    result = CliRunner().invoke(pipeline.cli, [*args, "--tokenizer", "spacy"])
    assert result.exit_code == 2 and "'spacy' is not one of 'basic', 'nltk'" in result.output
    result = CliRunner().invoke(pipeline.cli, [*args, "--tokenizer", "nltk"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert Vocabulary.load(tmp_path / "run" / "vocab.json").tokenizer == "nltk"
