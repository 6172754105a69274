"""The encode stage: a store split, images or sentences -> one resumable HDF5 embeddings file (retrieval/embeddings.py)."""

from __future__ import annotations

import itertools
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.choices import AMP_MODES, SPLITS
from common.config import StageConfig
from common.device import autocast_context, check_amp, resolve_device
from common.fields import device_field, image_root_field, weights_field
from common.progress import Progress
from extract.loader import ImageDataset, make_loader
from features.datasets import validate_image_root
from features.reader import FeatureStore
from retrieval.api import VSE, text_tokens
from retrieval.embeddings import EmbeddingsWriter, GroupTable
from retrieval.images import list_images
from train.checkpoint import warn_about_data
from train.encode import encode_store_images, encode_token_lists, split_rows
from train.text import caption_tokens

logger = logging.getLogger(__name__)


@dataclass
class EncodeConfig(StageConfig):
    """Every option of the encode stage; give exactly one input: --split, --images or --texts."""

    checkpoint: str = field(default="", metadata={
        "help": "train or finetune checkpoint, or a file of `pipeline.py export`", "required": True})
    out: str = field(default="", metadata={"help": "output HDF5 embeddings file", "required": True})
    split: str = field(default="", metadata={
        "help": "embed the images and captions of this store split (train, val, test, restval)"})
    store: str = field(default="", metadata={
        "help": "feature store of --split, and whose CNN embeds images for a train-stage checkpoint "
                "(default: the store the checkpoint was trained on)"})
    images: tuple[str, ...] = field(default=(), metadata={
        "help": "image files or folders (all images below, sorted) to embed; repeatable", "multiple": True})
    texts: str = field(default="", metadata={"help": "text file of sentences to embed, one per line (blank lines "
                                                     "skipped)"})
    image_root: str = image_root_field()
    weights: str = weights_field()
    batch_size: int = field(default=256, metadata={"help": "images or sentences per forward pass"})
    workers: int = field(default=2, metadata={"help": "image decoding worker processes (0 = in this process)"})
    device: str = device_field()
    amp: str = field(default="none", metadata={
        "help": "autocast of the model: bf16 or fp16 on cuda, bf16 on a CPU with native bf16 (AMX, AVX512-BF16); "
                "embeddings are stored as float32 either way; a resume keeps it", "choices": AMP_MODES})
    overwrite: bool = field(default=False, metadata={
        "help": "replace an existing --out (also one of another model or input) instead of resuming it"})
    retry_failed: bool = field(default=False, metadata={"help": "also retry images an earlier run could not read"})
    max_batches: int | None = field(default=None, metadata={
        "help": "stop after this many batches, as if interrupted (rerun to continue); default: all"})

    def validate(self) -> None:
        """Choices, exactly one input, a known split, positive sizes (ValueError)."""
        super().validate()
        given = [name for name, value in (("--split", self.split), ("--images", self.images),
                                          ("--texts", self.texts)) if value]
        if len(given) != 1:
            raise ValueError(f"give exactly one input: --split NAME, --images PATH or --texts FILE (got "
                             f"{', '.join(given) or 'none'})")
        if self.split and self.split not in SPLITS:
            raise ValueError(f"--split {self.split} is not one of {', '.join(SPLITS)}")
        self.check_at_least(1, "batch_size")
        self.check_at_least(0, "workers", "max_batches")


@dataclass
class Encoded:
    """One batch of a group: rows embedded and rows that failed."""

    group: str
    rows: np.ndarray  # sorted rows of the group
    embeddings: np.ndarray  # float32 [len(rows), E]
    failed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    errors: list[str] = field(default_factory=list)


def read_sentences(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """(1-based line numbers, sentences) of a text file's non-blank lines; ValueError if none."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no text file at {str(path)!r}")
    # lines end at \n only (strip() drops a \r): a NEL or U+2028 inside a sentence is text, as in a dataset TSV
    lines = path.read_text(encoding="utf-8-sig").split("\n")
    numbers = [number for number, line in enumerate(lines, start=1) if line.strip()]
    if not numbers:
        raise ValueError(f"{path} holds no sentence (one per line)")
    return np.asarray(numbers, dtype=np.int64), [lines[number - 1].strip() for number in numbers]


def split_tables(store: FeatureStore, split: str) -> dict[str, GroupTable]:
    """The images and captions of a store split (done images only, store order), caption -> image row."""
    image_rows, caption_rows, caption_image_index = split_rows(store, [split])
    texts = store.caption_texts
    return {"images": GroupTable(image_rows, [str(store.image_paths[row]) for row in image_rows]),
            "captions": GroupTable(caption_rows, [texts[row] for row in caption_rows], caption_image_index)}


def file_batches(vse: VSE, paths: list[str], rows: np.ndarray, cfg: EncodeConfig) -> Iterator[Encoded]:
    """Images decoded in loader workers (extract's 1C, or the model's own resize), embedded by the model;
    unreadable ones reported."""
    loader = make_loader(ImageDataset(rows.tolist(), [paths[row] for row in rows], crops=1,
                                      resize=vse.loaded.image_resize),
                         batch_size=cfg.batch_size, workers=cfg.workers, pin_memory=vse.device.type == "cuda")
    for batch in loader:
        embeddings = vse.encode_crops(batch.crops[:, 0]).numpy() if len(batch.indices) else None
        yield Encoded("images", batch.indices.numpy(), embeddings, np.asarray(batch.failed_indices, dtype=np.int64),
                      batch.errors)


def feature_batches(vse: VSE, store: FeatureStore, table: GroupTable, rows: np.ndarray,
                    batch_size: int) -> Iterator[Encoded]:
    """A train-stage model's image embeddings from the stored features (its feature mode, as eval)."""
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        embeddings = encode_store_images(vse.loaded.model, store, table.ids[batch], batch_size=batch_size,
                                         feature_mode=vse.config.feature_mode, device=vse.device)
        yield Encoded("images", batch, embeddings.numpy())


def caption_batches(vse: VSE, token_lists: list[list[str]], rows: np.ndarray, batch_size: int) -> Iterator[Encoded]:
    """Caption embeddings of `rows`, batch by batch."""
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        embeddings = encode_token_lists(vse.loaded.model, [token_lists[row] for row in batch], vocab=vse.loaded.vocab,
                                        batch_size=batch_size, device=vse.device)
        yield Encoded("captions", batch, embeddings.numpy())


def plan(cfg: EncodeConfig, vse: VSE) -> tuple[dict[str, GroupTable], dict, FeatureStore | None]:
    """The rows to embed and the input's attributes, everything checked before the file is touched."""
    if cfg.split:
        store = FeatureStore(cfg.store or vse.store)
        try:
            warn_about_data(vse.loaded.checkpoint, store, splits=[cfg.split], source=str(cfg.checkpoint))
            image_root = ""
            if vse.loaded.has_cnn:
                image_root = str(validate_image_root(cfg.image_root or vse.config.image_root
                                                     or store.attrs["image_root"]))
            return split_tables(store, cfg.split), {"source": "store-split", "store": str(store.path),
                                                    "split": cfg.split, "image_root": image_root}, store
        except BaseException:
            store.close()
            raise
    if cfg.images:
        paths = list_images(cfg.images)
        return ({"images": GroupTable(np.arange(len(paths), dtype=np.int64), paths)},
                {"source": "images", "cnn": vse.cnn_provenance()}, None)
    numbers, sentences = read_sentences(cfg.texts)
    text_tokens(sentences, tokenizer=vse.loaded.vocab.tokenizer)  # an empty sentence fails here, before writing
    return {"captions": GroupTable(numbers, sentences)}, {"source": "texts", "texts_file": str(cfg.texts)}, None


def batches_of(cfg: EncodeConfig, vse: VSE, writer: EmbeddingsWriter, tables: dict[str, GroupTable],
               store: FeatureStore | None, image_root: str) -> Iterator[Encoded]:
    """Every pending row's batch, images first; the progress of each group is logged."""
    for group, table in tables.items():
        rows = writer.pending_rows(group, retry_failed=cfg.retry_failed)
        logger.info("encoding %d of %d %s", len(rows), len(table), group)
        if group == "captions":
            tokenizer = vse.loaded.vocab.tokenizer
            tokens = (caption_tokens(store, table.ids.tolist(), tokenizer=tokenizer) if store is not None  # as eval
                      else text_tokens(table.labels, tokenizer=tokenizer))
            yield from caption_batches(vse, tokens, rows, cfg.batch_size)
        elif store is not None and not vse.loaded.has_cnn:
            yield from feature_batches(vse, store, table, rows, cfg.batch_size)
        else:
            yield from file_batches(vse, [str(Path(image_root) / path) for path in table.labels], rows, cfg)


def run_encode(cfg: EncodeConfig) -> dict:
    """Embed cfg's input into cfg.out (created atomically, resumed when it exists; its folder created first, as
    train creates its run folder); return counts per group."""
    cfg.validate()
    check_amp(resolve_device(cfg.device), cfg.amp)  # before the model loads, as the output folder
    out_folder = Path(cfg.out).resolve().parent
    if not out_folder.is_dir():  # before the model loads: a missing folder is not an error found minutes later
        out_folder.mkdir(parents=True)
        logger.info("created the output folder %s", out_folder)
    vse = VSE.load(cfg.checkpoint, device=cfg.device, store=cfg.store or None, weights=cfg.weights or None,
                   batch_size=cfg.batch_size, workers=cfg.workers)
    tables, input_attrs, store = plan(cfg, vse)
    try:
        attrs = {**vse.provenance(), **input_attrs, "command": " ".join(sys.argv),
                 "torch_version": str(torch.__version__), "amp": cfg.amp}
        out = Path(cfg.out)
        if out.exists() and not cfg.overwrite:
            writer = EmbeddingsWriter.open_existing(out, tables=tables, attrs=attrs)
        else:
            writer = EmbeddingsWriter.create(out, tables=tables, embed_dim=vse.embed_dim, attrs=attrs)
        with writer, autocast_context(vse.device, cfg.amp):
            counts = fill(cfg, vse, writer, tables, store, input_attrs.get("image_root", ""))
    finally:
        if store is not None:
            store.close()
    for group, count in counts.items():
        logger.info("%s: %d of %d %s done, %d failed, %d pending", cfg.out, count["done"], count["total"], group,
                    count["failed"], count["pending"])
    return {"out": str(cfg.out), **counts}


def fill(cfg: EncodeConfig, vse: VSE, writer: EmbeddingsWriter, tables: dict[str, GroupTable],
         store: FeatureStore | None, image_root: str) -> dict:
    """Write the pending rows batch by batch (up to cfg.max_batches); fingerprint complete groups."""
    progress: Progress | None = None
    group = ""
    computing_since = time.perf_counter()  # a group's rate counts from when its first batch began, not arrived
    try:
        for encoded in itertools.islice(batches_of(cfg, vse, writer, tables, store, image_root),
                                         cfg.max_batches):
            if encoded.group != group:
                if progress is not None:
                    progress.close()
                group = encoded.group
                progress = Progress(f"encode {group}", len(writer.pending_rows(group, retry_failed=cfg.retry_failed)),
                                    unit=group[:-1], logger=logger, started=computing_since)
            if len(encoded.failed):
                for row, error in zip(encoded.failed.tolist(), encoded.errors):
                    logger.warning("%s row %d (%s) failed: %s", encoded.group, row, tables[encoded.group].labels[row],
                                   error)
                writer.mark_failed(encoded.group, encoded.failed, encoded.errors)
            if len(encoded.rows):
                writer.write_rows(encoded.group, encoded.rows, encoded.embeddings)
            progress.update(len(encoded.rows) + len(encoded.failed))
            computing_since = time.perf_counter()
    except KeyboardInterrupt:
        logger.warning("interrupted: %s is valid, rerun the same command to continue", cfg.out)
        raise
    finally:
        if progress is not None:
            progress.close()
    return writer.finish()
