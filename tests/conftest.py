"""Suite-wide test settings."""

import os

import pytest
import torch

# No test may reach the network: weight files are never downloaded unless a test serves them on 127.0.0.1 itself
# (and lifts this switch with monkeypatch for that test).
os.environ["VSEPP_OFFLINE"] = "1"

# The tests run tiny models, where a second intra-op thread costs more in synchronisation than it gains,
# and on a busy 2-core machine two threads per process oversubscribe the cores (measured: a tiny GRU step
# 0.02 s with one thread, 1.2-1.6 s with two under load). One thread also keeps timings predictable.
torch.set_num_threads(1)

# The report and serve tests share one small real run and one browser (built once per session, when asked for).
from tests.see_fixtures import chromium, seen_run  # noqa: E402,F401  (pytest fixtures)
# Fixtures that top-level test modules share with the stage folders.
from tests.extract.conftest import tiny_dataset as images  # noqa: E402,F401  (dataset JSON, image root)
from tests.synthetic_store import make_train_store, store_path, tiny_config  # noqa: E402,F401


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs chromium is a browser test; browser and distributed tests are slow too (a browser or
    several processes to start), so `-m "not slow"` leaves them out (pyproject.toml lists the markers)."""
    for item in items:
        if "chromium" in item.fixturenames:
            item.add_marker(pytest.mark.browser)
        if item.get_closest_marker("browser") or item.get_closest_marker("distributed"):
            item.add_marker(pytest.mark.slow)
