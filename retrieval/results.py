"""What search ranks and shows: a gallery (one side of an embeddings file or a store split) and the result tables."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from retrieval.embeddings import EmbeddingsFile

logger = logging.getLogger(__name__)

CELL_CHARS = 70  # the text column of a table is cut to this many characters


@dataclass
class Gallery:
    """The rows a query ranks: their ids and labels, what is known about each, and their embeddings."""

    group: str  # "images" (sentence queries) or "captions" (image queries)
    name: str  # where it comes from, for messages
    ids: np.ndarray  # int64 [G] store rows, list positions or line numbers
    labels: list[str]  # [G] image paths or caption texts
    related: list[list[str]] | None  # images: each one's captions; captions: [the image's path]; None if unknown
    emb: torch.Tensor | None = None  # [G, E] in memory (a store split), else read by blocks from `path`
    path: Path | None = None
    rows: np.ndarray | None = None  # int64 [G] the file rows of the gallery (done rows)

    @property
    def size(self) -> int:
        return len(self.ids)

    @classmethod
    def from_file(cls, embeddings: EmbeddingsFile, group: str) -> "Gallery":
        """The done rows of a group of an embeddings file (ValueError if rows are pending)."""
        rows = embeddings.done_rows(group)
        failed = len(embeddings.ids(group)) - len(rows)
        if failed:
            logger.warning("%d %s of %s failed to embed and are not searched", failed, group, embeddings.path)
        index = embeddings.image_index()
        related = None
        if index is not None and group == "images":
            texts = embeddings.labels("captions")
            per_image: list[list[str]] = [[] for _ in range(len(embeddings.ids("images")))]
            for caption, image in enumerate(index.tolist()):
                per_image[image].append(str(texts[caption]))
            related = [per_image[row] for row in rows]
        elif index is not None:
            paths = embeddings.labels("images")
            related = [[str(paths[index[row]])] for row in rows]
        return cls(group, str(embeddings.path), embeddings.ids(group)[rows],
                   [str(label) for label in embeddings.labels(group)[rows]], related, path=embeddings.path, rows=rows)

    @classmethod
    def from_split(cls, split: object, group: str, *, name: str) -> "Gallery":
        """One side of a retrieval.api.SplitEmbeddings, in memory."""
        if group == "images":
            per_image: list[list[str]] = [[] for _ in split.image_paths]
            for text, image in zip(split.caption_texts, split.caption_image_index.tolist()):
                per_image[image].append(text)
            return cls(group, name, split.image_rows, list(split.image_paths), per_image, emb=split.image_emb)
        related = [[split.image_paths[image]] for image in split.caption_image_index.tolist()]
        return cls(group, name, split.caption_rows, list(split.caption_texts), related, emb=split.caption_emb)

    def blocks(self) -> Iterator[np.ndarray | torch.Tensor]:
        """The gallery's embeddings in order, one block at a time."""
        if self.emb is not None:
            yield self.emb
            return
        with EmbeddingsFile(self.path) as embeddings:
            yield from embeddings.blocks(self.group, self.rows)

    def describe(self) -> dict:
        """Where the gallery comes from and its size (for the JSON document)."""
        return {"source": self.name, "group": self.group, "size": self.size}

    def results(self, kind: str, inputs: list[str], scores: np.ndarray, positions: np.ndarray) -> list[dict]:
        """One dict per query: the query and its ranked rows (rank, score, id, label, what is known of it)."""
        label, known = ("path", "captions") if self.group == "images" else ("text", "image")
        out = []
        for query, row_scores, row_positions in zip(inputs, scores.tolist(), positions.tolist()):
            ranked = []
            for rank, (score, position) in enumerate(zip(row_scores, row_positions), start=1):
                entry = {"rank": rank, "score": float(score), "id": int(self.ids[position]),
                         label: self.labels[position]}
                if self.related is not None:
                    entry[known] = self.related[position] if known == "captions" else self.related[position][0]
                ranked.append(entry)
            out.append({"kind": kind, "query": query, "results": ranked})
        return out


def _cut(text: str, width: int = CELL_CHARS) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def format_results(results: dict) -> str:
    """Human-readable tables, one per query: rank, score, id, and the image path and captions (or caption text)."""
    blocks = []
    for number, query in enumerate(results["queries"], start=1):
        target = "images" if query["kind"] == "text" else "captions"
        lines = [f"{query['kind']} query {number}: {query['query']!r} -> top {len(query['results'])} {target} "
                 f"({results['index']})", f"  {'rank':>4}  {'score':>9}  {'id':>7}  "
                                          + ("path   captions" if target == "images" else "caption   [image]")]
        for entry in query["results"]:
            if target == "images":
                extra = " | ".join(entry.get("captions", []))
                text = f"{entry['path']}" + (f"   {_cut(extra)}" if extra else "")
            else:
                text = _cut(entry["text"]) + (f"   [{entry['image']}]" if entry.get("image") else "")
            lines.append(f"  {entry['rank']:>4}  {entry['score']:>9.4f}  {entry['id']:>7}  {text}")
        blocks.append("\n".join(lines))
    blocks += [f"note: {note}" for note in results.get("notes", [])]  # e.g. --k larger than the gallery
    return "\n\n".join(blocks)
