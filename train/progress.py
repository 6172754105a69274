"""What a run keeps while it trains: metrics.jsonl, the steps since the last log line (read from the device only
then), and a Ctrl-C that waits for the end of the step. The progress shown is common.progress.Progress."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from common.files import atomic_write_text

logger = logging.getLogger(__name__)



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


class StepWindow:
    """The steps since the last log line. Losses and gradient norms stay on the device as the steps add them;
    `read` takes them to the host at once (one wait per log line, none per step) and starts a new window."""

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.grad_norms: list[torch.Tensor] = []
        self.places: list[tuple[int, int]] = []  # (epoch, step) of each loss
        self.captions, self.data_s, self.step_s = 0, 0.0, 0.0
        self.logs: dict[str, float | torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.losses)

    def add(self, loss: torch.Tensor, *, grad_norm: torch.Tensor | None, logs: dict, place: tuple[int, int],
            captions: int, data_s: float, step_s: float) -> None:
        """One step: its loss and gradient norm (0-dim tensors), its loss's logs, where it ran, its captions, and
        the seconds spent waiting for its batch (data_s) and running it (step_s)."""
        self.losses.append(loss.detach())
        if grad_norm is not None:
            self.grad_norms.append(grad_norm.detach())
        self.places.append(place)
        self.logs = logs
        self.captions += captions
        self.data_s += data_s
        self.step_s += step_s

    def check(self) -> None:
        """FloatingPointError naming the first step of the window whose loss is not finite (one wait for the
        device); the trainer checks before every log line, validation and save."""
        if self.losses:
            self._host_losses()

    def _host_losses(self) -> torch.Tensor:
        losses = torch.stack(self.losses).cpu()
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            epoch, step = self.places[int(bad[0])]
            raise FloatingPointError(f"loss is {losses[int(bad[0])].item()} at epoch {epoch}, step {step}; lower "
                                     "--lr or check the features for NaN")
        return losses

    def read(self) -> dict:
        """The window on the host: loss (the last step's), loss_mean over its window_steps, grad_norm (the mean
        of what clipping returned, when it clips), data_s and step_s (per step), captions, the losses' logs as
        numbers; then empty. Raises as `check` does."""
        losses = self._host_losses()
        steps = len(self.losses)
        record = {"loss": losses[-1].item(), "loss_mean": losses.double().mean().item(), "window_steps": steps,
                  "captions": self.captions,
                  "data_s": self.data_s / steps, "step_s": self.step_s / steps,
                  **{key: value if isinstance(value, (int, float)) else float(value)
                     for key, value in self.logs.items()}}
        if self.grad_norms:
            record["grad_norm"] = torch.stack(self.grad_norms).double().mean().item()
        self._clear()
        return record


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
