"""extract/writer.py: writes in order in one thread, an error raised in the caller, nothing written after it."""

from __future__ import annotations

import errno
import threading

import numpy as np
import pytest

from extract.writer import BackgroundWriter


class RecordingWriter:
    """Stands in for FeatureStoreWriter: records calls and the thread they ran in; can fail at one call."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls, self.threads, self.fail_at = [], set(), fail_at

    def _record(self, call: tuple) -> None:
        if len(self.calls) == self.fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.calls.append(call)
        self.threads.add(threading.current_thread().name)

    def write_rows(self, indices, feats_1c, feats_10c) -> None:
        self._record(("write", indices.tolist()))

    def mark_failed(self, indices, errors) -> None:
        self._record(("failed", indices.tolist(), errors))


def test_writes_run_in_order_in_one_background_thread():
    store = RecordingWriter()
    with BackgroundWriter(store, depth=1) as writer:
        for row in range(5):
            writer.write_rows(np.array([row]), np.zeros((1, 2)), None)
        writer.mark_failed(np.array([9]), ["truncated"])
        writer.drain()
    assert store.calls == [("write", [row]) for row in range(5)] + [("failed", [9], ["truncated"])]
    assert store.threads == {"store-writer"}


def test_a_failed_write_is_raised_in_the_caller_and_later_writes_are_dropped():
    store = RecordingWriter(fail_at=2)
    writer = BackgroundWriter(store, depth=8)
    # The thread may meet the failing write while rows are still being queued: the caller sees the error at its
    # next submit or at drain, whichever comes first.
    with pytest.raises(OSError, match="No space left"):
        for row in range(6):
            writer.write_rows(np.array([row]), np.zeros((1, 2)), None)
        writer.drain()
    writer.write_rows(np.array([99]), np.zeros((1, 2)), None)  # after the error: dropped, the rows stay pending
    writer.close()
    writer.close()  # idempotent
    assert store.calls == [("write", [0]), ("write", [1])]
