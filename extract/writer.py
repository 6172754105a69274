"""Writes of the store in a background thread, so the HDF5 writes of one batch overlap the CNN of the next."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import numpy as np

from features.store import FeatureStoreWriter

_STOP = object()


class BackgroundWriter:
    """FeatureStoreWriter.write_rows / mark_failed run in one thread, in the order they were given.

    At most `depth` computed batches wait in the queue (memory stays bounded), and every HDF5 call happens in
    that one thread. A write that fails there (a full disk) is raised in the caller at its next call or at
    `drain()`; the batches behind it are dropped and stay pending, so a rerun resumes exactly as before:
    only rows whose features were written and flushed are ever marked done.
    """

    def __init__(self, writer: FeatureStoreWriter, *, depth: int = 2) -> None:
        self.writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._error: BaseException | None = None  # the thread's error, until the caller has seen it
        self._failed = False  # once a write failed, the ones behind it are dropped
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            task = self._queue.get()
            try:
                if task is _STOP:
                    return
                if not self._failed:
                    task()
            except BaseException as error:  # handed to the caller, which raises it
                self._error, self._failed = error, True
            finally:
                self._queue.task_done()

    def _submit(self, task: Callable[[], None]) -> None:
        self._raise_error()
        self._queue.put(task)

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def write_rows(self, indices: np.ndarray, feats_1c: np.ndarray, feats_10c: np.ndarray | None) -> None:
        """Queue FeatureStoreWriter.write_rows (the arrays must not be changed afterwards)."""
        self._submit(lambda: self.writer.write_rows(indices, feats_1c, feats_10c))

    def mark_failed(self, indices: np.ndarray, errors: list[str]) -> None:
        """Queue FeatureStoreWriter.mark_failed."""
        self._submit(lambda: self.writer.mark_failed(indices, errors))

    def drain(self) -> None:
        """Wait until every queued write is done; raise the first error of the thread, if any."""
        self._queue.join()
        self._raise_error()

    def close(self) -> None:
        """Finish the queued writes and stop the thread (errors are raised by drain, not here); idempotent."""
        if not self._thread.is_alive():
            return
        self._queue.join()
        self._queue.put(_STOP)
        self._thread.join()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
