"""Suite-wide test settings."""

import torch

# The tests run tiny models, where a second intra-op thread costs more in synchronisation than it gains,
# and on a busy 2-core machine two threads per process oversubscribe the cores (measured: a tiny GRU step
# 0.02 s with one thread, 1.2-1.6 s with two under load). One thread also keeps timings predictable.
torch.set_num_threads(1)

# The report and serve tests share one small real run and one browser (built once per session, when asked for).
from tests.see_fixtures import chromium, seen_run  # noqa: E402,F401  (pytest fixtures)
