"""Build the next batches in a background thread while the current step runs."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

Item = TypeVar("Item")
_DONE = object()


def prefetch(items: Iterator[Item], *, depth: int = 2, prepare: Callable[[Item], Item] | None = None) -> Iterator[Item]:
    """Yield `items` in order while a thread produces up to `depth` of them ahead (and applies `prepare`,
    e.g. pinning memory for a GPU copy).

    Batches are pure functions of (seed, epoch, step), so producing them early changes nothing but the
    time the step waits. The store reads (preadv) and numpy/torch work release the GIL, so the thread
    runs beside the step. An exception in the producer is raised here, at the item where it happened; closing
    this generator (a break, an interrupt) stops the thread.
    """
    ready: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                item = prepare(item) if prepare is not None else item
                while not stop.is_set():
                    try:
                        ready.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put((_DONE, None))
        except BaseException as error:  # handed to the consumer, which raises it
            ready.put((_DONE, error))

    thread = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
