"""faiss indexes over one group of an embeddings file: exact inner product (flat) or HNSW, saved beside the file.

An index is two files beside the embeddings, `<file>.<group>.faiss-<kind>.index` and its `.json` record (kind,
build parameters, the group's fingerprint, row count, dim, and the index file's own size and sha256). It is used
only while the record's fingerprint is the group's and the index file is the one the record pins (its size and
sha256, checked before faiss reads it): an index built from other embeddings, swapped for another file, changed,
cut short or empty is refused (rebuild it with rebuild=True / --rebuild-index). Index position p is done row rows[p]
of the group.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from common.files import atomic_write_json
from extract.weights import sha256_of_file
from retrieval.embeddings import EmbeddingsFile

logger = logging.getLogger(__name__)

FAISS_KINDS = ("flat", "hnsw")  # flat: exact inner product; hnsw: approximate graph search (millions of rows)


@dataclass(frozen=True)
class IndexSpec:
    """How an index is built and searched."""

    kind: str = "flat"  # one of FAISS_KINDS
    hnsw_m: int = 32  # graph neighbours per node (HNSW): more = better recall, more memory and build time
    ef_construction: int = 80  # candidate list while building (HNSW)
    ef_search: int = 128  # candidate list while searching (HNSW; raised to k when smaller)

    def build_params(self) -> dict:
        """What the saved index depends on (the search-time ef_search is not part of it)."""
        params = asdict(self)
        params.pop("ef_search")
        if self.kind == "flat":
            params = {"kind": "flat"}
        return params


def faiss_module():
    """faiss, imported on first use (faiss-cpu is a dependency; importing it costs ~0.3 s and spawns no work)."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its INFO lines report the CPU build it probed
    try:
        import faiss
    except ImportError as err:  # a broken install; the package lists faiss-cpu
        raise ValueError(f"--index faiss needs the faiss-cpu package ({err}); pip install faiss-cpu") from err
    return faiss


def index_paths(embeddings_path: str | Path, group: str, kind: str) -> tuple[Path, Path]:
    """(index file, its JSON record) of a group's index of `kind`, beside the embeddings file."""
    base = Path(embeddings_path)
    stem = f"{base.name}.{group}.faiss-{kind}"
    return base.with_name(stem + ".index"), base.with_name(stem + ".json")


def build_index(blocks: Iterable[np.ndarray], *, dim: int, spec: IndexSpec):
    """A faiss inner-product index of the rows of `blocks` (float32 [n, dim] each), added block by block."""
    faiss = faiss_module()
    if spec.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.ef_construction
    else:
        raise ValueError(f"unknown faiss index kind {spec.kind!r}; valid: {', '.join(FAISS_KINDS)}")
    for block in blocks:
        index.add(np.ascontiguousarray(block, dtype=np.float32))
    return index


def search_index(index, query_emb: np.ndarray, k: int, *, spec: IndexSpec) -> tuple[np.ndarray, np.ndarray]:
    """(scores [Q, k] float32, positions [Q, k] int64) of the k best rows by inner product, best first."""
    if spec.kind == "hnsw":
        index.hnsw.efSearch = max(spec.ef_search, k)
    scores, positions = index.search(np.ascontiguousarray(query_emb, dtype=np.float32), k)
    if (positions < 0).any():  # HNSW can return fewer than k when ef_search is too small for the graph
        raise ValueError(f"the {spec.kind} index found fewer than k={k} results; raise --hnsw-ef-search")
    return scores, positions.astype(np.int64)


def _write_index(index, path: Path) -> None:
    """faiss.write_index to a temporary name beside `path`, then renamed (no half-written index)."""
    handle, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        faiss_module().write_index(index, tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _saved_index_problems(index_path: Path, record_path: Path, *, fingerprint: str, spec: IndexSpec) -> list[str]:
    """Why a saved index does not fit: its record unreadable, built from other embeddings or with other
    parameters, or the index file not the one the record pins (size, then sha256); [] when it fits."""
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        record = None
    if not isinstance(record, dict):
        return [f"its record {record_path.name} is not a JSON object"]
    problems = []
    if record.get("fingerprint") != fingerprint:
        problems.append("it was built from other embeddings (fingerprint "
                        f"{str(record.get('fingerprint'))[:12]}... vs the file's {fingerprint[:12]}...)")
    if record.get("build") != spec.build_params():
        problems.append(f"it was built with {record.get('build')}, not {spec.build_params()}")
    if "index_sha256" not in record:
        return problems + ["its record does not pin the index file (size and sha256; written by an older version)"]
    size = index_path.stat().st_size
    if size != record.get("index_bytes"):
        return problems + [f"the index file is {size} bytes, its record says {record.get('index_bytes')} (another, "
                           "cut short or empty file)"]
    if sha256_of_file(index_path) != record["index_sha256"]:
        return problems + ["the index file's sha256 is not its record's (the file was changed or swapped)"]
    return problems


def open_index(embeddings: EmbeddingsFile, group: str, rows: np.ndarray, *, spec: IndexSpec,
               rebuild: bool = False):
    """The saved index of a group's done `rows`, checked against the file; built and saved when absent.

    ValueError when a saved index was built from other embeddings (fingerprint), with other build parameters,
    is not the file its record pins (size, sha256), cannot be read by faiss, or does not hold len(rows) rows of
    the file's dim: pass rebuild=True to replace it.
    """
    fingerprint = embeddings.fingerprint(group)
    if not fingerprint:
        raise ValueError(f"{embeddings.path}: the {group} have no fingerprint (rows pending); finish the encode first")
    index_path, record_path = index_paths(embeddings.path, group, spec.kind)
    dim = int(embeddings.attrs["embed_dim"])
    if index_path.is_file() and record_path.is_file() and not rebuild:
        problems = _saved_index_problems(index_path, record_path, fingerprint=fingerprint, spec=spec)
        if problems:
            raise ValueError(f"faiss index {index_path} does not fit {embeddings.path}: {'; '.join(problems)}; pass "
                             "--rebuild-index to rebuild it")
        try:
            index = faiss_module().read_index(str(index_path))
        except RuntimeError as err:  # the file is the one pinned, so faiss itself changed or the disk did
            raise ValueError(f"faiss index {index_path} cannot be read by faiss {faiss_module().__version__} "
                             f"({str(err).splitlines()[0][:200]}); pass --rebuild-index to rebuild it") from err
        if index.ntotal != len(rows) or index.d != dim:
            raise ValueError(f"faiss index {index_path} holds {index.ntotal} rows of dim {index.d}, the file "
                             f"{len(rows)} of dim {dim}; pass --rebuild-index to rebuild it")
        logger.info("using the faiss %s index %s (%d rows)", spec.kind, index_path, index.ntotal)
        return index
    start = time.perf_counter()
    index = build_index(embeddings.blocks(group, rows), dim=dim, spec=spec)
    seconds = time.perf_counter() - start
    record_path.unlink(missing_ok=True)  # a crash below leaves no record, hence no index that looks valid
    _write_index(index, index_path)
    atomic_write_json(record_path, {"embeddings": str(embeddings.path), "group": group, "build": spec.build_params(),
                                    "fingerprint": fingerprint, "rows": int(len(rows)), "dim": dim,
                                    "index_bytes": index_path.stat().st_size,
                                    "index_sha256": sha256_of_file(index_path),
                                    "build_seconds": round(seconds, 3),
                                    "faiss_version": str(faiss_module().__version__)})
    logger.info("built the faiss %s index of %d %s in %.1f s: %s", spec.kind, len(rows), group, seconds, index_path)
    return index
