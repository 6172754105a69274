"""run_extract(cfg): CNN features of every image of a dataset into a resumable HDF5 feature store."""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader

from common import distributed
from common.device import autocast_context, check_amp, default_workers, resolve_device
from common.progress import Progress
from extract.backbones import FeatureBackbone, build_backbone
from extract.config import ExtractConfig, config_json_path, parse_shard
from extract.device_decode import CollateBytes, JpegBytesDataset, decode_batch
from extract.distributed import run_extract_distributed
from extract.loader import ImageDataset, LoaderStalled, iter_batches, make_loader, stall_timeout
from extract.transforms import CROP, IMAGENET_MEAN, IMAGENET_STD, RESIZE, normalize
from extract.weights import NO_WEIGHTS, is_weights_path, resolve_weights
from extract.writer import BackgroundWriter
from features.datasets import DatasetIndex, check_image_paths, load_dataset, validate_image_root
from features.disk import NO_SPACE_ERRNOS, StoreSpaceError
from features.schema import CENTER_CROP_INDEX, PROVENANCE_ATTRS, Status
from features.store import FeatureStoreWriter

logger = logging.getLogger(__name__)


class ExtractFailures(RuntimeError):
    """Raised at the end of a ``strict`` run in which some images could not be read."""

    def __init__(self, summary: dict) -> None:
        super().__init__(f"{summary['failed']} image(s) could not be read (see images/error in "
                         f"{summary['store']}); fix or remove them and rerun with --retry-failed")
        self.summary = summary


class UnreadableImages(ValueError):
    """None, or too few, of the images could be read: most likely a wrong --image-root, not bad files."""


# A run fails as a whole when more than this share of the shard's finished rows (done or failed) could not be
# read. Real datasets have a few bad files (COCO and Flickr30K none, web-scraped sets a few percent); a wrong
# --image-root makes every image fail. One half sits far from both: a run with a few bad files is a success
# with a report, and one that read less than half of its images is an error, however many it read.
MAX_FAILED_SHARE = 0.5


def embed_crops(model: nn.Module, crops_uint8: torch.Tensor, *, device: torch.device, amp: str = "none",
                channels_last: bool = False) -> torch.Tensor:
    """uint8 crops [B, C, 3, H, W] -> float32 features [B, C, D] on the CPU; all B*C crops in one forward."""
    num_images, num_crops = crops_uint8.shape[:2]
    images = crops_uint8.to(device, non_blocking=True).flatten(0, 1)  # [B*C, 3, H, W]
    images = normalize(images)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast_context(device, amp):
        feats = model(images)  # [B*C, D]
    return feats.float().reshape(num_images, num_crops, -1).cpu()


def shard_rows(num_images: int, shard: str) -> np.ndarray:
    """Rows of shard 'i/n': the i-th of n contiguous, near-equal blocks; '' -> all rows."""
    parsed = parse_shard(shard)
    if parsed is None:
        return np.arange(num_images, dtype=np.int64)
    index, count = parsed
    return np.arange(index * num_images // count, (index + 1) * num_images // count, dtype=np.int64)


def store_attrs(cfg: ExtractConfig, backbone: FeatureBackbone, *, weights_name: str, weights_sha256: str) -> dict:
    """Root attributes of the store; the writer adds schema_version, feature_dim and created."""
    # The seed decides random-init features, so it is part of the config; file weights involve no seed.
    weights_seed = cfg.seed if weights_name == NO_WEIGHTS else None
    return {"backbone": cfg.backbone, "layer": backbone.layer_name, "weights_name": weights_name,
            "weights_sha256": weights_sha256, "weights_seed": weights_seed, "resize": RESIZE, "crop": CROP, "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "crops": cfg.crops,
            "dtype": cfg.dtype, "torch_version": str(torch.__version__),
            "torchvision_version": str(torchvision.__version__), "h5py_version": str(h5py.__version__),
            "command": " ".join(sys.argv), "image_root": str(Path(cfg.image_root).resolve()),
            "dataset_path": str(Path(cfg.dataset).resolve()), "shard": cfg.shard, "decode": cfg.decode,
            "amp": cfg.amp}


def _open_store(cfg: ExtractConfig, dataset: DatasetIndex, attrs: dict, feature_dim: int, *, scope: np.ndarray,
                missing: np.ndarray) -> tuple[FeatureStoreWriter, np.ndarray]:
    """Create the store, or reopen it to resume; return it and the rows to extract (of the shard's `scope`).

    A resume needs the same config and dataset (unless overwrite) and records a new image_root and dataset
    path. Nothing is written when every row to extract is missing under the image root (UnreadableImages).
    """
    out = Path(cfg.out)
    if not (out.exists() and not cfg.overwrite):
        _refuse_missing_images(cfg, dataset, scope, missing)
        writer = FeatureStoreWriter.create(out, dataset, attrs=attrs, feature_dim=feature_dim, crops=cfg.crops,
                                           dtype=cfg.dtype, replace=cfg.overwrite, rows=scope if cfg.shard else None)
        return writer, scope
    writer = FeatureStoreWriter.open_existing(out, expected_attrs=attrs, dataset=dataset)
    try:
        if writer.attrs.get("shard", "") != cfg.shard:
            raise ValueError(f"{out} holds shard {writer.attrs.get('shard')!r}, not {cfg.shard!r}; use the same "
                             f"--shard to resume, another --out, or --overwrite")
        stored_amp = writer.attrs.get("amp", "none")  # stores made before amp was recorded: float32 (CPU)
        if stored_amp != cfg.amp:
            raise ValueError(f"{out} was extracted with --amp {stored_amp}, not {cfg.amp}: rows of both must not "
                             f"mix; resume with --amp {stored_amp}, or use another --out or --overwrite")
        rows = np.intersect1d(writer.pending_indices(retry_failed=cfg.retry_failed), scope)
        _refuse_missing_images(cfg, dataset, rows, missing)
        writer.reserve_space(rows=scope if cfg.shard else None)  # a shard's store holds only its rows on disk
        writer.update_provenance({key: attrs[key] for key in PROVENANCE_ATTRS})
    except BaseException:
        writer.close()
        raise
    return writer, rows


def _refuse_missing_images(cfg: ExtractConfig, dataset: DatasetIndex, rows: np.ndarray, missing: np.ndarray) -> None:
    """UnreadableImages when there are rows to extract and not one of their files exists."""
    if len(rows) and np.isin(rows, missing).all():
        first = Path(cfg.image_root) / dataset.image_paths[rows[0]]
        raise UnreadableImages(f"none of the {len(rows)} images to extract exists under --image-root "
                               f"{cfg.image_root} (the first would be {first}): is it the folder the dataset's "
                               "paths are relative to?")


def _check_failures(cfg: ExtractConfig, writer: FeatureStoreWriter, scope: np.ndarray, tried: np.ndarray) -> None:
    """UnreadableImages when more than MAX_FAILED_SHARE of the shard's finished rows failed; else a retry hint.

    `tried` are the rows this run read: when none of the failures is among them, they are an earlier run's.
    """
    status = writer.status()
    failed_rows = scope[status[scope] == Status.FAILED]
    if not len(failed_rows):
        return
    failed, finished = len(failed_rows), int((status[scope] != Status.PENDING).sum())
    reason = f"the first, row {failed_rows[0]}: {writer.failure(failed_rows[0])}"
    if failed <= MAX_FAILED_SHARE * finished:
        logger.warning("%d image(s) could not be read (images/error in %s says why; %s); fix them and rerun with "
                       "--retry-failed to read them again", failed, cfg.out, reason)
    elif np.isin(failed_rows, tried).any():
        raise UnreadableImages(f"{failed} of {finished} images could not be read under --image-root "
                               f"{cfg.image_root} ({reason}): is it the folder the dataset's paths are relative "
                               "to? Fix it and rerun with --retry-failed")
    else:
        raise UnreadableImages(f"{failed} of {finished} images of {cfg.out} are marked failed by an earlier run "
                               f"({reason}); rerun with --retry-failed to read them again (with the right "
                               "--image-root if that was wrong)")


def _extract_rows(cfg: ExtractConfig, model: nn.Module, writer: BackgroundWriter, loader: DataLoader, *,
                  device: torch.device, progress: Progress) -> int:
    """Run the CNN over the loader's batches and queue their writes; return the number of rows handled."""
    handled = 0
    for batch in itertools.islice(iter_batches(loader), cfg.max_batches):  # max_batches None = all batches
        if cfg.decode == "gpu":
            batch = decode_batch(batch, device=device, crops=cfg.crops)
        if batch.failed_indices:
            for index, error in zip(batch.failed_indices, batch.errors):
                logger.warning("image row %d failed: %s", index, error)
            writer.mark_failed(np.asarray(batch.failed_indices, dtype=np.int64), batch.errors)
        if len(batch.indices):
            feats = embed_crops(model, batch.crops, device=device, amp=cfg.amp,
                                channels_last=cfg.channels_last).numpy()  # [B, crops, D]
            center = feats[:, CENTER_CROP_INDEX] if cfg.crops == 10 else feats[:, 0]
            writer.write_rows(batch.indices.numpy(), center, feats if cfg.crops == 10 else None)
        handled += len(batch)
        progress.update(len(batch))
    writer.drain()
    if cfg.max_batches is not None and handled < len(loader.dataset):
        logger.info("stopped after %d batches (max_batches); rerun without it to finish", cfg.max_batches)
    return handled


def _extract_or_stop_cleanly(cfg: ExtractConfig, model: nn.Module, writer: FeatureStoreWriter,
                             loader: DataLoader, *, device: torch.device) -> int:
    """_extract_rows with a progress bar and the store written in a background thread; Ctrl-C, a full disk or
    hung workers write what is computed, flush and stop with the store resumable (rows not written stay pending)."""
    with Progress(f"extract {cfg.backbone}", len(loader.dataset), unit="img", logger=logger) as progress, \
            BackgroundWriter(writer) as background:
        try:
            return _extract_rows(cfg, model, background, loader, device=device, progress=progress)
        except (KeyboardInterrupt, LoaderStalled):
            background.close()  # the computed batches are written: nothing done is lost
            writer.flush()
            counts = writer.summary()
            logger.warning("stopped: %d of %d images done, %d failed; the store %s is valid, rerun the "
                           "same command to resume", counts["done"], counts["total"], counts["failed"], cfg.out)
            raise
        except OSError as err:
            if err.errno not in NO_SPACE_ERRNOS:
                raise
            counts = writer.summary()  # the statuses in memory: what the file holds as done
            raise StoreSpaceError(f"the disk of {cfg.out} is full ({os.strerror(err.errno)}) after "
                                  f"{counts['done']} of {counts['total']} images; the store keeps them: free some "
                                  "space and rerun the same command to resume") from err


def run_extract(cfg: ExtractConfig) -> dict:
    """Extract features for the pending rows (of the shard) and return a summary dict.

    Every user error (bad option, dataset file, image paths outside the root, image root, weights, disk
    space, a store in use) is raised as ValueError or OSError before anything is written. Rerunning the
    same command resumes; done rows are never recomputed. Ctrl-C, a full disk (StoreSpaceError) or a hung
    decode (LoaderStalled) leave a valid store. UnreadableImages when most images could not be read; with
    ``cfg.strict``, ExtractFailures at the end if any could not. Summary keys: store, done, failed, pending,
    total, processed, seconds, images_per_s, file_bytes.
    """
    cfg.validate()
    context = distributed.current()
    if context.enabled:
        return run_extract_distributed(cfg, context, extract=_run_one_process)
    return _run_one_process(cfg)


def _run_one_process(cfg: ExtractConfig) -> dict:
    """run_extract in one process (a rank of a distributed run extracts its shard with it)."""
    device = distributed.device_for(resolve_device(cfg.device), distributed.current())
    check_amp(device, cfg.amp)
    if cfg.decode == "gpu" and device.type != "cuda":
        raise ValueError(f"--decode gpu decodes on the GPU, but the device is {device.type}: use --decode cpu")
    dataset = load_dataset(cfg.dataset, cfg.dataset_format)
    image_root = validate_image_root(cfg.image_root)
    missing = check_image_paths(dataset, image_root, source=cfg.dataset)
    out_folder = Path(cfg.out).resolve().parent
    if not out_folder.is_dir():  # created as train creates its run folder, before the model loads
        out_folder.mkdir(parents=True)
        logger.info("created the output folder %s", out_folder)
    weights_path, weights_name, weights_sha256 = resolve_weights(cfg.backbone, cfg.weights, offline=cfg.offline)
    if weights_name == NO_WEIGHTS:
        logger.warning("--weights none: a random-init %s gives weak features; on real photos expect results near "
                       "the chance row of eval (ImageNet weights: --weights default, downloaded on first use)",
                       cfg.backbone)
    model = build_backbone(cfg.backbone, weights_path, seed=cfg.seed)
    attrs = store_attrs(cfg, model, weights_name=weights_name, weights_sha256=weights_sha256)
    scope = shard_rows(dataset.num_images, cfg.shard)
    writer, rows = _open_store(cfg, dataset, attrs, model.feature_dim, scope=scope, missing=missing)
    with writer:
        config_json = config_json_path(cfg.out)
        absolute_paths(cfg, weights_path).save_json(config_json)
        model = model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
        workers = default_workers() if cfg.workers is None else cfg.workers
        logger.info("extracting %d of %d images with %s (%s, %s) on %s, crops=%d, batch %d, %d workers; config in "
                    "%s", len(rows), dataset.num_images, cfg.backbone, model.layer_name, attrs["weights_name"],
                    device, cfg.crops, cfg.batch_size, workers, config_json)
        dataset_class = JpegBytesDataset if cfg.decode == "gpu" else ImageDataset
        image_dataset = dataset_class(rows.tolist(), [str(image_root / dataset.image_paths[r]) for r in rows],
                                      crops=cfg.crops, timeout_s=cfg.image_timeout)
        loader = make_loader(image_dataset, batch_size=cfg.batch_size, workers=workers,
                             pin_memory=device.type == "cuda",
                             stall_timeout=stall_timeout(cfg.image_timeout, cfg.batch_size),
                             collate=CollateBytes(cfg.crops) if cfg.decode == "gpu" else None)
        start = time.perf_counter()
        handled = _extract_or_stop_cleanly(cfg, model, writer, loader, device=device)
        counts = writer.summary()
        pending = len(np.intersect1d(writer.pending_indices(), scope))
        seconds = time.perf_counter() - start
        images_per_s = handled / seconds if seconds > 0 else 0.0
        logger.info("done %d, failed %d, pending %d of %d images; %.1f images/s; %s: %.1f MB", counts["done"],
                    counts["failed"], pending, counts["total"], images_per_s, cfg.out,
                    Path(cfg.out).stat().st_size / 1e6)
        _check_failures(cfg, writer, scope, tried=rows)
    summary = {"store": str(cfg.out), "done": counts["done"], "failed": counts["failed"], "pending": pending,
               "total": counts["total"], "processed": handled, "seconds": seconds, "images_per_s": images_per_s,
               "file_bytes": Path(cfg.out).stat().st_size}
    if cfg.strict and summary["failed"]:
        raise ExtractFailures(summary)
    return summary


def absolute_paths(cfg: ExtractConfig, weights_path: Path | None) -> ExtractConfig:
    """The config as saved beside the store: dataset, image root, store and a weights file as absolute paths,
    so that later stages (finetune rebuilds the CNN from it) work from any folder."""
    weights = str(weights_path) if is_weights_path(cfg.backbone, cfg.weights) else cfg.weights
    return dataclasses.replace(cfg, dataset=str(Path(cfg.dataset).resolve()),
                               image_root=str(Path(cfg.image_root).resolve()), out=str(Path(cfg.out).resolve()),
                               weights=weights)
