"""The embeddings file of `pipeline.py encode`: HDF5 groups of rows written by index, status per row, provenance.

Layout (FORMAT_VERSION 1), one group per side it holds ("images" and/or "captions"):
  <group>/embeddings  float32 [N, E]   rows of the model's joint space (meaningful where status is done)
  <group>/status      uint8 [N]        0 pending, 1 done, 2 failed (features.schema.Status)
  <group>/error       str [N]          why a row failed ("" otherwise)
  <group>/ids         int64 [N]        store rows (store split), positions in the list (images), line numbers (texts)
  images/paths        str [N]          image paths (relative to the store's image root for a store split)
  captions/texts      str [M]          sentences
  captions/image_index int64 [M]       row in images/ of each caption's image (store splits only)
Group attrs: fingerprint (sha256 of status, ids and embeddings once no row is pending; "" before).
Root attrs: format, format_version, source (store-split / images / texts), the model's provenance (checkpoint,
checkpoint_sha256, model_sha256, kind, similarity, embed_dim, config and model_spec as JSON, cnn as JSON), store,
split, image_root, created, command, torch_version.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from features.attrs import read_attrs
from features.disk import StoreInUseError, in_use_error, is_lock_error
from features.rows import contiguous_runs
from features.schema import Status

logger = logging.getLogger(__name__)

FORMAT = "vsepp-embeddings"
FORMAT_VERSION = 1
GROUPS = ("images", "captions")
LABELS = {"images": "paths", "captions": "texts"}  # the strings each group's rows carry
STRING_DTYPE = h5py.string_dtype("utf-8")
IDENTITY_ATTRS = ("source", "model_sha256", "store", "split", "amp")  # a resumed file must agree on these
READ_ROWS = 1 << 15  # rows per read when streaming a group (128 MiB at E = 1024; 2 topk gallery blocks)
FIX_HINT = "pass --overwrite to replace it, or another --out"


@dataclass
class GroupTable:
    """The rows of one group besides their embeddings."""

    ids: np.ndarray  # int64 [N]
    labels: list[str]  # [N] paths (images) or texts (captions)
    image_index: np.ndarray | None = None  # int64 [M], captions of a store split only

    def __len__(self) -> int:
        return len(self.ids)


def open_h5(path: Path, mode: str) -> h5py.File:
    """h5py.File(path, mode); StoreInUseError when another process holds the file's lock (a running encode,
    search or serve, or the loader workers a killed encode left behind)."""
    try:
        return h5py.File(path, mode)
    except OSError as err:
        if is_lock_error(err):
            raise in_use_error(path, "an encode, search or serve has it open, or loader workers of a killed encode "
                                     "still run", "wait for it or end that process (see `fuser -v FILE`), then rerun "
                                     "the same command") from err
        raise


def _attr(value: object) -> object:
    """A root attribute as HDF5 stores it: dicts and lists as JSON, None as ""."""
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return value


class _H5Handle:
    """An open h5py file in `self.file`, closed by close() or at the end of a with block."""

    file: h5py.File

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self.file.id.valid:
            self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class EmbeddingsWriter(_H5Handle):
    """Create (atomically) or resume an embeddings file and fill it by rows; every write is flushed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = open_h5(path, "r+")
        self.status = {group: self.file[f"{group}/status"][()] for group in GROUPS if group in self.file}

    @classmethod
    def create(cls, path: str | Path, *, tables: dict[str, GroupTable], embed_dim: int,
               attrs: dict) -> "EmbeddingsWriter":
        """A new file with every row pending, built as `path.partial` and renamed once its tables are written."""
        path = Path(path)
        if not path.resolve().parent.is_dir():
            raise FileNotFoundError(f"output folder of {str(path)!r} does not exist; create it first")
        partial = path.with_name(path.name + ".partial")
        root = {"format": FORMAT, "format_version": FORMAT_VERSION, "torch_version": "", "command": "",
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **attrs}
        try:
            with h5py.File(partial, "w") as h5file:
                for group, table in tables.items():
                    _write_table(h5file.create_group(group), group, table, embed_dim)
                h5file.attrs.update({key: _attr(value) for key, value in root.items()})
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        logger.info("created %s: %s", path, ", ".join(f"{len(t)} {g}" for g, t in tables.items()))
        return cls(path)

    @classmethod
    def open_existing(cls, path: str | Path, *, tables: dict[str, GroupTable], attrs: dict) -> "EmbeddingsWriter":
        """Reopen a file to resume it; ValueError unless it holds the same rows of the same model and input."""
        path = Path(path)
        with EmbeddingsFile(path) as existing:
            # an attribute the file does not have is "" (create writes none for an input without a store)
            differing = [f"{key}: file {_attr(existing.attrs.get(key))!r} vs now {_attr(attrs.get(key))!r}"
                         for key in IDENTITY_ATTRS if _attr(existing.attrs.get(key)) != _attr(attrs.get(key))]
            if set(existing.groups) != set(tables):
                differing.append(f"groups: file {existing.groups} vs now {sorted(tables)}")
            for group in set(existing.groups) & set(tables):
                ids, labels = existing.ids(group), existing.labels(group)
                if not (np.array_equal(ids, tables[group].ids) and list(labels) == list(tables[group].labels)):
                    differing.append(f"{group}: another list of {LABELS[group]}")
        if differing:
            raise ValueError(f"{path} holds the embeddings of another model or input ({'; '.join(differing)}); "
                             f"{FIX_HINT}")
        return cls(path)

    def pending_rows(self, group: str, *, retry_failed: bool = False) -> np.ndarray:
        """Sorted rows of `group` still to embed (pending, and failed ones with retry_failed)."""
        status = self.status[group]
        todo = (status == Status.PENDING) | (retry_failed & (status == Status.FAILED))
        return np.flatnonzero(todo)

    def write_rows(self, group: str, rows: np.ndarray, embeddings: np.ndarray) -> None:
        """Embeddings [len(rows), E] of sorted `rows`, then their status done (so a crash leaves them pending)."""
        dataset = self.file[f"{group}/embeddings"]
        self.file[group].attrs["fingerprint"] = ""
        for begin, end in contiguous_runs(rows):
            dataset[rows[begin]:rows[begin] + end - begin] = embeddings[begin:end]
        self.file.flush()
        retried = rows[self.status[group][rows] == Status.FAILED]  # their old reason no longer holds
        self._set_status(group, rows, Status.DONE, retried, [""] * len(retried))

    def mark_failed(self, group: str, rows: np.ndarray, errors: list[str]) -> None:
        """Rows that could not be embedded, with the reason of each."""
        self.file[group].attrs["fingerprint"] = ""
        self._set_status(group, rows, Status.FAILED, rows, errors)

    def _set_status(self, group: str, rows: np.ndarray, status: Status, error_rows: np.ndarray,
                    errors: list[str]) -> None:
        for row, error in zip(error_rows.tolist(), errors):
            self.file[f"{group}/error"][row] = error
        self.status[group][rows] = status
        self.file[f"{group}/status"][:] = self.status[group]
        self.file.flush()

    def finish(self) -> dict[str, dict[str, int]]:
        """Fingerprint every group without pending rows; return the row counts per group and status."""
        for group, status in self.status.items():
            if not (status == Status.PENDING).any() and not self.file[group].attrs.get("fingerprint"):
                self.file[group].attrs["fingerprint"] = group_fingerprint(self.file, group)
        self.file.flush()
        return {group: status_counts(status) for group, status in self.status.items()}


def _write_table(group: h5py.Group, name: str, table: GroupTable, embed_dim: int) -> None:
    count = len(table)
    if count == 0:
        raise ValueError(f"no {name} to embed")
    group.create_dataset("embeddings", shape=(count, embed_dim), dtype=np.float32)
    group.create_dataset("status", data=np.full(count, Status.PENDING, dtype=np.uint8))
    group.create_dataset("error", data=np.full(count, "", dtype=object), dtype=STRING_DTYPE)
    group.create_dataset("ids", data=np.asarray(table.ids, dtype=np.int64))
    group.create_dataset(LABELS[name], data=np.array(table.labels, dtype=object), dtype=STRING_DTYPE)
    if table.image_index is not None:
        group.create_dataset("image_index", data=np.asarray(table.image_index, dtype=np.int64))
    group.attrs["fingerprint"] = ""


def status_counts(status: np.ndarray) -> dict[str, int]:
    """{"total", "done", "failed", "pending"} of a status column."""
    return {"total": int(len(status)), "done": int((status == Status.DONE).sum()),
            "failed": int((status == Status.FAILED).sum()), "pending": int((status == Status.PENDING).sum())}


def group_fingerprint(h5file: h5py.File, group: str) -> str:
    """sha256 of a group's status, ids and embeddings (read by blocks): what a faiss index was built from."""
    digest = hashlib.sha256()
    for name in ("status", "ids"):
        digest.update(np.ascontiguousarray(h5file[f"{group}/{name}"][()]).tobytes())
    embeddings = h5file[f"{group}/embeddings"]
    for start in range(0, embeddings.shape[0], READ_ROWS):
        digest.update(np.ascontiguousarray(embeddings[start:start + READ_ROWS]).tobytes())
    return digest.hexdigest()


class EmbeddingsFile(_H5Handle):
    """An embeddings file opened read-only: tables in memory, embeddings read by blocks of rows."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no embeddings file at {str(self.path)!r}; write one with `pipeline.py encode`")
        try:
            self.file = open_h5(self.path, "r")
        except StoreInUseError:
            raise
        except OSError as err:
            raise ValueError(f"{self.path} cannot be opened as HDF5 ({err}); is it an embeddings file?") from err
        self.attrs = read_attrs(self.file)
        if self.attrs.get("format") != FORMAT:
            self.file.close()
            raise ValueError(f"{self.path} is not an embeddings file of `pipeline.py encode` (format "
                             f"{self.attrs.get('format')!r}); a feature store goes to --store")
        if self.attrs.get("format_version") != FORMAT_VERSION:
            self.file.close()
            raise ValueError(f"{self.path}: embeddings format {self.attrs.get('format_version')} found, this code "
                             f"reads {FORMAT_VERSION}; encode again")
        self.groups = [group for group in GROUPS if group in self.file]

    def ids(self, group: str) -> np.ndarray:
        """int64 [N] ids of a group's rows."""
        return self.file[f"{group}/ids"][()]

    def labels(self, group: str) -> np.ndarray:
        """str [N] paths (images) or texts (captions) of a group's rows."""
        return np.asarray(self.file[f"{group}/{LABELS[group]}"].asstr()[()], dtype=object)

    def status(self, group: str) -> np.ndarray:
        """uint8 [N] status of a group's rows."""
        return self.file[f"{group}/status"][()]

    def image_index(self) -> np.ndarray | None:
        """int64 [M] image row of each caption (a store split), or None."""
        return self.file["captions/image_index"][()] if "captions/image_index" in self.file else None

    def fingerprint(self, group: str) -> str:
        """The group's fingerprint ("" while rows are pending)."""
        return str(self.file[group].attrs.get("fingerprint", ""))

    def config(self) -> dict:
        """The model's config as it was when the file was written."""
        return json.loads(self.attrs.get("config") or "{}")

    def done_rows(self, group: str) -> np.ndarray:
        """Sorted rows of `group` whose embeddings are written; ValueError if rows are pending or none is done."""
        if group not in self.groups:
            raise ValueError(f"{self.path} holds no {group} embeddings (it was encoded from "
                             f"{self.attrs.get('source')}); encode a store split or the {group} to search them")
        counts = status_counts(self.status(group))
        if counts["pending"]:
            raise ValueError(f"{self.path}: {counts['pending']} of {counts['total']} {group} are not embedded yet; "
                             "rerun the same `pipeline.py encode` command to finish it")
        rows = np.flatnonzero(self.status(group) == Status.DONE)
        if not len(rows):
            raise ValueError(f"{self.path}: no {group} row was embedded ({counts['failed']} failed)")
        return rows

    def blocks(self, group: str, rows: np.ndarray, *, block_rows: int = READ_ROWS) -> Iterator[np.ndarray]:
        """float32 embeddings of sorted `rows`, block by block of <= block_rows file rows (memory: one block)."""
        dataset = self.file[f"{group}/embeddings"]
        for start in range(0, dataset.shape[0], block_rows):
            lo, hi = np.searchsorted(rows, [start, start + block_rows])
            if lo < hi:
                span = dataset[start:int(rows[hi - 1]) + 1]  # one read; rows not asked for are dropped
                yield span if len(span) == hi - lo else np.ascontiguousarray(span[rows[lo:hi] - start])

    def read(self, group: str, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), E] embeddings of sorted `rows`, all at once."""
        blocks = list(self.blocks(group, rows))
        return np.concatenate(blocks) if blocks else np.zeros((0, int(self.attrs["embed_dim"])), np.float32)
