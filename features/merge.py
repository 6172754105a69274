"""Merge shard stores (extract --shard i/n) of one dataset and config into a single store."""

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.config import StageConfig
from features.datasets import DatasetIndex
from features.reader import FeatureStore
from features.schema import CONFIG_ATTRS, REGIONS_KIND, Status
from features.store import DERIVED_ATTRS, FeatureStoreWriter

logger = logging.getLogger(__name__)

MERGE_CHUNK_BYTES = 64 * 2**20  # features copied per read/write, bounding memory use


def _check_same_config(first: FeatureStore, shard: FeatureStore) -> None:
    keys = CONFIG_ATTRS + ("feature_dim", "regions", "amp")  # amp: extract --amp (absent before it was recorded)
    first_attrs, shard_attrs = ({**store.attrs, "regions": store.regions} for store in (first, shard))  # old: no attr
    differences = [f"{key}: {first_attrs.get(key)!r} vs {shard_attrs.get(key)!r}" for key in keys
                   if first_attrs.get(key) != shard_attrs.get(key)]
    if differences:
        raise ValueError(f"{shard.path} was extracted with another config than {first.path} "
                         f"({'; '.join(differences)}); merge only the shards of one extract command")


def _check_same_tables(first: FeatureStore, shard: FeatureStore) -> None:
    tables = {
        "images/path": (first.image_paths, shard.image_paths),
        "images/split": (first.image_splits, shard.image_splits),
        "captions/text": (first.caption_texts, shard.caption_texts),
        "captions/image_index": (first.caption_image_index, shard.caption_image_index),
        "captions/tokens": (first.caption_tokens, shard.caption_tokens),
    }
    for name, (expected, found) in tables.items():
        if expected is None or found is None:
            same = expected is None and found is None
        else:
            same = list(expected) == list(found)
        if not same:
            raise ValueError(f"{shard.path} and {first.path} differ in {name}: they were made from different "
                             "datasets; merge only the shards of one extract command")


def _dataset_of(store: FeatureStore) -> DatasetIndex:
    return DatasetIndex(
        image_paths=store.image_paths.tolist(),
        image_splits=store.image_splits.tolist(),
        caption_texts=list(store.caption_texts),
        caption_tokens=store.caption_tokens,
        caption_image_index=store.caption_image_index.copy(),
    )


def _copy_rows(shard: FeatureStore, writer: FeatureStoreWriter, rows: np.ndarray, *, chunk_bytes: int) -> None:
    """Copy done rows (sorted) from `shard` to `writer`, at most about `chunk_bytes` of features at a time."""
    sources = {kind: shard.features(kind) for kind in shard.feature_kinds}
    row_bytes = sum(int(np.prod(source.shape[1:])) * source.dtype.itemsize for source in sources.values())
    rows_per_chunk = max(1, chunk_bytes // row_bytes)
    for begin in range(0, len(rows), rows_per_chunk):
        chunk = rows[begin:begin + rows_per_chunk]
        # Sorted indices: required by the h5py fallback, and cheap for a memmap.
        values = {kind: np.asarray(source[chunk]) for kind, source in sources.items()}
        writer.write_rows(chunk, values.get("1c"), values.get("10c"), regions=values.get(REGIONS_KIND))


def merge_stores(shard_paths: Sequence[str | Path], out_path: str | Path, *, overwrite: bool = False,
                 chunk_bytes: int = MERGE_CHUNK_BYTES) -> dict[str, int]:
    """Join shard stores into a new store at `out_path`; return its status counts.

    All shards must share the config attributes and the image/caption tables. A row done in several
    shards takes the first shard's values; a row done in none keeps the first failure reason, or
    stays pending (reported in the counts and the log: the merged store may be incomplete). The
    result is written to `out_path + ".partial"` and renamed when complete.
    """
    paths = [Path(path) for path in shard_paths]
    out_path = Path(out_path)
    if not paths:
        raise ValueError("no shard stores given; pass the files written by extract --shard i/n")
    resolved = [path.resolve() for path in paths]
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"a shard is given twice in {[str(path) for path in paths]}; pass each shard once")
    if out_path.resolve() in resolved:
        raise ValueError(f"the output {str(out_path)!r} is also a shard; write the merge to another path")
    if out_path.exists() and not overwrite:
        raise ValueError(f"{str(out_path)!r} already exists; pass --overwrite to replace it or use another --out")
    partial = out_path.with_name(out_path.name + ".partial")
    with contextlib.ExitStack() as stack:
        shards = [stack.enter_context(FeatureStore(path)) for path in paths]
        first = shards[0]
        for shard in shards[1:]:
            _check_same_config(first, shard)
            _check_same_tables(first, shard)
        attrs = {key: value for key, value in first.attrs.items()
                 if key not in DERIVED_ATTRS and key not in ("created", "h5py_version")}
        attrs.update(shard="", merged_from=[str(path) for path in paths])
        try:
            summary = _merge_into(shards, partial, attrs=attrs, chunk_bytes=chunk_bytes)
            os.replace(partial, out_path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    logger.info("merged %d shards into %s: %s", len(paths), out_path, summary)
    if summary["pending"]:
        logger.warning("%s: %d images are done in no shard and still pending; run the missing shards and "
                       "merge again, or resume extract on the merged store", out_path, summary["pending"])
    return summary


def _merge_into(shards: list[FeatureStore], path: Path, *, attrs: dict, chunk_bytes: int) -> dict[str, int]:
    first = shards[0]
    writer = FeatureStoreWriter.create(path, _dataset_of(first), attrs=attrs, feature_dim=first.feature_dim,
                                       crops=first.crops, dtype=first.dtype, regions=first.regions)
    with writer:
        taken = np.zeros(first.num_images, dtype=bool)
        num_duplicates = 0
        for shard in shards:
            done = shard.image_status == Status.DONE
            num_duplicates += int((done & taken).sum())
            _copy_rows(shard, writer, np.flatnonzero(done & ~taken), chunk_bytes=chunk_bytes)
            taken |= done
        for shard in shards:
            # A row done in no shard keeps the first failure reason; one pending in every shard stays pending.
            failed = np.flatnonzero((shard.image_status == Status.FAILED) & ~taken)
            if failed.size:
                writer.mark_failed(failed, shard.image_errors[failed].tolist())
            taken[failed] = True
        if num_duplicates:
            logger.info("%d images were done in more than one shard; kept the first shard's features",
                        num_duplicates)
        summary = writer.summary()
    summary["done_in_several_shards"] = num_duplicates
    return summary


@dataclass
class MergeConfig(StageConfig):
    """Options of `pipeline.py merge`: join the stores written by `extract --shard i/n`."""

    shards: tuple[str, ...] = field(default=(), metadata={"help": "shard stores to join (comma-separated paths)",
                                                          "required": True})
    out: str = field(default="", metadata={"help": "path of the merged store", "required": True})
    overwrite: bool = field(default=False, metadata={"help": "replace --out if it exists"})


def run_merge(cfg: MergeConfig) -> dict[str, int]:
    """Stage function of `merge`: logs and returns the merged store's status counts."""
    counts = merge_stores(cfg.shards, cfg.out, overwrite=cfg.overwrite)
    logger.info("merged %d shards into %s: %s", len(cfg.shards), cfg.out, counts)
    return counts
