"""Shared fixtures for the features/ tests: a tiny dataset, config attrs and a store factory."""

from pathlib import Path

import numpy as np
import pytest

from features.datasets import DatasetIndex
from features.store import FeatureStoreWriter

FEATURE_DIM = 6


@pytest.fixture
def tiny_index() -> DatasetIndex:
    """Five images with 1-3 captions each and tokens, across all four splits."""
    image_captions = [("a.jpg", "train", 2), ("b.jpg", "train", 1), ("c.jpg", "val", 3),
                      ("d.jpg", "test", 2), ("e.jpg", "restval", 1)]
    texts, tokens, index = [], [], []
    for row, (_, _, count) in enumerate(image_captions):
        for number in range(count):
            texts.append(f"Caption {number} of image {row}.")
            tokens.append(["caption", str(number), "of", "image", str(row)])
            index.append(row)
    return DatasetIndex(
        image_paths=[path for path, _, _ in image_captions],
        image_splits=[split for _, split, _ in image_captions],
        caption_texts=texts,
        caption_tokens=tokens,
        caption_image_index=np.asarray(index, dtype=np.int64),
    )


@pytest.fixture
def config_attrs() -> dict:
    """Config attributes as extract would pass them (crops and dtype come as arguments)."""
    return {
        "backbone": "resnet18", "layer": "avgpool", "weights_name": None, "weights_sha256": None, "weights_seed": None, "decode": "cpu",
        "resize": 256, "crop": 224, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "torch_version": "2.14.1", "torchvision_version": "0.29.1", "command": "pipeline.py extract",
        "image_root": "/data/images", "dataset_path": "/data/dataset.json",
    }


def _random_features(rows: int, crops: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    generator = np.random.default_rng(seed)
    if crops == 1:
        return generator.standard_normal((rows, FEATURE_DIM)).astype(np.float32), None
    feats_10c = generator.standard_normal((rows, 10, FEATURE_DIM)).astype(np.float32)
    return feats_10c[:, 4].copy(), feats_10c


@pytest.fixture
def random_features():
    """Function (rows, crops, seed) -> (feats_1c [rows, D], feats_10c [rows, 10, D] or None), 1c = center."""
    return _random_features


@pytest.fixture
def make_store(tmp_path: Path, tiny_index: DatasetIndex, config_attrs: dict):
    """Factory: create a store under tmp_path; returns the open writer (closed at teardown)."""
    writers: list[FeatureStoreWriter] = []

    def factory(name: str = "store.h5", *, crops: int = 10, dtype: str = "float32") -> FeatureStoreWriter:
        writer = FeatureStoreWriter.create(tmp_path / name, tiny_index, attrs=config_attrs,
                                           feature_dim=FEATURE_DIM, crops=crops, dtype=dtype)
        writers.append(writer)
        return writer

    yield factory
    for writer in writers:
        writer.close()
