"""The global batch under torch.distributed: every rank's embeddings gathered, scored as this rank's queries.

With N ranks each holding B / N pairs of a global batch of G pairs, the VSE++ losses must still search
negatives over all G (DataParallel does, plain DDP would not). Each rank gathers every rank's embeddings
and ids (the gather's gradient flows back to the rows each rank owns) and computes only its own queries'
terms, against all G candidates, in both directions:
  caption retrieval: its image rows b (queries) x all captions c      scores [n, G]
  image retrieval:   its captions c (queries)  x all image rows b     scores [n, G]  (transposed block)
Query q's positive is candidate start + q (row b belongs to caption b). The sum of the ranks' terms is the
single-process loss of the global batch, and the gradient each rank computes is its share of that loss's
gradient: summed over ranks (the trainer's DDP sums, not averages) it is the single-process gradient.
Memory per rank: 2 n G scores, not G^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.distributed import Distributed
from train.losses.similarity import SimilarityFn


@dataclass
class GlobalBatch:
    """Every rank's rows of one step, in rank order; this rank's are rows [start, start + count)."""

    image_emb: torch.Tensor  # [G, E], rows of other ranks carry no gradient here (theirs do, on their rank)
    caption_emb: torch.Tensor  # [G, E]
    image_ids: torch.Tensor  # [G] store image rows: equal ids are positives
    caption_ids: torch.Tensor  # [G] store caption rows
    start: int
    count: int
    sizes: list[int]  # rows per rank
    context: Distributed

    @classmethod
    def gather(cls, image_emb: torch.Tensor, caption_emb: torch.Tensor, image_ids: torch.Tensor,
               caption_ids: torch.Tensor, context: Distributed) -> "GlobalBatch":
        """Gather the local pairs of every rank (a collective: every rank must call it)."""
        sizes = context.gather_sizes(len(image_emb))
        caption_ids = caption_ids.to(image_ids.device)
        return cls(image_emb=context.gather_rows(image_emb, sizes),
                   caption_emb=context.gather_rows(caption_emb, sizes),
                   image_ids=context.gather_rows(image_ids, sizes),
                   caption_ids=context.gather_rows(caption_ids, sizes),
                   start=sum(sizes[:context.rank]), count=sizes[context.rank], sizes=sizes, context=context)

    @property
    def size(self) -> int:
        """G, the global batch size."""
        return int(self.image_emb.shape[0])

    @property
    def local(self) -> slice:
        """This rank's rows."""
        return slice(self.start, self.start + self.count)

    def query_scores(self, similarity: SimilarityFn) -> tuple[torch.Tensor, torch.Tensor]:
        """(caption-retrieval scores, image-retrieval scores) of this rank's queries, each [n, G]."""
        caption_queries = similarity(self.image_emb[self.local], self.caption_emb)
        image_queries = similarity(self.image_emb, self.caption_emb[self.local]).T
        return caption_queries, image_queries

    def targets(self) -> torch.Tensor:
        """int64 [n]: the candidate column of each query's positive (start + q)."""
        return torch.arange(self.start, self.start + self.count, device=self.image_emb.device)

    def positives(self, scores: torch.Tensor) -> torch.Tensor:
        """[n]: each query's score against its positive."""
        return scores[torch.arange(self.count, device=scores.device), self.targets()]

    def positive_mask(self) -> torch.Tensor:
        """bool [n, G]: candidate shows the query's image (the positive and same-image duplicates).

        The same for both directions: image row b and caption b share the id image_ids[b].
        """
        return self.image_ids[self.local].unsqueeze(1) == self.image_ids.unsqueeze(0)

    def gather_values(self, values: torch.Tensor) -> torch.Tensor:
        """Every rank's per-query values [n] -> [G] in row order, without gradient."""
        return self.context.gather_rows(values.detach(), self.sizes)
