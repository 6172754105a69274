"""Extraction under torchrun: each rank extracts its block of the images into its own shard store (the
`--shard r/N` machinery, resumable), then rank 0 merges the shard stores into --out and removes them.

Merge rather than an HDF5 virtual dataset over the shards: training and encoding read feature rows with
preadv at the contiguous dataset's file offset (features/rows.py), which a virtual dataset does not have, so
every read would go through h5py, measured 1.1x (10C) to 1.5x (1C) slower per batch on a 2 GB store, and the
store would depend on N shard files staying beside it; the merge costs seconds per 2 GB (bench/shard_merge.py). A shard's store allocates only its own rows
(features/store.py), so the shards take about one store of disk together, and the merge a second one until
the shards are removed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from common.distributed import Distributed
from extract.config import ExtractConfig, config_json_path
from features.merge import merge_stores
from features.reader import FeatureStore

logger = logging.getLogger(__name__)


def shard_store_path(out: str | Path, rank: int, world_size: int) -> Path:
    """Where rank `rank` of `world_size` keeps its shard store: beside --out."""
    out = Path(out)
    return out.with_name(f"{out.name}.rank{rank}-of-{world_size}.h5")


def run_extract_distributed(cfg: ExtractConfig, context: Distributed, *,
                            extract: Callable[[ExtractConfig], dict]) -> dict:
    """Extract with every rank of `context`; `extract` is the single-process stage function. Returns the merged
    store's counts (the same dict on every rank).

    A store already at --out (a finished distributed run, or a single-process one) is resumed by rank 0 alone
    with `extract` (what is left, pending or --retry-failed rows, is few), the others wait.
    """
    if cfg.shard:
        raise ValueError(f"--shard {cfg.shard} and torchrun both split the images; drop --shard under torchrun")
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        summary = extract(cfg) if context.is_main else None
        return context.broadcast(summary)
    shards = [shard_store_path(out, rank, context.world_size) for rank in range(context.world_size)]
    mine = dataclasses.replace(cfg, shard=f"{context.rank}/{context.world_size}", out=str(shards[context.rank]))
    extract(mine)  # raises on this rank when its images cannot be read: torchrun then stops the others
    context.barrier()
    summary = None
    if context.is_main:
        summary = _merge(cfg, shards)
    return context.broadcast(summary)


def _merge(cfg: ExtractConfig, shards: list[Path]) -> dict:
    """Rank 0: the shard stores -> --out, with the config beside it (a shard's, absolute paths and all, for the
    whole store), then the shards removed."""
    counts = merge_stores(shards, cfg.out, overwrite=cfg.overwrite)
    saved = ExtractConfig.load_json(config_json_path(shards[0]))
    dataclasses.replace(saved, out=str(Path(cfg.out).resolve()), shard="").save_json(config_json_path(cfg.out))
    for shard in shards:
        shard.unlink()
        config_json_path(shard).unlink(missing_ok=True)
    with FeatureStore(cfg.out) as store:
        logger.info("merged %d shard stores into %s: %s", len(shards), cfg.out, store.summary())
    return {"store": str(cfg.out), **counts, "shards": [str(shard) for shard in shards]}
