"""Fixtures of the retrieval tests: synthetic-store runs (cosine and order), a real resnet18 store with its train
and finetune checkpoints (tests/train/finetune/fixtures.py), and a CLI runner."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.synthetic_store import FEATURE_DIM, synthetic_dataset, synthetic_features, write_features_store
from tests.train.finetune.fixtures import FinetuneSetup, build_setup, finetune_config
from train.config import TrainConfig
from train.finetune.run import run_finetune
from train.run import run_train


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny trained runs on one synthetic store (12 test images, 36 captions): cosine MH, and order
    similarity (Order++-style); {"store", "cosine", "order"} -> paths."""
    folder = tmp_path_factory.mktemp("runs")
    dataset, attributes = synthetic_dataset(splits={"train": 64, "val": 16, "test": 12})
    features = synthetic_features(attributes, feature_dim=FEATURE_DIM)
    store = folder / "store.h5"
    write_features_store(store, dataset, features)
    base = TrainConfig(store=str(store), embed_dim=16, word_dim=8, vocab_min_count=1, batch_size=32, epochs=2,
                       lr=5e-3, device="cpu", feature_mode="10c-random")
    runs = {"store": store}
    for name, options in {"cosine": {}, "order": {"similarity": "order", "abs_embeddings": True, "margin": 0.05}}.items():
        summary = run_train(dataclasses.replace(base, out_dir=str(folder / name), **options))
        runs[name] = Path(summary["best"])
    return runs


@pytest.fixture(scope="session")
def images_setup(tmp_path_factory: pytest.TempPathFactory) -> FinetuneSetup:
    """Twelve JPEGs (9 train, 3 val), their random-init resnet18 store (1C) and a 2-step train checkpoint."""
    return build_setup(tmp_path_factory.mktemp("resnet18"))


@pytest.fixture(scope="session")
def finetuned(images_setup: FinetuneSetup, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-step fine-tune of images_setup's checkpoint (last resnet18 stage): its last.pt."""
    cfg = finetune_config(images_setup, tmp_path_factory.mktemp("finetuned"), max_steps=1)
    return Path(run_finetune(cfg)["last"])


@pytest.fixture
def invoke(tmp_path: Path):
    """invoke(*args) -> click Result of pipeline.py's CLI, run in tmp_path (exceptions propagate)."""
    import pipeline

    def run(*args: str):
        return CliRunner().invoke(pipeline.cli, ["--log-level", "WARNING", *map(str, args)], catch_exceptions=False)
    return run
