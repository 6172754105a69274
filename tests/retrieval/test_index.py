"""faiss indexes (retrieval/index.py) against the exact engine on a random gallery; stale indexes are refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.blocks import swap_sim
from retrieval.embeddings import EmbeddingsFile, EmbeddingsWriter, GroupTable
from retrieval.index import IndexSpec, index_paths, open_index, search_index
from retrieval.search import exact_topk
from train.losses.similarity import cosine_sim

ROWS, DIM = 4000, 32


def write_gallery(path: Path, seed: int, *, failed: tuple[int, ...] = ()) -> np.ndarray:
    """An embeddings file of ROWS unit rows (some marked failed); returns the embeddings."""
    generator = np.random.default_rng(seed)
    emb = generator.standard_normal((ROWS, DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    table = GroupTable(np.arange(ROWS), [f"{row}.jpg" for row in range(ROWS)])
    with EmbeddingsWriter.create(path, tables={"images": table}, embed_dim=DIM,
                                 attrs={"source": "images", "embed_dim": DIM}) as writer:
        done = np.setdiff1d(np.arange(ROWS), failed)
        writer.write_rows("images", done, emb[done])
        writer.mark_failed("images", np.asarray(failed, dtype=np.int64), ["broken"] * len(failed))
        writer.finish()
    return emb


def queries(seed: int = 7, count: int = 50) -> torch.Tensor:
    rows = torch.from_numpy(np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32))
    return rows / rows.norm(dim=1, keepdim=True)


def test_the_flat_index_gives_the_exact_searchs_ids_and_scores_and_hnsw_recalls(tmp_path):
    emb = write_gallery(tmp_path / "g.h5", 0, failed=(3, 1000))
    query_emb = queries()
    with EmbeddingsFile(tmp_path / "g.h5") as embeddings:
        rows = embeddings.done_rows("images")
        assert len(rows) == ROWS - 2
        scores, positions = exact_topk(query_emb, embeddings.blocks("images", rows, block_rows=1500), 10,
                                       sim_fn=swap_sim(cosine_sim))
        whole_scores, whole_positions = exact_topk(query_emb, [emb[rows]], 10, sim_fn=swap_sim(cosine_sim))
        assert torch.equal(positions, whole_positions) and torch.equal(scores, whole_scores)  # blocks change nothing
        flat = open_index(embeddings, "images", rows, spec=IndexSpec("flat"))
        flat_scores, flat_positions = search_index(flat, query_emb.numpy(), 10, spec=IndexSpec("flat"))
        assert np.array_equal(flat_positions, positions.numpy())
        np.testing.assert_allclose(flat_scores, scores.numpy(), rtol=0, atol=1e-5)
        spec = IndexSpec("hnsw", hnsw_m=16, ef_construction=40, ef_search=64)
        hnsw = open_index(embeddings, "images", rows, spec=spec)
        _, hnsw_positions = search_index(hnsw, query_emb.numpy(), 10, spec=spec)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(hnsw_positions.tolist(), positions.tolist())])
    assert recall >= 0.9


def test_an_index_of_other_embeddings_or_options_is_refused_until_rebuilt(tmp_path):
    write_gallery(tmp_path / "g.h5", 0)
    spec = IndexSpec("hnsw", hnsw_m=8, ef_construction=16)
    with EmbeddingsFile(tmp_path / "g.h5") as embeddings:
        open_index(embeddings, "images", embeddings.done_rows("images"), spec=spec)
    write_gallery(tmp_path / "g.h5", 1)  # the same file name, other embeddings
    with EmbeddingsFile(tmp_path / "g.h5") as embeddings:
        rows = embeddings.done_rows("images")
        with pytest.raises(ValueError, match="built from other embeddings.*--rebuild-index"):
            open_index(embeddings, "images", rows, spec=spec)
        index = open_index(embeddings, "images", rows, spec=spec, rebuild=True)
        assert index.ntotal == ROWS
        with pytest.raises(ValueError, match="built with"):
            open_index(embeddings, "images", rows, spec=IndexSpec("hnsw", hnsw_m=16, ef_construction=16))
        assert open_index(embeddings, "images", rows, spec=IndexSpec("hnsw", hnsw_m=8, ef_construction=16,
                                                                     ef_search=5)).ntotal == ROWS
    assert [path.name for path in index_paths(tmp_path / "g.h5", "images", "hnsw")] == [
        "g.h5.images.faiss-hnsw.index", "g.h5.images.faiss-hnsw.json"]


@pytest.mark.parametrize("damage, message", [
    ("swap", "sha256 is not its record's"),
    ("flip", "sha256 is not its record's"),
    ("truncate", r"the index file is \d+ bytes, its record says \d+"),
    ("empty", "the index file is 0 bytes"),
    ("record", "its record g.h5.images.faiss-flat.json is not a JSON object"),
    ("old-record", "does not pin the index file"),
    ("pinned-garbage", "cannot be read by faiss"),
])
def test_an_index_file_that_is_not_the_one_its_record_pins_is_refused_with_one_line(tmp_path, damage, message):
    write_gallery(tmp_path / "g.h5", 0)
    write_gallery(tmp_path / "other.h5", 1)
    spec = IndexSpec("flat")
    for name in ("g.h5", "other.h5"):
        with EmbeddingsFile(tmp_path / name) as embeddings:
            open_index(embeddings, "images", embeddings.done_rows("images"), spec=spec)
    index_path, record_path = index_paths(tmp_path / "g.h5", "images", "flat")
    data = index_path.read_bytes()
    if damage == "swap":  # another gallery's index of the same size, under this one's record
        index_path.write_bytes(index_paths(tmp_path / "other.h5", "images", "flat")[0].read_bytes())
    elif damage == "flip":
        index_path.write_bytes(data[:-64] + bytes(byte ^ 0xFF for byte in data[-64:]))
    elif damage == "truncate":
        index_path.write_bytes(data[:len(data) // 2])
    elif damage == "empty":
        index_path.write_bytes(b"")
    elif damage == "record":
        record_path.write_text("[1, 2")
    elif damage == "old-record":
        record_path.write_text(json.dumps({key: value for key, value in json.loads(record_path.read_text()).items()
                                           if not key.startswith("index_")}))
    else:  # a file the record pins that faiss cannot read: its error is one line too
        index_path.write_bytes(b"not an index")
        record = json.loads(record_path.read_text())
        record.update(index_bytes=12, index_sha256=hashlib.sha256(b"not an index").hexdigest())
        record_path.write_text(json.dumps(record))
    with EmbeddingsFile(tmp_path / "g.h5") as embeddings:
        rows = embeddings.done_rows("images")
        with pytest.raises(ValueError, match=f"{message}.*; pass --rebuild-index to rebuild it$") as raised:
            open_index(embeddings, "images", rows, spec=spec)
        assert "\n" not in str(raised.value)
        index = open_index(embeddings, "images", rows, spec=spec, rebuild=True)
        _, positions = search_index(index, queries().numpy(), 3, spec=spec)
        assert open_index(embeddings, "images", rows, spec=spec).ntotal == ROWS
    assert index_path.read_bytes() == data
