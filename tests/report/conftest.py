"""Fixtures of the report tests: a tiny real ablation grid on the session's run store."""

from __future__ import annotations

from pathlib import Path

import pytest

from ablation.config import AblationConfig
from ablation.run import run_ablation
from tests.see_fixtures import SeenRun


@pytest.fixture(scope="module")
def grid(seen_run: SeenRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ablation folder of two cells (sh, mh; 1C), two steps each: ablation.json and one run folder per cell."""
    out_dir = tmp_path_factory.mktemp("grid")
    run_ablation(AblationConfig(store=str(seen_run.store), out_dir=str(out_dir), losses=("sh", "mh"),
                                image_features=("1c",), epochs=1, max_steps=2, embed_dim=16, word_dim=8,
                                batch_size=20, device="cpu"))
    return out_dir
