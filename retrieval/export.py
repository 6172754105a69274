"""The export stage: a checkpoint -> a weights-only model file (no optimizer, RNG or scaler) that loads like one."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.config import StageConfig
from common.files import atomic_write
from extract.weights import sha256_of_file
from retrieval.model import MODEL_FILE_FORMAT, MODEL_FILE_VERSION, model_from_checkpoint, read_model_file

logger = logging.getLogger(__name__)


@dataclass
class ExportConfig(StageConfig):
    """Options of the export stage."""

    checkpoint: str = field(default="", metadata={"help": "train or finetune checkpoint (best.pt / last.pt)",
                                                  "required": True})
    out: str = field(default="", metadata={"help": "the model file to write (e.g. model.pt)", "required": True})

    def validate(self) -> None:
        """Required fields, and an output that is not the checkpoint itself (ValueError)."""
        super().validate()
        if Path(self.out).resolve() == Path(self.checkpoint).resolve():
            raise ValueError(f"--out {self.out} is the checkpoint itself; write the model file elsewhere")


def model_file(checkpoint: dict, *, source_path: str | Path) -> dict:
    """The exported dict of a checkpoint dict: model and loss state, config, vocabulary, model_spec, provenance."""
    return {"format": MODEL_FILE_FORMAT, "format_version": MODEL_FILE_VERSION, "kind": checkpoint["kind"],
            "model": checkpoint["model"], "loss": checkpoint["loss"], "vocab": checkpoint["vocab"],
            "config": checkpoint["config"], "model_spec": checkpoint["model_spec"], "data": checkpoint.get("data"),
            "source": {"checkpoint": str(source_path), "sha256": sha256_of_file(source_path),
                       **{key: checkpoint[key] for key in ("epoch", "step", "best_rsum") if key in checkpoint}}}


def run_export(cfg: ExportConfig) -> dict:
    """Write cfg.out (atomically) from cfg.checkpoint; the model is rebuilt first, so a file that would not load
    is never written. Returns {out, kind, bytes, checkpoint_bytes}."""
    cfg.validate()
    checkpoint = read_model_file(cfg.checkpoint)
    model_from_checkpoint(checkpoint)  # refuses an unknown kind or weights that do not fit, before writing
    out = Path(cfg.out)
    if not out.resolve().parent.is_dir():
        raise FileNotFoundError(f"output folder of {cfg.out!r} does not exist; create it first")
    payload = model_file(checkpoint, source_path=cfg.checkpoint)
    atomic_write(out, lambda handle: torch.save(payload, handle), durable=True)
    summary = {"out": str(out), "kind": checkpoint["kind"], "bytes": out.stat().st_size,
               "checkpoint_bytes": Path(cfg.checkpoint).stat().st_size}
    logger.info("exported the %s model of %s to %s: %.1f MB (the checkpoint: %.1f MB)", summary["kind"],
                cfg.checkpoint, out, summary["bytes"] / 1e6, summary["checkpoint_bytes"] / 1e6)
    return summary
