"""Progress of long work (extract, encode, train, pretrain): a tqdm bar on a terminal, log lines written through
it; elsewhere (a log file, a batch job) one plain line with done/total, the caller's numbers, rate and time left."""

from __future__ import annotations

import contextlib
import logging
import sys
import time

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

LOG_SECONDS = 10.0


class Progress:
    """Counts `total` units of `what` (e.g. "extract resnet18" in "img"); `done` were finished before.

    Off a terminal a line is logged at most every `log_seconds` by `update` and at the end (None: only when
    `report` is called, as the trainer does on its log steps), like torchvision's MetricLogger line:
      extract resnet18: 30 of 40 img (75%), 2.40 img/s, 0:00:04 left, loss 0.5
    `started` is when the work began (time.perf_counter(); default now): the rate counts from it. With a CUDA
    `device` the line also gives the peak memory allocated on it.
    """

    def __init__(self, what: str, total: int, *, unit: str, done: int = 0, logger: logging.Logger,
                 terminal: bool | None = None, log_seconds: float | None = LOG_SECONDS, started: float | None = None,
                 device: torch.device | None = None, enabled: bool = True) -> None:
        self.what, self.total, self.unit, self.done, self.logger = what, total, unit, done, logger
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar = tqdm(total=total, initial=done, desc=what, unit=unit, mininterval=1.0, dynamic_ncols=True,
                        disable=not (enabled and terminal), leave=False)
        self.lines = enabled and not terminal
        self.log_seconds, self.device = log_seconds, device
        self.start = time.perf_counter() if started is None else started
        self.last = self.start
        self.start_done = done
        # while the bar is shown, log records are written above it (tqdm.write), never glued to it
        self._redirect = contextlib.ExitStack()
        if not self.bar.disable:
            self._redirect.enter_context(logging_redirect_tqdm())

    def update(self, count: int = 1, **values: object) -> None:
        """`count` more units done; `values` (e.g. loss="0.5") join the bar and the line."""
        self.done += count
        self.bar.update(count)
        if values:
            self.bar.set_postfix(values, refresh=False)
        if self.lines and self.log_seconds is not None:
            now = time.perf_counter()
            if now - self.last >= self.log_seconds or self.done == self.total:
                self.last = now
                self._log(now, values)

    def report(self, **values: object) -> None:
        """Show `values` now: on the bar, or as one log line."""
        self.bar.set_postfix(values, refresh=True)
        if self.lines:
            self.last = time.perf_counter()
            self._log(self.last, values)

    def _log(self, now: float, values: dict) -> None:
        rate = (self.done - self.start_done) / max(now - self.start, 1e-9)
        extra = "".join(f", {key} {value}" for key, value in {**values, **self._memory()}.items())
        self.logger.info("%s: %d of %d %s (%.0f%%), %.2f %s/s, %s left%s", self.what, self.done, self.total,
                         self.unit, 100.0 * self.done / max(self.total, 1), rate, self.unit,
                         duration(max(self.total - self.done, 0) / max(rate, 1e-9)), extra)

    def _memory(self) -> dict[str, str]:
        if self.device is None or self.device.type != "cuda":
            return {}
        return {"max_mem": f"{torch.cuda.max_memory_allocated(self.device) / 2 ** 20:.0f} MiB"}

    def close(self) -> None:
        self.bar.close()
        self._redirect.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def duration(seconds: float) -> str:
    """H:MM:SS."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
