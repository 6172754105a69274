"""The global batch of one step: every rank's embeddings gathered, scored as this rank's queries.

One process is the global batch of one rank: every loss has one body, `VSELoss.batch_loss(batch)`, and how the
rows were gathered is the only distributed difference (as open_clip's ClipLoss). With N ranks each holding
B / N pairs of a global batch of G pairs, the VSE++ losses must still search negatives over all G
(DataParallel does, plain DDP would not). Each rank gathers every rank's embeddings and ids (the gather's
gradient flows back to the rows each rank owns) and computes only its own queries' terms, against all G
candidates, in both directions:
  caption retrieval: its image rows b (queries) x all captions c      scores [n, G]
  image retrieval:   its captions c (queries)  x all image rows b     scores [n, G]  (transposed block)
Query q's positive is candidate start + q (row b belongs to caption b). The sum of the ranks' terms is the
single-process loss of the global batch, and the gradient each rank computes is its share of that loss's
gradient: summed over ranks (the trainer's DDP sums, not averages) it is the single-process gradient.
Memory per rank: 2 n G scores, not G^2; one rank (n = G) forms the G x G matrix once and reads its transpose.
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
        if context.enabled:  # the collective needs them on the device; one process keeps them where they are
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

    def query_blocks(self, pairwise: SimilarityFn, rows: torch.Tensor,
                     columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pairwise(rows[local], columns), pairwise(rows, columns[local]).T), each [n, G]: entry (b, c) of a
        pairwise matrix seen from this rank's rows b, then from this rank's columns c."""
        row_block = pairwise(rows[self.local], columns)
        if self.count == self.size:  # this rank holds every row: the column block is the same matrix, transposed
            return row_block, row_block.T
        return row_block, pairwise(rows, columns[self.local]).T

    def query_scores(self, similarity: SimilarityFn) -> tuple[torch.Tensor, torch.Tensor]:
        """(caption-retrieval scores, image-retrieval scores) of this rank's queries, each [n, G]."""
        return self.query_blocks(similarity, self.image_emb, self.caption_emb)

    def targets(self) -> torch.Tensor:
        """int64 [n]: the candidate column of each query's positive (start + q)."""
        return torch.arange(self.start, self.start + self.count, device=self.image_emb.device)

    def positives(self, scores: torch.Tensor) -> torch.Tensor:
        """[n]: each query's score against its positive."""
        return scores[torch.arange(self.count, device=scores.device), self.targets()]

    def positive_masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """bool [n, G] of both query blocks: the candidate shows the query's image (the positive and same-image
        duplicates). Equal in value (image row b and caption b share the id image_ids[b]); one rank's second
        block is the first's transpose, laid out as its scores are."""
        return self.query_blocks(_same_id, self.image_ids, self.image_ids)

    def gather_values(self, values: torch.Tensor) -> torch.Tensor:
        """Every rank's per-query values [n] -> [G] in row order, without gradient."""
        return self.context.gather_rows(values.detach(), self.sizes)


def _same_id(row_ids: torch.Tensor, column_ids: torch.Tensor) -> torch.Tensor:
    """bool [R, C]: row_ids[r] == column_ids[c]."""
    return row_ids.unsqueeze(1) == column_ids.unsqueeze(0)
