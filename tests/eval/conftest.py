"""Fixtures for the eval tests: a seeded generator and a factory of shuffled caption -> image indices."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def make_index(rng: np.random.Generator) -> Callable[[list[int]], np.ndarray]:
    """make_index(captions_per_image) -> shuffled int64 index giving image i captions_per_image[i] captions."""

    def make(captions_per_image: list[int]) -> np.ndarray:
        index = np.repeat(np.arange(len(captions_per_image)), captions_per_image)
        return rng.permutation(index).astype(np.int64)

    return make
