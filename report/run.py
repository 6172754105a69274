"""`pipeline.py report`: a run folder -> RUN/report/index.html with its PNGs, a folder that opens from disk."""

from __future__ import annotations

import logging
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from common.files import atomic_write_text
from eval.metrics import chance_curve, metrics_from_ranks
from features.reader import FeatureStore
from report.collect import Curves, find_ablation, read_ablation, read_config, read_curves
from report.config import ReportConfig
from report.examples import SplitRetrievals, recall_curve
from report.page import ReportPage
from report.thumbs import Thumbnails
from retrieval.api import VSE
from train.losses.similarity import similarity_function

logger = logging.getLogger(__name__)

INDEX = "index.html"
TRAINING_PNG, RECALL_PNG, ABLATION_PNG = "training.png", "recall_at_k.png", "ablation.png"
LOSS_NAMES = {"sh": "SH (sum of hinges)", "mh": "MH (max of hinges)", "group": "group of hard negatives",
              "infonce": "InfoNCE"}


def loss_title(config: dict) -> str:
    """The loss curve's title: which loss."""
    name = config.get("loss", "")
    if name == "mh" and config.get("warmup_epochs"):
        return f"Training loss: SH for {config['warmup_epochs']} epochs, then MH"
    return f"Training loss: {LOSS_NAMES.get(name, name or 'loss')}"


def summed_over(config: dict) -> int | None:
    """The batch size a logged loss is summed over (SH/MH with reduction sum), None when it is a mean."""
    summed = config.get("loss") in ("sh", "mh") and config.get("reduction", "sum") == "sum"
    return int(config["batch_size"]) if summed and config.get("batch_size") else None


def warmup_end(curves: Curves, config: dict) -> float | None:
    """The step where MH takes over from the SH warm-up: the validation that ends epoch warmup_epochs - 1."""
    epochs = config.get("warmup_epochs", 0)
    if config.get("loss") != "mh" or not epochs:
        return None
    steps = [step for step, epoch in zip(curves.val.get("step", []), curves.val.get("epoch", [])) if epoch == epochs]
    return min(steps) if steps else None


def training_note(curves: Curves, config: dict) -> str:
    """One line on what the curves hold."""
    if curves.empty:
        return "metrics.jsonl holds no training or validation line yet."
    steps, vals = len(curves.step.get("step", [])), len(curves.val.get("step", []))
    note = (f"{steps} training line{'s' * (steps != 1)} (every {config.get('log_every', '?')} steps) and {vals} "
            f"validation{'s' * (vals != 1)}")
    rsum = np.asarray(curves.val.get("rsum", ()), dtype=float)
    if np.isfinite(rsum).any():
        best = int(np.argmax(np.where(np.isfinite(rsum), rsum, -np.inf)))
        note += f"; best validation rsum {rsum[best]:.1f} at step {int(curves.val['step'][best])}"
    elif vals:
        note += "; no validation rsum is a finite number"
    if curves.skipped:
        note += f"; {sum(curves.skipped.values())} unreadable line(s) of metrics.jsonl skipped (see the log)"
    return note + "."


def image_root_of(cfg: ReportConfig, vse: VSE) -> Path:
    """Where the split's raw images are: --image-root, the fine-tune run's, else the store's attribute."""
    root = cfg.image_root or getattr(vse.config, "image_root", "")
    if not root:
        with FeatureStore(cfg.store or vse.store) as store:
            root = store.attrs.get("image_root", "")
    return Path(root)


def retrieval_panels(cfg: ReportConfig, page: ReportPage, out: Path) -> Thumbnails:
    """Embed the split with the checkpoint, then the Recall@K curve and the example queries; the thumbnails
    are made as the page links them."""
    from report.plots import plot_recall_at_k  # matplotlib: imported when a report is drawn, not by every command

    vse = VSE.load(cfg.checkpoint_path, device=cfg.device, store=cfg.store or None, batch_size=cfg.batch_size,
                   workers=cfg.workers)
    split = vse.encode_split(cfg.split, store=cfg.store or None, image_root=cfg.image_root or None)
    retrievals = SplitRetrievals(split.image_emb, split.caption_emb, split.caption_image_index,
                                 sim_fn=similarity_function(vse.similarity_name))
    num_images, num_captions = retrievals.num_images, retrievals.num_captions
    ks = np.arange(1, cfg.max_k + 1)
    chance_i2t, chance_t2i = chance_curve(np.bincount(split.caption_image_index, minlength=num_images), ks=ks)
    plot_recall_at_k(out / RECALL_PNG, ks=ks, i2t=recall_curve(retrievals.i2t_ranks, ks=ks),
                     t2i=recall_curve(retrievals.t2i_ranks, ks=ks), chance_i2t=chance_i2t, chance_t2i=chance_t2i,
                     title=f"Recall@K on the {cfg.split} split ({num_images} images, {num_captions} captions)")
    page.recall_png = RECALL_PNG
    page.summary = [(f"{vse.kind} model", metrics_from_ranks(retrievals.i2t_ranks, retrievals.t2i_ranks,
                                                             ks=(1, 5, 10))),
                    ("chance", {f"{d}_r{k}": float(curve[k - 1]) for d, curve in (("i2t", chance_i2t),
                                                                                  ("t2i", chance_t2i))
                                for k in (1, 5, 10) if k <= cfg.max_k})]
    page.sampled_captions, page.sampled_images = retrievals.sampled(cfg.examples, k=cfg.top_k, seed=cfg.seed)
    page.worst_captions, page.worst_images = retrievals.worst(cfg.examples, k=cfg.top_k)
    page.image_labels, page.caption_texts = split.image_paths, split.caption_texts
    thumbs = Thumbnails(out, image_root=image_root_of(cfg, vse), image_paths=split.image_paths, size=cfg.thumb_size)
    page.thumb = thumbs.src
    checkpoint = vse.loaded.checkpoint
    page.meta += [f"checkpoint: {cfg.checkpoint_path} ({vse.kind}, epoch {checkpoint.get('epoch', '?')}, step "
                  f"{checkpoint.get('step', '?')}, {vse.similarity_name} similarity)",
                  f"split: {cfg.split} of {cfg.store or vse.store} ({num_images} images, {num_captions} captions)"]
    return thumbs


def run_report(cfg: ReportConfig) -> dict:
    """Write the report of cfg.run_dir (panels for what the folder holds); print and return where it is."""
    cfg.validate()
    start = time.perf_counter()
    run_dir = cfg.run_path
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    config, curves = read_config(run_dir), read_curves(run_dir)
    ablation_path, highlight = find_ablation(run_dir, cfg.ablation)
    has_model = cfg.checkpoint_path.is_file()
    if not has_model and (config or ablation_path is None):
        raise FileNotFoundError(f"no checkpoint at {cfg.checkpoint_path}: a report needs the run's model (pass "
                                "--checkpoint RUN/last.pt for an unfinished run) or an ablation folder")
    out = cfg.out_path
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        index, thumbs = _write_report(cfg, out, run_dir, config, curves, ablation_path, highlight)
    except BaseException:
        if created:  # a report that failed leaves no folder behind (it held nothing before this run)
            shutil.rmtree(out, ignore_errors=True)
        raise
    if thumbs is not None and thumbs.missing:
        logger.warning("%d image(s) could not be read for thumbnails (is --image-root right?), e.g. %s",
                       len(thumbs.missing), thumbs.missing[0])
    seconds = time.perf_counter() - start
    logger.info("report written in %.1f s", seconds)
    print(f"report: {index} (open it in a browser)", flush=True)
    return {"index": str(index), "seconds": seconds}


def _write_report(cfg: ReportConfig, out: Path, run_dir: Path, config: dict, curves: Curves,
                  ablation_path: Path | None, highlight: str) -> tuple[Path, Thumbnails | None]:
    """The page's panels and index.html in `out`; (index.html, the thumbnails or None)."""
    from report.plots import plot_ablation, plot_training  # matplotlib, as in retrieval_panels

    has_model = cfg.checkpoint_path.is_file()
    page = ReportPage(title=f"Report: {run_dir}", config=config, image_labels=[], caption_texts=[],
                      thumb=lambda row: "", summary=[],
                      meta=[f"run folder: {run_dir.resolve()}",
                            f"written {datetime.now(timezone.utc).isoformat(timespec='seconds')}"])
    if config:
        page.training_note = training_note(curves, config)
        step_label = f"training step (batches of {config.get('batch_size', '?')} captions)"
        switch = warmup_end(curves, config)
        markers = [(switch, "end of the SH warm-up")] if switch else []
        plotted = plot_training(curves, out / TRAINING_PNG, step_label=step_label, loss_title=loss_title(config),
                                summed_over=summed_over(config), markers=markers)
        page.training_png = TRAINING_PNG if plotted else None
    thumbs = retrieval_panels(cfg, page, out) if has_model else None
    if ablation_path is not None:
        table = read_ablation(ablation_path)
        page.ablation_png = plot_ablation(table, out / ABLATION_PNG, highlight=highlight).name
        page.ablation_rows, page.ablation_source = table["runs"], str(ablation_path)
    return atomic_write_text(out / INDEX, page.render()), thumbs
