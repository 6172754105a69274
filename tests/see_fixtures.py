"""Fixtures of the report and serve tests: a small real run (generated images, resnet18 store, a trained model) and a
headless chromium: without it the browser tests skip with the reason, and fail in CI (CI=true, set by .ci/run)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from demo.synthetic import generate_demo_dataset
from extract.config import ExtractConfig
from extract.run import run_extract
from train.config import TrainConfig
from train.run import run_train

CHROMIUM = "/usr/bin/chromium"  # Debian's package (apt-get install -y chromium); .ci/run installs it
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOT_COPIES = Path("/tmp/see_screenshots")  # a copy of each browser test's screenshot, to look at after a run


@dataclass(frozen=True)
class SeenRun:
    """A generated dataset (demo shapes, 96 px), its random-init resnet18 store and a trained run folder."""

    dataset: Path
    image_root: Path
    store: Path
    run_dir: Path

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "best.pt"


def build_seen_run(folder: Path) -> SeenRun:
    """24 train, 6 val, 8 test images with 5 captions each; a store; 10 epochs of SH warm-up then MH, logged at
    every step (~4 s on one core)."""
    dataset = generate_demo_dataset(folder / "data", num_train=24, num_val=6, num_test=8, image_size=96, seed=1)
    store = folder / "store.h5"
    run_extract(ExtractConfig(dataset=str(dataset), image_root=str(dataset.parent), out=str(store),
                              backbone="resnet18", weights="none", crops=1, workers=0, device="cpu", batch_size=16))
    run_dir = folder / "run"
    run_train(TrainConfig(store=str(store), out_dir=str(run_dir), embed_dim=32, word_dim=16, vocab_min_count=1,
                          batch_size=20, epochs=10, warmup_epochs=3, log_every=1, lr=5e-3, device="cpu"))
    return SeenRun(dataset, dataset.parent, store, run_dir)


@pytest.fixture(scope="session")
def seen_run(tmp_path_factory: pytest.TempPathFactory) -> SeenRun:
    """One SeenRun for the session (report and serve tests); do not modify its files."""
    return build_seen_run(tmp_path_factory.mktemp("seen"))


@pytest.fixture(scope="session")
def chromium():
    """A headless Debian chromium driven by Playwright (no browser download); when it is missing, the tests that
    need it skip with the fix, or fail in CI."""
    path = shutil.which("chromium") or CHROMIUM
    if not Path(path).is_file():
        browser_missing(f"no chromium at {CHROMIUM}: the browser tests need Debian's chromium (apt-get install -y "
                        "chromium; .ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        browser_missing("Python playwright is missing: pip install -r requirements.txt")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def browser_missing(reason: str) -> None:
    """Skip the test with `reason`; in CI (CI=true) fail it instead, so that CI never passes without the browser."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason + " (CI=true: the browser tests must run)")
    pytest.skip(reason)


def keep_screenshot(path: Path) -> None:
    """Copy a test's screenshot to SCREENSHOT_COPIES (best effort: a read-only /tmp does not fail a test)."""
    try:
        SCREENSHOT_COPIES.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SCREENSHOT_COPIES / path.name)
    except OSError:
        pass
