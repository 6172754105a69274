"""`ablate` stage: train and test every cell of the grid, resumably, and write one results table."""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from ablation.config import IMAGE_FEATURES, AblationConfig, Cell, plan_grid
from common.files import atomic_write_json, atomic_write_text
from features.reader import FeatureStore
from retrieval.evaluate import EvalConfig, run_eval
from train.data import store_kind
from train.preflight import check_store
from train.run import run_train
from train.run_dir import CONFIG_FILE, LAST

logger = logging.getLogger(__name__)

PROTOCOL = "all-images"  # any test split size; the COCO/F30K protocols need their exact image counts
RESULT_FILE = "ablation-result.json"  # per run folder; its presence marks the run complete
SECONDS_FILE = "ablation-seconds.json"  # per run folder; wall-clock summed over sessions (resumes)
METRIC_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum", "i2t_medr", "t2i_medr")


def _comparable(config: dict) -> dict:
    """A saved TrainConfig dict with the fields that may differ between sessions of one run blanked."""
    return {**config, "resume": ""}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def check_cells(cfg: AblationConfig, cells: list[Cell]) -> dict:
    """Fail before any run on a cell the store or earlier results cannot serve; return the store's attrs."""
    if "lseh" in cfg.losses:
        try:
            importlib.import_module("train.losses.semantic")  # scikit-learn and snowballstemmer
        except ImportError as err:
            raise ValueError(f"cells lseh_*: LSEH needs {err.name}; install it or drop lseh from --losses") from err
    with FeatureStore(cfg.store) as store:  # FileNotFoundError names the path
        fitting = [name for name, (mode, _) in IMAGE_FEATURES.items() if store_kind(mode) in store.feature_kinds]
        for cell in cells:
            if cell.image_features not in fitting:
                raise ValueError(f"cell {cell.name}: image features {cell.image_features} need "
                                 f"{store_kind(IMAGE_FEATURES[cell.image_features][0])} features, but {cfg.store} "
                                 f"holds {', '.join(store.feature_kinds)} ({store.describe()}); use --image-features "
                                 f"{','.join(fitting)}")
            try:
                cell.train_config.validate()
                check_store(cell.train_config, store)
            except ValueError as err:
                raise ValueError(f"cell {cell.name}: {err}") from err
        store.require_complete([cfg.split])
        if len(store.image_indices([cfg.split])) == 0:
            raise ValueError(f"{cfg.store} has no extracted images in split {cfg.split!r}; pick another --split")
        attrs = dict(store.attrs)
    for cell in cells:
        _check_previous_session(cell, split=cfg.split)
    return attrs


def _check_previous_session(cell: Cell, *, split: str) -> None:
    """A run folder left by an earlier session must hold a run of exactly this cell's config (and test split)."""
    planned = _comparable(cell.train_config.to_dict())
    result_path, config_path = cell.out_dir / RESULT_FILE, cell.out_dir / CONFIG_FILE
    saved = None
    if result_path.is_file():
        result = _read_json(result_path)
        if result["split"] != split:
            raise ValueError(f"cell {cell.name}: {result_path} was tested on split {result['split']!r}, not "
                             f"{split!r}; use a new --out-dir, or delete that file to re-test the cell")
        saved = result["config"]
    elif config_path.is_file():
        saved = _read_json(config_path)
    if saved is None or _comparable(saved) == planned:
        return
    changed = ", ".join(f"{key}: {saved.get(key)!r} -> {planned.get(key)!r}" for key in sorted(planned)
                        if saved.get(key) != planned.get(key))
    raise ValueError(f"cell {cell.name}: {cell.out_dir} holds a run with other options ({changed}); use a new "
                     "--out-dir, or delete that folder to redo the cell")


def run_cell(cell: Cell, *, split: str) -> dict:
    """Train one cell (resuming from its last.pt if an earlier session stopped), test its best.pt; a result row."""
    train_config = cell.train_config
    last = cell.out_dir / LAST
    if last.is_file():
        logger.info("cell %s: resuming the interrupted run from %s", cell.name, last)
        train_config = dataclasses.replace(train_config, resume=str(last))
    elif (cell.out_dir / CONFIG_FILE).is_file():
        logger.warning("cell %s: an earlier session stopped before its first checkpoint; starting again (its "
                       "metrics.jsonl keeps the lines of that attempt)", cell.name)
    seconds_path = cell.out_dir / SECONDS_FILE
    spent = _read_json(seconds_path) if seconds_path.is_file() else {"seconds": 0.0, "sessions": 0}
    start = time.perf_counter()
    try:
        summary = run_train(train_config)
        results = run_eval(EvalConfig(checkpoint=summary["best"], store=train_config.store, split=split,
                                      protocol=PROTOCOL, out=str(cell.out_dir / f"eval-{split}.json"),
                                      device=train_config.device))
    finally:  # an interrupted session's time still counts towards the run
        cell.out_dir.mkdir(parents=True, exist_ok=True)
        spent = {"seconds": spent["seconds"] + time.perf_counter() - start, "sessions": spent["sessions"] + 1}
        atomic_write_json(seconds_path, spent)
    scores = results["protocols"][PROTOCOL]
    row = {"name": cell.name, "loss": cell.loss, "image_features": cell.image_features, "text_pool": cell.text_pool,
           "split": split, **{key: scores[key] for key in METRIC_KEYS}, "num_test_images": scores["num_images"],
           "best_val_rsum": summary["best_rsum"], "steps": summary["step"], "seconds": spent["seconds"],
           "sessions": spent["sessions"], "out_dir": str(cell.out_dir), "config": cell.train_config.to_dict()}
    atomic_write_json(cell.out_dir / RESULT_FILE, row)
    return row


def machine_header(cfg: AblationConfig, store_attrs: dict) -> dict:
    """What the table's numbers depend on besides the cells: store, budget, machine, versions."""
    return {"store": cfg.store, "backbone": store_attrs.get("backbone"), "crops": store_attrs.get("crops"),
            "regions": store_attrs.get("regions", 0), "seed": cfg.seed, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "max_steps": cfg.max_steps,
            "embed_dim": cfg.embed_dim, "word_dim": cfg.word_dim, "lr": cfg.lr, "split": cfg.split,
            "protocol": PROTOCOL, "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def format_markdown(header: dict, rows: list[dict]) -> str:
    """The ablation report: a header list, then one table row per run in grid order."""
    lines = ["# Ablation", "",
             f"- store: `{header['store']}` (backbone {header['backbone']}, crops {header['crops']})",
             f"- budget: seed {header['seed']}, {header['epochs']} epochs, batch size {header['batch_size']}, "
             f"max steps {header['max_steps'] or 'none'}, embed dim {header['embed_dim']}, word dim "
             f"{header['word_dim']}, lr {header['lr']:g}",
             f"- test: split {header['split']}, protocol {header['protocol']}; val rsum selects best.pt",
             f"- machine: {header['processor']}, {header['cpu_count']} CPUs ({header['torch_threads']} torch "
             f"threads), torch {header['torch_version']}, Python {header['python_version']}",
             f"- written: {header['written']}", "",
             "| run | loss | image | text | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | rsum "
             "| val rsum | seconds |",
             "|---|---|---|---|" + "---:|" * 9]
    for row in rows:
        numbers = " | ".join(f"{row[key]:.1f}" for key in METRIC_KEYS[:7])
        lines.append(f"| {row['name']} | {row['loss']} | {row['image_features']} | {row['text_pool']} | {numbers} "
                     f"| {row['best_val_rsum']:.1f} | {row['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def write_report(cfg: AblationConfig, header: dict, rows: list[dict]) -> str:
    """Write ablation.md and ablation.json (atomically) into out_dir; return the Markdown."""
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = format_markdown(header, rows)
    atomic_write_text(out_dir / "ablation.md", markdown)
    atomic_write_json(out_dir / "ablation.json", {"header": header, "ablation_config": cfg.to_dict(),
                                                   "runs": rows})
    return markdown


def run_ablation(cfg: AblationConfig) -> dict:
    """Run every cell of the grid (skipping cells finished by an earlier session), write and print the table."""
    cfg.validate()
    cells = plan_grid(cfg)
    store_attrs = check_cells(cfg, cells)  # every check before the first run
    header = machine_header(cfg, store_attrs)
    logger.info("ablation grid of %d runs into %s: %s", len(cells), cfg.out_dir, ", ".join(c.name for c in cells))
    rows, reused = [], []
    for number, cell in enumerate(cells, start=1):
        result_path = cell.out_dir / RESULT_FILE
        if result_path.is_file():  # its config was checked to match in check_cells
            logger.info("run %d/%d %s: skipped, result of an earlier session found in %s", number, len(cells),
                        cell.name, result_path)
            rows.append(_read_json(result_path))
            reused.append(cell.name)
        else:
            logger.info("run %d/%d %s", number, len(cells), cell.name)
            rows.append(run_cell(cell, split=cfg.split))
        write_report(cfg, header, rows)  # a table of the finished runs survives an interrupt
    if reused:
        logger.info("resumed the grid: %d of %d runs reused from an earlier session (%s)", len(reused), len(cells),
                    ", ".join(reused))
    markdown = write_report(cfg, header, rows)
    print(markdown, flush=True)
    out_dir = Path(cfg.out_dir)
    return {"runs": rows, "reused": reused, "markdown": str(out_dir / "ablation.md"),
            "json": str(out_dir / "ablation.json")}
