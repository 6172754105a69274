"""TensorBoard mirror of metrics.jsonl (`--tensorboard`): the same scalars, for people who live in TensorBoard."""

from __future__ import annotations

import importlib.util
import logging
import numbers
from pathlib import Path

logger = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"  # inside the run folder: `tensorboard --logdir RUN/tensorboard`
# metrics.jsonl event -> TensorBoard tag prefix ("step" lines are training scalars, "val" lines validation)
TAG_PREFIXES = {"step": "train", "val": "val"}
NOT_SCALARS = ("event", "step", "epoch")  # the record's position, not a measured value


def check_tensorboard_installed() -> None:
    """ValueError naming the fix when the optional tensorboard package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ValueError("--tensorboard needs the tensorboard package (optional): pip install tensorboard")


class TensorBoardScalars:
    """Writes each metrics.jsonl record as scalars at its step ("train/loss", "val/rsum", ...).

    The event file is opened at the first record, so a resumed run first calls purge_after(step): TensorBoard
    then drops the points written after the checkpoint, as metrics.jsonl drops its lines.
    """

    def __init__(self, log_dir: str | Path) -> None:
        check_tensorboard_installed()
        self.log_dir = Path(log_dir)
        self.purge_step: int | None = None
        self.writer = None

    def purge_after(self, step: int) -> None:
        """Points after `step` are replaced by the resumed run (only before the first record of this session)."""
        if self.writer is None:
            self.purge_step = step + 1

    def write(self, record: dict) -> None:
        """Every numeric value of a "step" or "val" record as a scalar at record["step"]; flushed at once."""
        prefix = TAG_PREFIXES.get(record.get("event"))
        if prefix is None:
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter  # optional dependency: imported only when used

            self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=self.purge_step)
            logger.info("TensorBoard scalars in %s (tensorboard --logdir %s)", self.log_dir, self.log_dir)
        for key, value in record.items():
            if key not in NOT_SCALARS and isinstance(value, numbers.Real) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}/{key}", float(value), global_step=int(record["step"]))
        self.writer.flush()  # a crash or Ctrl-C loses nothing metrics.jsonl kept

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
