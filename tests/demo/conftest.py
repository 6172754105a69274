"""Fixtures for the demo tests: one tiny generated dataset shared by the session."""

from pathlib import Path

import pytest

from demo.synthetic import generate_demo_dataset

TINY = {"num_train": 16, "num_val": 4, "num_test": 6, "num_restval": 2, "image_size": 96, "seed": 3}


@pytest.fixture(scope="session")
def demo_dataset_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the Karpathy JSON of a tiny demo dataset (image root = its folder). Do not modify it."""
    return generate_demo_dataset(tmp_path_factory.mktemp("tiny_demo"), **TINY)
