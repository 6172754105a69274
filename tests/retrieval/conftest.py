"""The synthetic-store fixtures (tests/synthetic_store.py) for the tests of this folder."""

from tests.synthetic_store import make_train_store, store_path, tiny_config  # noqa: F401  (pytest fixtures)
