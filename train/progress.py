"""What a run shows and keeps while it trains: metrics.jsonl, progress (a bar on terminals, log lines elsewhere),
and a Ctrl-C that waits for the end of the step."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from common.files import atomic_write_text
from common.progress import duration

logger = logging.getLogger(__name__)

RUNNING_LOSS_DECAY = 0.9  # exponential moving average of the loss shown in progress


class MetricsLog:
    """metrics.jsonl of a run: one JSON object per line ("step" and "val" events), written by rank 0 only.

    `mirror` (e.g. train.tensorboard.TensorBoardScalars) gets every record too, and the resume's purge.
    """

    def __init__(self, path: Path, *, enabled: bool = True, mirror: object | None = None) -> None:
        self.path, self.enabled = path, enabled
        self.mirror = mirror if enabled else None

    def append(self, record: dict) -> None:
        """Add one line (flushed at once: a crash loses no line that was written)."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as metrics_file:
            metrics_file.write(json.dumps(record) + "\n")
        if self.mirror is not None:
            self.mirror.write(record)

    def close(self) -> None:
        """Close the mirror (metrics.jsonl itself is closed after every line)."""
        if self.mirror is not None:
            self.mirror.close()

    def truncate_after(self, step: int) -> int:
        """Drop the lines of steps after `step` (written after the checkpoint a run resumes from, and about to
        be written again); return how many were dropped. A resumed run's file then equals an uninterrupted one's."""
        if self.mirror is not None:
            self.mirror.purge_after(step)
        if not self.enabled or not self.path.is_file():
            return 0
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        if len(kept) != len(lines):
            atomic_write_text(self.path, "".join(kept))
        return len(lines) - len(kept)


class ProgressReport:
    """Progress of one epoch: a tqdm bar on a terminal; elsewhere (a log file, a job) one log line every `every`
    steps with step/total, loss, steps/s and ETA, as torchvision's MetricLogger prints."""

    def __init__(self, *, epoch: int, total: int, done: int, every: int, enabled: bool,
                 terminal: bool | None = None) -> None:
        self.epoch, self.total, self.done, self.every = epoch, total, done, max(every, 1)
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar = tqdm(total=total, initial=done, desc=f"epoch {epoch}", unit="step", dynamic_ncols=True,
                        disable=not (enabled and terminal), leave=False)
        self.lines = enabled and not terminal
        self.start, self.start_done = time.perf_counter(), done
        self.running_loss: float | None = None

    def update(self, loss: float) -> None:
        """One more step done with this loss."""
        self.done += 1
        self.running_loss = loss if self.running_loss is None else (
            RUNNING_LOSS_DECAY * self.running_loss + (1 - RUNNING_LOSS_DECAY) * loss)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{self.running_loss:.4g}", refresh=False)
        if self.lines and (self.done % self.every == 0 or self.done == self.total):
            elapsed = time.perf_counter() - self.start
            rate = (self.done - self.start_done) / max(elapsed, 1e-9)
            eta = (self.total - self.done) / max(rate, 1e-9)
            logger.info("epoch %d  step %d/%d  loss %.4g  %.2f steps/s  eta %s", self.epoch, self.done, self.total,
                        self.running_loss, rate, duration(eta))

    def close(self) -> None:
        self.bar.close()


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[dict]:
    """Turn the first Ctrl-C into a flag checked at step boundaries (a second one interrupts at once)."""
    state = {"requested": False}
    if threading.current_thread() is not threading.main_thread():
        yield state  # signal handlers can only be installed from the main thread
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: object) -> None:
        if state["requested"]:
            raise KeyboardInterrupt
        state["requested"] = True
        logger.warning("interrupt requested: saving last.pt after the current step (Ctrl-C again to abort now)")

    signal.signal(signal.SIGINT, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)
