"""run_extract(cfg): CNN features of every image of a dataset into a resumable HDF5 feature store."""
from __future__ import annotations

import itertools
import logging
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.device import autocast_context, resolve_device
from extract.backbones import FeatureBackbone, build_backbone
from extract.config import ExtractConfig, config_json_path, parse_shard
from extract.loader import ImageDataset, make_loader
from extract.transforms import CROP, IMAGENET_MEAN, IMAGENET_STD, RESIZE, normalize
from extract.weights import NO_WEIGHTS, resolve_weights
from features.datasets import DatasetIndex, load_dataset, validate_image_root
from features.schema import CENTER_CROP_INDEX
from features.store import FeatureStoreWriter

logger = logging.getLogger(__name__)


class ExtractFailures(RuntimeError):
    """Raised at the end of a ``strict`` run in which some images could not be read."""

    def __init__(self, summary: dict) -> None:
        super().__init__(f"{summary['failed']} image(s) could not be read (see images/error in "
                         f"{summary['store']}); fix or remove them and rerun with --retry-failed")
        self.summary = summary


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
            "dataset_path": str(Path(cfg.dataset).resolve()), "shard": cfg.shard}


def _open_store(cfg: ExtractConfig, dataset: DatasetIndex, attrs: dict, feature_dim: int) -> FeatureStoreWriter:
    """Create the store, or reopen it to resume (same config and dataset required unless overwrite)."""
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        writer = FeatureStoreWriter.open_existing(out, expected_attrs=attrs, dataset=dataset)
        if writer.attrs.get("shard", "") != cfg.shard:
            writer.close()
            raise ValueError(f"{out} holds shard {writer.attrs.get('shard')!r}, not {cfg.shard!r}; use the same "
                             f"--shard to resume, another --out, or --overwrite")
        return writer
    return FeatureStoreWriter.create(out, dataset, attrs=attrs, feature_dim=feature_dim, crops=cfg.crops,
                                     dtype=cfg.dtype)


def _extract_rows(cfg: ExtractConfig, model: nn.Module, writer: FeatureStoreWriter, loader: DataLoader, *,
                  device: torch.device, progress: tqdm) -> int:
    """Run the CNN over the loader's batches and write them; return the number of rows handled."""
    handled = 0
    for batch in itertools.islice(loader, cfg.max_batches):  # max_batches None = all batches
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
    if cfg.max_batches is not None and handled < len(loader.dataset):
        logger.info("stopped after %d batches (max_batches); rerun without it to finish", cfg.max_batches)
    return handled


def run_extract(cfg: ExtractConfig) -> dict:
    """Extract features for the pending rows (of the shard) and return a summary dict.

    Every user error (bad option, dataset file, image root, weights) is raised as ValueError or
    FileNotFoundError before anything is written. Rerunning the same command resumes; done rows are
    never recomputed. Ctrl-C leaves a valid store. With ``cfg.strict``, raises ExtractFailures at the
    end if any image could not be read. Summary keys: store, done, failed, pending, total,
    processed, seconds, images_per_s, file_bytes.
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    if cfg.amp != "none" and device.type != "cuda":
        raise ValueError(f"amp {cfg.amp!r} applies on cuda only; the device is {device.type}: use --amp none")
    dataset = load_dataset(cfg.dataset, cfg.dataset_format)
    image_root = validate_image_root(cfg.image_root)
    if not Path(cfg.out).resolve().parent.is_dir():
        raise FileNotFoundError(f"output folder of {cfg.out!r} does not exist; create it first")
    weights_path, weights_name, weights_sha256 = resolve_weights(cfg.backbone, cfg.weights)
    model = build_backbone(cfg.backbone, weights_path, seed=cfg.seed)
    attrs = store_attrs(cfg, model, weights_name=weights_name, weights_sha256=weights_sha256)
    writer = _open_store(cfg, dataset, attrs, model.feature_dim)
    with writer:
        config_json = config_json_path(cfg.out)
        cfg.save_json(config_json)
        model = model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
        scope = shard_rows(dataset.num_images, cfg.shard)
        rows = np.intersect1d(writer.pending_indices(retry_failed=cfg.retry_failed), scope)
        logger.info("extracting %d of %d images with %s (%s, %s) on %s, crops=%d, batch %d; config in %s",
                    len(rows), dataset.num_images, cfg.backbone, model.layer_name, attrs["weights_name"], device,
                    cfg.crops, cfg.batch_size, config_json)
        image_dataset = ImageDataset(rows.tolist(), [str(image_root / dataset.image_paths[r]) for r in rows],
                                     crops=cfg.crops)
        loader = make_loader(image_dataset, batch_size=cfg.batch_size, workers=cfg.workers,
                             pin_memory=device.type == "cuda")
        start = time.perf_counter()
        with tqdm(total=len(rows), unit="img", desc=f"extract {cfg.backbone}", mininterval=1.0) as progress:
            try:
                handled = _extract_rows(cfg, model, writer, loader, device=device, progress=progress)
            except KeyboardInterrupt:
                writer.flush()
                counts = writer.summary()
                logger.warning("interrupted: %d of %d images done, %d failed; the store %s is valid, rerun the "
                               "same command to resume", counts["done"], counts["total"], counts["failed"], cfg.out)
                raise
        counts = writer.summary()
        pending = len(np.intersect1d(writer.pending_indices(), scope))
    seconds = time.perf_counter() - start
    summary = {"store": str(cfg.out), "done": counts["done"], "failed": counts["failed"], "pending": pending,
               "total": counts["total"], "processed": handled, "seconds": seconds,
               "images_per_s": handled / seconds if seconds > 0 else 0.0,
               "file_bytes": Path(cfg.out).stat().st_size}
    logger.info("done %d, failed %d, pending %d of %d images; %.1f images/s; %s: %.1f MB", summary["done"],
                summary["failed"], pending, summary["total"], summary["images_per_s"], cfg.out,
                summary["file_bytes"] / 1e6)
    if cfg.strict and summary["failed"]:
        raise ExtractFailures(summary)
    return summary
