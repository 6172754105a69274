"""The run folder that train and finetune write and every later stage reads: file names, creation, resume checks."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"  # the resolved stage config
VOCAB_FILE = "vocab.json"
METRICS_FILE = "metrics.jsonl"  # one JSON object per logged step and per validation
LAST, BEST = "last.pt", "best.pt"  # checkpoints: the latest state, and the best validation rsum

# Options a resume may change; every other field must equal the checkpoint's (same run, same result).
RESUME_MUTABLE_FIELDS = ("resume", "out_dir", "store", "epochs", "max_steps", "val_every_steps", "log_every",
                         "workers", "device", "overwrite", "tensorboard")


def check_run_dir(out_dir: Path, *, resume: str, overwrite: bool) -> None:
    """Refuse (ValueError) to start a fresh run over another run's checkpoints unless `overwrite`.

    A fresh start in a folder that holds last.pt/best.pt would silently replace a finished run, so it is an
    error naming the fix. Reads only: every rank of a distributed run checks, rank 0 alone prepares.
    """
    if resume:
        return
    existing = [name for name in (LAST, BEST) if (out_dir / name).exists()]
    if existing and not overwrite:
        resumable = out_dir / (LAST if LAST in existing else BEST)  # best.pt alone: stopped in the first last.pt save
        raise ValueError(f"{out_dir} already holds a run ({', '.join(existing)}); pass --resume {resumable} to "
                         "continue it, --overwrite to replace it, or another --out-dir")


def prepare_run_dir(out_dir: Path, *, resume: str, overwrite: bool) -> None:
    """check_run_dir, then create out_dir; a fresh run removes an earlier run's checkpoints and metrics
    (allowed by `overwrite`), so the folder never mixes two runs. A resume keeps everything."""
    check_run_dir(out_dir, resume=resume, overwrite=overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    if resume:
        return
    for name in (LAST, BEST, METRICS_FILE):
        if (out_dir / name).exists():
            logger.warning("removing %s from an earlier run in %s", name, out_dir)
            (out_dir / name).unlink()


def check_resume_config(cfg: Any, saved: dict, path: str, *,
                        mutable: Collection[str] = RESUME_MUTABLE_FIELDS) -> None:
    """A resume must use the configuration it was started with, apart from the `mutable` fields.

    `cfg` is a TrainConfig or FinetuneConfig; the saved dict is rebuilt as type(cfg).
    """
    saved_cfg = type(cfg).from_dict(saved, source=f"the config inside {path}")
    differing = [f.name for f in dataclasses.fields(cfg) if f.name not in mutable
                 and getattr(cfg, f.name) != getattr(saved_cfg, f.name)]
    if differing:
        details = ", ".join(f"{name}: {getattr(saved_cfg, name)!r} -> {getattr(cfg, name)!r}" for name in differing)
        raise ValueError(f"--resume {path}: options differ from the checkpoint's ({details}); resume with the "
                         "same options or start a new run without --resume")


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Delete the temporary files a crash left while writing this run's files (`last.pt.<random>.tmp`, written
    by common.files.atomic_write, up to a checkpoint's size each); return them."""
    stale = sorted(path for name in (LAST, BEST, CONFIG_FILE, VOCAB_FILE) for path in out_dir.glob(f"{name}.*.tmp"))
    for path in stale:
        logger.warning("removing %s, left by an interrupted write", path)
        path.unlink(missing_ok=True)
    return stale
