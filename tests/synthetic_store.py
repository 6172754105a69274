"""A tiny synthetic feature store whose features encode caption content, and its fixtures (train/, ablation/, retrieval/ tests)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from features.datasets import DatasetIndex
from features.store import FeatureStoreWriter
from train.config import TrainConfig

COLORS = ("red", "blue", "green", "yellow")
SHAPES = ("circle", "square", "triangle", "star")
SIZES = ("big", "small")
TEMPLATES = ("a {size} {color} {shape}", "there is a {color} {shape} , it is {size} .",
             "the {shape} is {color} and {size}")
FEATURE_DIM = 24
VAL_ONLY_WORD = "zebra"  # appears in val and test captions only: must never enter the vocabulary
STORE_ATTRS = {
    "backbone": "synthetic", "layer": "none", "weights_name": None, "weights_sha256": None, "weights_seed": None, "decode": "cpu",
    "resize": 256, "crop": 224, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
    "torch_version": "test", "torchvision_version": "test", "command": "tests/synthetic_store.py",
    "image_root": "/nowhere", "dataset_path": "/nowhere/dataset.json",
}


def synthetic_dataset(*, splits: dict[str, int], seed: int = 0) -> tuple[DatasetIndex, np.ndarray]:
    """Images of (color, shape, size) with 3 captions each; returns the index and the attribute ids [N, 3]."""
    combos = list(itertools.product(range(len(COLORS)), range(len(SHAPES)), range(len(SIZES))))
    generator = np.random.default_rng(seed)
    paths, image_splits, texts, tokens, index, attributes = [], [], [], [], [], []
    for split, count in splits.items():
        for _ in range(count):
            color, shape, size = combos[generator.integers(len(combos))]
            row = len(paths)
            paths.append(f"{split}/{row:04d}.jpg")
            image_splits.append(split)
            attributes.append((color, shape, size))
            for template in TEMPLATES:
                text = template.format(color=COLORS[color], shape=SHAPES[shape], size=SIZES[size])
                if split in ("val", "test"):
                    text += f" near a {VAL_ONLY_WORD}"
                texts.append(text.capitalize())
                tokens.append(text.split())
                index.append(row)
    dataset = DatasetIndex(image_paths=paths, image_splits=image_splits, caption_texts=texts, caption_tokens=tokens,
                           caption_image_index=np.asarray(index, dtype=np.int64))
    return dataset, np.asarray(attributes, dtype=np.int64)


def synthetic_features(attributes: np.ndarray, *, feature_dim: int, seed: int = 0, vectors: int = 10) -> np.ndarray:
    """Ten-crop (or `vectors` region) features [N, 10, D]: a fixed linear map of the one-hot attributes plus noise."""
    generator = np.random.default_rng(seed + 1)
    onehot = np.concatenate([np.eye(len(COLORS))[attributes[:, 0]], np.eye(len(SHAPES))[attributes[:, 1]],
                             np.eye(len(SIZES))[attributes[:, 2]]], axis=1)  # [N, 10]
    projection = generator.standard_normal((onehot.shape[1], feature_dim))
    clean = onehot @ projection  # [N, D]
    noise = 0.3 * generator.standard_normal((len(attributes), vectors, feature_dim))
    return (clean[:, None, :] + noise).astype(np.float32)


def write_features_store(path: Path, dataset: DatasetIndex, features: np.ndarray, *, kind: str = "10c",
                         dtype: str = "float32", attrs: dict | None = None) -> Path:
    """A complete store of `features`, one row per image of `dataset`: kind "1c" ([N, D]), "10c" ([N, 10, D]; its
    1c is crop 4, the center) or "regions" ([N, K, D]); `attrs` default to STORE_ATTRS."""
    rows = np.arange(dataset.num_images)
    regions = features.shape[1] if kind == "regions" else 0
    crops = {"1c": 1, "10c": 10, "regions": 0}[kind]
    with FeatureStoreWriter.create(path, dataset, attrs=STORE_ATTRS if attrs is None else attrs,
                                   feature_dim=features.shape[-1], crops=crops, dtype=dtype,
                                   regions=regions) as writer:
        if kind == "regions":
            writer.write_rows(rows, None, None, regions=features)
        elif kind == "10c":
            writer.write_rows(rows, features[:, 4], features)
        else:
            writer.write_rows(rows, features, None)
    return path


@pytest.fixture
def make_train_store(tmp_path: Path):
    """Factory (name, crops, dtype, splits, regions) -> path of a complete synthetic store under tmp_path
    (regions=K > 0: a region store of K vectors per image, crops ignored)."""
    def factory(name: str = "store.h5", *, crops: int = 10, dtype: str = "float32",
                splits: dict[str, int] | None = None, feature_dim: int = FEATURE_DIM, regions: int = 0) -> Path:
        dataset, attributes = synthetic_dataset(splits=splits or {"train": 64, "val": 16, "test": 8})
        features = synthetic_features(attributes, feature_dim=feature_dim, vectors=regions or 10)
        if regions:
            return write_features_store(tmp_path / name, dataset, features, kind="regions", dtype=dtype)
        if crops == 1:
            return write_features_store(tmp_path / name, dataset, features[:, 4], kind="1c", dtype=dtype)
        return write_features_store(tmp_path / name, dataset, features, dtype=dtype)
    return factory


@pytest.fixture
def store_path(make_train_store) -> Path:
    """A ten-crop float32 synthetic store."""
    return make_train_store()


@pytest.fixture
def tiny_config(store_path: Path, tmp_path: Path) -> TrainConfig:
    """A fast config: embed 32, word dim 16, batch 16, min count 1, no logging noise."""
    return TrainConfig(store=str(store_path), out_dir=str(tmp_path / "run"), embed_dim=32, word_dim=16,
                       vocab_min_count=1, batch_size=16, epochs=2, lr=2e-3, device="cpu", log_every=1)
