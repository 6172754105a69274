"""The retrievals a report shows: ranks, the Recall@K curve and its chance level, sampled and worst queries."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from eval.blocks import swap_sim
from eval.rank import retrieval_ranks, sort_by_image
from eval.topk import topk


@dataclass
class Hit:
    """One listed result of a query: a gallery row, its score, and whether it is a right answer."""

    row: int  # image position (caption queries) or caption position (image queries) in the split
    score: float
    right: bool


@dataclass
class Example:
    """A query of the split, its listed results, and where its right answer ranks."""

    query: int  # caption position (kind "caption") or image position (kind "image")
    kind: str
    hits: list[Hit]
    rank: int  # eval's 1-based rank of the right answer (the best of an image's captions)
    right_row: int  # the right image (caption query) or the best-ranked own caption (image query)
    right_score: float


def recall_curve(ranks: np.ndarray, *, ks: list[int] | np.ndarray) -> np.ndarray:
    """R@K in percent of 1-based ranks for each K."""
    ranks = np.asarray(ranks)
    return np.asarray([100.0 * float(np.mean(ranks <= k)) for k in ks])


class SplitRetrievals:
    """Eval's ranks of a split's embeddings, and the listed results of any query (eval's top-k engine)."""

    def __init__(self, image_emb: torch.Tensor, caption_emb: torch.Tensor, caption_image_index: np.ndarray, *,
                 sim_fn) -> None:
        self.image_emb, self.caption_emb, self.sim_fn = image_emb, caption_emb, sim_fn
        self.caption_image_index = np.asarray(caption_image_index, dtype=np.int64)
        i2t, t2i = retrieval_ranks(image_emb, caption_emb, self.caption_image_index, sim_fn=sim_fn)
        self.i2t_ranks, self.t2i_ranks = i2t.cpu().numpy(), t2i.cpu().numpy()
        order, counts = sort_by_image(self.caption_image_index, len(image_emb))
        by_image = np.arange(len(self.caption_image_index)) if order is None else order
        self.captions_of = np.split(by_image, np.cumsum(counts)[:-1])  # each image's captions, ascending

    @property
    def num_images(self) -> int:
        return len(self.image_emb)

    @property
    def num_captions(self) -> int:
        return len(self.caption_emb)

    def pair_score(self, image: int, caption: int) -> float:
        return float(self.sim_fn(self.image_emb[image:image + 1], self.caption_emb[caption:caption + 1])[0, 0])

    def caption_query(self, caption: int, *, k: int, skip_right: bool = False) -> Example:
        """Top-k images of a caption; with skip_right, the k best images that are not its own (hard negatives)."""
        right = int(self.caption_image_index[caption])
        listed = min(k + int(skip_right), self.num_images)
        scores, rows = topk(self.caption_emb[caption:caption + 1], self.image_emb, listed, sim_fn=swap_sim(self.sim_fn))
        hits = [Hit(int(row), float(score), int(row) == right) for score, row in zip(scores[0], rows[0])]
        if skip_right:
            hits = [hit for hit in hits if not hit.right]
        return Example(caption, "caption", hits[:k], int(self.t2i_ranks[caption]), right,
                       self.pair_score(right, caption))

    def image_query(self, image: int, *, k: int, skip_right: bool = False) -> Example:
        """Top-k captions of an image; with skip_right, the k best captions of other images (hard negatives)."""
        own = self.captions_of[image]
        listed = min(k + (len(own) if skip_right else 0), self.num_captions)
        scores, rows = topk(self.image_emb[image:image + 1], self.caption_emb, listed, sim_fn=self.sim_fn)
        hits = [Hit(int(row), float(score), int(self.caption_image_index[row]) == image)
                for score, row in zip(scores[0], rows[0])]
        if skip_right:
            hits = [hit for hit in hits if not hit.right]
        own_scores = [self.pair_score(image, int(caption)) for caption in own]
        best = int(np.argmax(own_scores))
        return Example(image, "image", hits[:k], int(self.i2t_ranks[image]), int(own[best]), own_scores[best])

    def sampled(self, count: int, *, k: int, seed: int) -> tuple[list[Example], list[Example]]:
        """(caption queries, image queries), `count` of each drawn at random (seeded): the captions of distinct
        images (one random caption each) and, in a second draw, images; in split order."""
        generator = np.random.default_rng(seed)
        images = generator.choice(self.num_images, min(count, self.num_images), replace=False)
        captions = np.sort([generator.choice(self.captions_of[image]) for image in images])
        images = np.sort(generator.choice(self.num_images, min(count, self.num_images), replace=False))
        return ([self.caption_query(int(c), k=k) for c in captions], [self.image_query(int(i), k=k) for i in images])

    def worst(self, count: int, *, k: int) -> tuple[list[Example], list[Example]]:
        """(caption queries, image queries) whose right answer ranks lowest, worst first (ties: split order; at
        most one caption per image; none ranked first), each with the results that beat the right answer (at most k)."""
        caption_order = np.argsort(-self.t2i_ranks, kind="stable")
        caption_order = caption_order[self.t2i_ranks[caption_order] > 1]  # a query ranked first has no such list
        _, first = np.unique(self.caption_image_index[caption_order], return_index=True)
        captions = caption_order[np.sort(first)][:count]  # each image's worst caption, in the worst-first order
        images = np.argsort(-self.i2t_ranks, kind="stable")
        images = images[self.i2t_ranks[images] > 1][:count]
        out = ([self.caption_query(int(row), k=k, skip_right=True) for row in captions],
               [self.image_query(int(row), k=k, skip_right=True) for row in images])
        for example in out[0] + out[1]:
            example.hits = example.hits[:max(example.rank - 1, 0)]
        return out
