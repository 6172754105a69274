"""run_import(cfg): released features into a resumable feature store, streamed in row blocks of bounded size."""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path

import numpy as np

from common.files import sha256_of_file
from common.progress import Progress
from features.attrs import normalize_attr
from features.importers.config import ImportConfig
from features.importers.layouts import ImportPlan, Part, plan_dataset, plan_folder, reference_tokens
from features.rows import contiguous_runs
from features.schema import CENTER_CROP_INDEX, IMPORT_ATTRS, ORIGIN_IMPORT
from features.store import FeatureStoreWriter

logger = logging.getLogger(__name__)


def make_plan(cfg: ImportConfig) -> ImportPlan:
    """The plan of a folder (VSE++ / SCAN) or of a dataset file plus a matrix; headers read, no feature rows."""
    source = Path(cfg.source)
    if source.is_dir():
        if cfg.dataset or cfg.layout == "dataset":
            raise ValueError(f"--source {cfg.source} is a precomp folder, whose caption files list its images; "
                             "drop --dataset (it goes with a .npy / .npz matrix)")
        if cfg.array_key:
            raise ValueError("--array-key names an array of an .npz --source; a folder's arrays are {split}_ims.npy")
        return plan_folder(source, splits=cfg.splits, layout=cfg.layout, set_kind=cfg.set_kind,
                           captions_per_image=cfg.captions_per_image)
    if not source.exists():
        raise FileNotFoundError(f"--source {cfg.source!r} does not exist; pass a precomp folder or a .npy / .npz file")
    if not cfg.dataset:
        raise ValueError(f"--source {cfg.source} is a matrix: pass --dataset, the Karpathy JSON or TSV whose images "
                         "its rows follow")
    if cfg.layout not in ("auto", "dataset"):
        raise ValueError(f"--layout {cfg.layout} reads a precomp folder, but --source {cfg.source} is a file")
    folder_only = {"splits": ImportConfig.splits, "captions_per_image": ImportConfig.captions_per_image}
    changed = [name for name, default in folder_only.items() if getattr(cfg, name) != default]
    if changed:
        raise ValueError(f"--{changed[0].replace('_', '-')} applies to a precomp folder; with a matrix --source the "
                         f"dataset {cfg.dataset} gives the splits and captions: drop it")
    return plan_dataset(source, dataset_path=cfg.dataset, dataset_format=cfg.dataset_format,
                        array_key=cfg.array_key, set_kind=cfg.set_kind)


def import_attrs(cfg: ImportConfig, plan: ImportPlan, hashes: list[str]) -> dict:
    """Root attributes of an imported store: its sources and layout; no CNN made these features, so the CNN
    attributes are empty (backbone "none") and finetune refuses the store."""
    return {"backbone": "none", "layer": "", "weights_name": "", "weights_sha256": "", "weights_seed": None,
            "resize": None, "crop": None, "mean": None, "std": None, "decode": "",
            "crops": {"1c": 1, "10c": plan.set_size, "regions": 0}[plan.kind], "dtype": cfg.dtype,
            "origin": ORIGIN_IMPORT, "source_files": [str(path.resolve()) for path in plan.source_files],
            "source_sha256": hashes, "source_layout": plan.description, "command": " ".join(sys.argv),
            "image_root": str(Path(cfg.image_root).resolve()) if cfg.image_root else "",
            "dataset_path": str(Path(cfg.dataset).resolve()) if cfg.dataset else ""}


def _hash_sources(plan: ImportPlan) -> list[str]:
    start = time.perf_counter()
    hashes = [sha256_of_file(path) for path in plan.source_files]
    size = sum(path.stat().st_size for path in plan.source_files)
    logger.info("sha256 of %d source files (%.1f MB) in %.1f s", len(hashes), size / 1e6, time.perf_counter() - start)
    return hashes


def _open_store(cfg: ImportConfig, plan: ImportPlan, attrs: dict) -> FeatureStoreWriter:
    """Create the store, or reopen it to resume when it was imported from the same files with the same options."""
    out = Path(cfg.out)
    if not (out.exists() and not cfg.overwrite):
        dataset = plan.dataset
        if plan.reference_tokens:
            start = time.perf_counter()
            dataset = dataclasses.replace(dataset, caption_tokens=[reference_tokens(text)
                                                                   for text in dataset.caption_texts])
            logger.info("tokenized %d captions as the reference does in %.1f s", dataset.num_captions,
                        time.perf_counter() - start)
        return FeatureStoreWriter.create(out, dataset, attrs=attrs, feature_dim=plan.feature_dim,
                                         crops=attrs["crops"], dtype=cfg.dtype, replace=cfg.overwrite,
                                         regions=plan.set_size if plan.kind == "regions" else 0)
    writer = FeatureStoreWriter.open_existing(out, expected_attrs=attrs, dataset=plan.dataset)
    try:
        differing = [key for key in IMPORT_ATTRS if writer.attrs.get(key) != normalize_attr(key, attrs[key])]
        if writer.feature_dim != plan.feature_dim or writer.regions != (plan.set_size if plan.kind == "regions" else 0):
            differing.append("feature shape")
        if differing:
            raise ValueError(f"{out} was not imported from these files with these options (differs in "
                             f"{', '.join(differing)}); pass --overwrite to replace it, or use another --out")
        writer.reserve_space()  # the rows still pending, as extract's resume does (StoreSpaceError when short)
    except BaseException:
        writer.close()
        raise
    return writer


def checked_block(block: np.ndarray, *, part: Part, first_row: int, dtype: str) -> np.ndarray:
    """Source rows [n * k, ...] (k = part.rows_per_image, from array row `first_row`) -> image rows [n, ...] in
    `dtype`; ValueError naming the first row holding NaN or Inf, the first image whose k rows differ, or the first
    row beyond the range of `dtype`."""
    label, k = part.array.label, part.rows_per_image
    flat = block.reshape(len(block), -1)
    finite = np.isfinite(flat).all(axis=1)
    if not finite.all():
        bad = first_row + int(np.argmin(finite))
        raise ValueError(f"{label}: row {bad} holds NaN or Inf; the file is damaged: download it again, or drop "
                         "that image from every file of the split")
    if k > 1:
        grouped = np.ascontiguousarray(flat).view(np.uint8).reshape(len(block) // k, k, -1)
        differing = (grouped != grouped[:, :1]).any(axis=(1, 2))
        if differing.any():
            row = first_row + int(np.argmax(differing)) * k
            raise ValueError(f"{label}: rows {row}..{row + k - 1} should repeat one image (one row per caption, {k} "
                             "per image) but differ; pass the right --captions-per-image, or the file is not that "
                             "layout")
        block = block[::k]
    if block.dtype == np.dtype(dtype):  # finite rows stay finite: nothing to cast or check again
        return block
    with np.errstate(over="ignore"):  # an overflow is reported just below, naming the row
        values = block.astype(dtype)
    finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if not finite.all():
        bad = first_row + int(np.argmin(finite)) * k
        raise ValueError(f"{label}: row {bad} holds values beyond the range of {dtype}; import with --dtype float32")
    return values


def _write(writer: FeatureStoreWriter, kind: str, rows: np.ndarray, values: np.ndarray) -> None:
    if kind == "regions":
        writer.write_rows(rows, None, None, regions=values)
    elif kind == "10c":
        writer.write_rows(rows, values[:, CENTER_CROP_INDEX], values)
    else:
        writer.write_rows(rows, values, None)


def _fill(cfg: ImportConfig, plan: ImportPlan, writer: FeatureStoreWriter) -> int:
    """Write every pending image row, one block of source rows at a time; return the number of blocks written."""
    pending = writer.pending_indices()
    blocks = 0
    counts = writer.summary()
    with Progress("import", counts["total"], unit="img", done=counts["done"], logger=logger) as progress:
        for part in plan.parts:
            row_bytes = part.array.dtype.itemsize * int(np.prod(part.array.shape[1:])) * part.rows_per_image
            block_images = max(1, int(cfg.block_mb * 2**20) // row_bytes)
            rows = pending[(pending >= part.first_image) & (pending < part.first_image + part.num_images)]
            for begin, end in contiguous_runs(rows):
                for start in range(begin, end, block_images):
                    if cfg.max_blocks is not None and blocks >= cfg.max_blocks:
                        logger.info("stopped after %d blocks (max_blocks); rerun the same command to finish", blocks)
                        return blocks
                    images = rows[start:min(start + block_images, end)]
                    first = int(images[0] - part.first_image) * part.rows_per_image
                    block = part.array.read(first, first + len(images) * part.rows_per_image)
                    _write(writer, plan.kind, images, checked_block(block, part=part, first_row=first, dtype=cfg.dtype))
                    blocks += 1
                    progress.update(len(images))
    return blocks


def run_import(cfg: ImportConfig) -> dict:
    """Import released features into cfg.out and return a summary dict (store, done, pending, total, blocks,
    seconds, kind, layout).

    Every check that needs no feature row (files, shapes, caption and id counts, dtypes, a pickled array) runs
    before the store is created. Rerunning the same command resumes a stopped import (done rows are kept); a
    damaged source row found while streaming (NaN or Inf, repeated rows that differ) removes the store, which
    could never be completed from these files.
    """
    cfg.validate()
    out = Path(cfg.out)
    if not out.resolve().parent.is_dir():
        raise FileNotFoundError(f"output folder of {cfg.out!r} does not exist; create it first")
    plan = make_plan(cfg)
    try:
        attrs = import_attrs(cfg, plan, _hash_sources(plan))
        writer = _open_store(cfg, plan, attrs)
        start = time.perf_counter()
        try:
            with writer:
                blocks = _fill(cfg, plan, writer)
                counts = writer.summary()
        except ValueError as err:  # a damaged source row: these files can never complete the store
            out.unlink(missing_ok=True)
            raise ValueError(f"{err} (the store begun, {out}, was removed)") from err
    finally:
        plan.close()
    seconds = time.perf_counter() - start
    logger.info("imported %s: %d of %d images done, %d pending (%s); %s", out, counts["done"], counts["total"],
                counts["pending"], plan.kind, plan.description)
    return {"store": str(out), "done": counts["done"], "pending": counts["pending"], "total": counts["total"],
            "blocks": blocks, "seconds": seconds, "kind": plan.kind, "layout": plan.layout}
