"""Progress of long work: a tqdm bar on a terminal; elsewhere (a log file, a batch job) a plain log line at most
every LOG_SECONDS and at the end, with done/total, rate and time left."""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

LOG_SECONDS = 10.0


class Progress:
    """Counts `total` units of `what` (e.g. "extract resnet152" in "img"); `done` were finished before."""

    def __init__(self, what: str, total: int, *, unit: str, done: int = 0, logger: logging.Logger,
                 terminal: bool | None = None) -> None:
        self.what, self.total, self.unit, self.done, self.logger = what, total, unit, done, logger
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar = tqdm(total=total, initial=done, desc=what, unit=unit, mininterval=1.0, disable=not terminal)
        self.lines = not terminal
        self.start = self.last = time.perf_counter()
        self.start_done = done

    def update(self, count: int = 1, **postfix: object) -> None:
        self.done += count
        self.bar.update(count)
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        now = time.perf_counter()
        if self.lines and (now - self.last >= LOG_SECONDS or self.done == self.total):
            self.last = now
            rate = (self.done - self.start_done) / max(now - self.start, 1e-9)
            extra = "".join(f", {key} {value}" for key, value in postfix.items())
            self.logger.info("%s: %d of %d %s (%.0f%%), %.2f %s/s, %s left%s", self.what, self.done, self.total,
                             self.unit, 100.0 * self.done / max(self.total, 1), rate, self.unit,
                             duration(max(self.total - self.done, 0) / max(rate, 1e-9)), extra)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def duration(seconds: float) -> str:
    """H:MM:SS."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
