"""The search stage: sentences -> top-k images, images -> top-k captions, over an embeddings file or a store split.

Exact search is eval's rank engine (eval/topk.py) with the model's own similarity, so the position of a known
positive in the list is eval's rank of it (ties aside: topk lists equal scores by lower gallery row first, eval
counts them against the positive). --index faiss uses a faiss index saved beside the embeddings (retrieval/index.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from common.choices import SPLITS
from common.config import StageConfig
from common.fields import device_field, image_root_field, weights_field
from eval.blocks import swap_sim
from eval.topk import merge_topk, topk
from retrieval.api import VSE
from retrieval.embeddings import EmbeddingsFile
from retrieval.encode import read_sentences
from retrieval.images import list_images
from retrieval.index import FAISS_KINDS, IndexSpec, open_index, search_index
from retrieval.results import Gallery, format_results
from train.losses.similarity import similarity_function

logger = logging.getLogger(__name__)

INDEXES = ("exact", "faiss")


@dataclass
class SearchConfig(StageConfig):
    """Every option of the search stage: queries, the gallery (an embeddings file or a store split), the engine."""

    text: tuple[str, ...] = field(default=(), metadata={
        "help": "a sentence to find images for; repeatable", "multiple": True})
    text_file: str = field(default="", metadata={"help": "text file of sentences, one per line"})
    image: tuple[str, ...] = field(default=(), metadata={
        "help": "an image (or folder of images) to find captions for; repeatable", "multiple": True})
    embeddings: str = field(default="", metadata={"help": "embeddings file of `pipeline.py encode` to search"})
    checkpoint: str = field(default="", metadata={
        "help": "model that embeds the queries (default: the one that wrote --embeddings)"})
    store: str = field(default="", metadata={
        "help": "search this store's --split instead of an embeddings file (default: the checkpoint's store); also "
                "the store whose CNN embeds image queries for a train-stage checkpoint"})
    split: str = field(default="", metadata={"help": "store split to search without --embeddings (default: test)"})
    k: int = field(default=10, metadata={"help": "results per query"})
    index: str = field(default="exact", metadata={
        "help": "exact (chunked exact search, eval's engine) or faiss (an index saved beside --embeddings)",
        "choices": INDEXES})
    faiss_index: str = field(default="flat", metadata={
        "help": "with --index faiss: flat (exact inner product) or hnsw (approximate, for millions of rows)",
        "choices": FAISS_KINDS})
    hnsw_m: int = field(default=IndexSpec.hnsw_m, metadata={"help": "HNSW neighbours per node (build)"})
    hnsw_ef_construction: int = field(default=IndexSpec.ef_construction, metadata={
        "help": "HNSW candidate list while building"})
    hnsw_ef_search: int = field(default=IndexSpec.ef_search, metadata={
        "help": "HNSW candidate list while searching (recall vs time; at least k)"})
    rebuild_index: bool = field(default=False, metadata={"help": "rebuild the faiss index even if one is saved"})
    json: bool = field(default=False, metadata={"help": "print the results as one JSON document instead of tables"})
    image_root: str = image_root_field()
    weights: str = weights_field()
    batch_size: int = field(default=256, metadata={"help": "queries (or split rows) per forward pass"})
    workers: int = field(default=0, metadata={"help": "image decoding worker processes (0 = in this process)"})
    device: str = device_field()

    def validate(self) -> None:
        """Choices, a query, one gallery, k >= 1 (ValueError)."""
        super().validate()
        if not (self.text or self.text_file or self.image):
            raise ValueError("give a query: --text SENTENCE, --text-file FILE or --image PATH")
        if self.embeddings and self.split:
            raise ValueError("search either --embeddings FILE or a store --split, not both")
        if self.split and self.split not in SPLITS:
            raise ValueError(f"--split {self.split} is not one of {', '.join(SPLITS)}")
        if self.index == "faiss" and not self.embeddings:
            raise ValueError("--index faiss searches an embeddings file: write one with `pipeline.py encode --split "
                             "NAME --out E.h5` and pass --embeddings E.h5")
        if not self.embeddings and not self.checkpoint:
            raise ValueError("--checkpoint is required without --embeddings")
        self.check_at_least(1, "k", "batch_size", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search")
        self.check_at_least(0, "workers")

    def index_spec(self) -> IndexSpec:
        """The faiss index options."""
        return IndexSpec(kind=self.faiss_index, hnsw_m=self.hnsw_m, ef_construction=self.hnsw_ef_construction,
                         ef_search=self.hnsw_ef_search)


def exact_topk(query_emb: torch.Tensor, blocks: Iterable[np.ndarray | torch.Tensor], k: int, *,
               sim_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """eval.topk over gallery blocks read one at a time, merged in topk's order (score desc, row asc):
    the same list as one topk over the whole gallery, with memory bounded by a block."""
    best, offset = None, 0
    for block in blocks:
        scores, rows = topk(query_emb, block, min(k, len(block)), sim_fn=sim_fn)
        rows += offset
        best = (scores, rows) if best is None else merge_topk(*best, scores, rows, k)
        offset += len(block)
    return best


def check_model(embeddings: EmbeddingsFile, vse: VSE) -> None:
    """ValueError unless the file was written by this model's weights (a checkpoint or its export)."""
    if embeddings.attrs.get("model_sha256") != vse.model_sha256:
        raise ValueError(f"{embeddings.path} was encoded by another model ({embeddings.attrs.get('checkpoint')}, "
                         f"weights sha256 {str(embeddings.attrs.get('model_sha256'))[:12]}...) than {vse.path} "
                         f"({vse.model_sha256[:12]}...); encode it again with this model, or search with the "
                         "checkpoint that wrote it")


def queries_of(cfg: SearchConfig) -> tuple[list[str], list[str]]:
    """(sentences, image paths) of the options, checked (an empty sentence, a non-image file: ValueError)."""
    texts = list(cfg.text)
    if cfg.text_file:
        texts += read_sentences(cfg.text_file)[1]
    for number, text in enumerate(texts):
        if not text.strip():
            raise ValueError(f"query {number + 1} is empty: give a sentence with at least one word")
    return texts, list_images(cfg.image) if cfg.image else []


def load_galleries(cfg: SearchConfig, vse: VSE, groups: list[str]) -> dict[str, Gallery]:
    """The galleries the queries need ("images" for sentences, "captions" for images)."""
    if cfg.embeddings:
        with EmbeddingsFile(cfg.embeddings) as embeddings:
            check_model(embeddings, vse)
            galleries = {group: Gallery.from_file(embeddings, group) for group in groups}
    else:
        split = vse.encode_split(cfg.split or "test", store=cfg.store or None, image_root=cfg.image_root or None)
        galleries = {group: Gallery.from_split(split, group, name=f"{cfg.store or vse.store} {cfg.split or 'test'}")
                     for group in groups}
    return galleries


def k_for(cfg: SearchConfig, gallery: Gallery) -> tuple[int, str]:
    """(results per query, a note when fewer than --k): at most the gallery's size, as faiss and clip-retrieval
    return what there is."""
    if cfg.k <= gallery.size:
        return cfg.k, ""
    note = f"--k {cfg.k} asked; the gallery holds {gallery.size} {gallery.group}, so all {gallery.size} are listed"
    return gallery.size, note  # printed with the results (and in --json's "notes")


def search(cfg: SearchConfig, vse: VSE, gallery: Gallery, query_emb: torch.Tensor,
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores [Q, k], gallery positions [Q, k]) by the exact engine or the faiss index."""
    model_sim = similarity_function(vse.similarity_name)
    if cfg.index == "exact":  # eval's similarity, image side first (swap_sim for sentence queries over images)
        sim_fn = swap_sim(model_sim) if gallery.group == "images" else model_sim
        scores, positions = exact_topk(query_emb, gallery.blocks(), k, sim_fn=sim_fn)
        return scores.numpy(), positions.numpy()
    if vse.similarity_name != "cosine":
        raise ValueError(f"--index faiss ranks by inner product; this model uses the {vse.similarity_name} "
                         "similarity -||max(0, c - i)||, which an inner-product index cannot rank: use --index exact")
    with EmbeddingsFile(cfg.embeddings) as embeddings:
        index = open_index(embeddings, gallery.group, gallery.rows, spec=cfg.index_spec(), rebuild=cfg.rebuild_index)
    return search_index(index, query_emb.numpy(), k, spec=cfg.index_spec())


def run_search(cfg: SearchConfig) -> dict:
    """Search the queries of cfg; print a table per query (or the JSON document with cfg.json) and return it."""
    cfg.validate()
    texts, image_paths = queries_of(cfg)
    checkpoint = cfg.checkpoint
    if not checkpoint:
        with EmbeddingsFile(cfg.embeddings) as embeddings:
            checkpoint = embeddings.attrs.get("checkpoint", "")
        logger.info("queries are embedded by %s, the model that wrote %s", checkpoint, cfg.embeddings)
    vse = VSE.load(checkpoint, device=cfg.device, store=cfg.store or None, weights=cfg.weights or None,
                   batch_size=cfg.batch_size, workers=cfg.workers)
    galleries = load_galleries(cfg, vse, (["images"] if texts else []) + (["captions"] if image_paths else []))
    queries = []
    if texts:
        queries.append(("text", texts, vse.encode_text(texts), galleries["images"]))
    if image_paths:
        queries.append(("image", image_paths, vse.encode_images(image_paths), galleries["captions"]))
    engine = "exact" if cfg.index == "exact" else f"faiss-{cfg.faiss_index}"
    results = {"checkpoint": str(checkpoint), "index": engine, "k": cfg.k, "queries": [], "notes": []}
    for kind, inputs, query_emb, gallery in queries:
        k, note = k_for(cfg, gallery)
        scores, positions = search(cfg, vse, gallery, query_emb, k)
        results["queries"].extend(gallery.results(kind, inputs, scores, positions))
        results["notes"] += [note] if note else []
    results["galleries"] = {group: gallery.describe() for group, gallery in galleries.items()}
    print(json.dumps(results, indent=2) if cfg.json else format_results(results), flush=True)
    return results
