"""Dynamic group of hard negatives (Zhang et al., EACL 2023): the loss and its choice of k.

Same batch convention as train/losses/similarity.py: sims [B, B], row b = image of caption b, the
diagonal is each query's positive, pos_mask True for same-image pairs (never negatives). Reference for the
exact forms: the authors' code, github.com/96-Zachary/vse_2ad, losses.py (ContrastiveLoss.ADCTO).
GroupLoss chooses k as select_k does (over the global batch) and runs group_hard_negative_loss's body,
group_cross_entropy, on this rank's two query blocks; it logs k.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from common.choices import GROUP_K_MODES
from train.losses.base import LossOutput, VSELoss, mean_of_directions
from train.losses.global_batch import GlobalBatch
from train.losses.hinge import MARGIN
from train.losses.similarity import validate_batch

# The authors' defaults (github.com/96-Zachary/vse_2ad); their margin on the negatives' logits is VSE++'s, MARGIN.
GROUP_TEMPERATURE = 0.05  # softmax temperature tau
GROUP_GAMMA = 1.25  # exponent of the adaptive k
GROUP_K = 3  # k of their constant-k variant
K_STREAM = 2  # keeps the random-k stream apart from the data streams (train/data.py)


def _check_group_batch(sims: torch.Tensor, pos_mask: torch.Tensor) -> int:
    validate_batch(sims, pos_mask)
    if sims.shape[0] < 2:
        raise ValueError(f"the group loss needs a batch of at least 2 pairs, got {sims.shape[0]}")
    return sims.shape[0]


def group_cross_entropy(positive: torch.Tensor, negatives: torch.Tensor, *, k: int, temperature: float,
                        margin: float) -> torch.Tensor:
    """positive [Q], negatives [Q, N] (-inf = not a negative) -> sum over the Q queries of
    CE([p, n_1 + margin, ..., n_k + margin] / temperature, target 0) over the k largest negatives."""
    hardest = negatives.topk(k, dim=1).values  # [Q, k]; -inf slots where a query has < k negatives
    logits = torch.cat([positive.unsqueeze(1), hardest + margin], dim=1) / temperature  # [Q, 1 + k]
    targets = torch.zeros(positive.shape[0], dtype=torch.long, device=positive.device)
    return F.cross_entropy(logits, targets, reduction="sum")


def group_hard_negative_loss(sims: torch.Tensor, pos_mask: torch.Tensor, *, k: int,
                             temperature: float = GROUP_TEMPERATURE, margin: float = MARGIN) -> torch.Tensor:
    """Softmax cross-entropy against each query's k hardest negatives, both directions -> scalar.

    For a query q with positive score p_q and its k largest negative scores n_q1 >= ... >= n_qk:
      l_q = -log( exp(p_q / tau) / (exp(p_q / tau) + sum_j exp((n_qj + margin) / tau)) )
    Caption retrieval: queries = image rows b, p_b = sims[b, b], negatives sims[b, c], pos_mask False.
    Image retrieval: queries = captions c, p_c = sims[c, c], negatives sims[b, c], pos_mask False.
      loss = ( sum_b l_b(caption retrieval) / B + sum_c l_c(image retrieval) / B ) / 2   (as the authors)
    1 <= k <= B - 1. A query with fewer than k negatives (duplicate image rows) uses all it has: the
    missing slots are -inf logits, which add nothing to the softmax (a query without negatives gives 0).
    Unlike the authors' code (which zeroes the diagonal and sorts, so a positive can be picked as a
    "negative" when all negatives score below 0), positives are excluded by -inf.
    With k = 1 and tau -> 0, tau * l_q -> [margin + n_q1 - p_q]_+, the MH hinge.
    Each direction is `group_cross_entropy`, the body GroupLoss runs on a rank's block of queries.
    """
    batch = _check_group_batch(sims, pos_mask)
    if not 1 <= k <= batch - 1:
        raise ValueError(f"k must be in [1, B - 1] = [1, {batch - 1}], got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    positive = sims.diagonal()
    negatives = sims.masked_fill(pos_mask, float("-inf"))  # [B, C]
    return mean_of_directions(
        *(group_cross_entropy(positive, block, k=k, temperature=temperature, margin=margin)
          for block in (negatives, negatives.T)), pairs=batch)


def alignment_sums(positive: torch.Tensor, scores: torch.Tensor, pos_mask: torch.Tensor) -> torch.Tensor:
    """float64 [2]: (sum of the positives, sum over the block of exp(-s) with positives set to 0), no gradient;
    the sums adaptive_k divides by B and B * B."""
    positive, scores = positive.detach().double(), scores.detach().double()
    return torch.stack([positive.sum(), torch.exp(-scores.masked_fill(pos_mask, 0.0)).sum()])


@torch.no_grad()
def adaptive_k(sims: torch.Tensor, pos_mask: torch.Tensor, *, gamma: float = GROUP_GAMMA) -> int:
    """k from the batch's alignment and uniformity (no gradient): sims [B, B] -> int in [1, B - 1].

      align   = mean_b sims[b, b]                         (the sampled positive pairs)
      uniform = mean over all B * B entries of exp(-s), s = sims with every positive entry set to 0
                (so positives count exp(0) = 1, as the authors' `uniform` does for the diagonal;
                 here also for same-image off-diagonal entries)
      k = clip( floor( cos( (align + uniform) ** gamma ) * B ) + 1, 1, B - 1 )
    (align + uniform) is clamped at 0 before the power (a negative base has no real power; the
    authors' code would raise): then cos(0) = 1 and k = B - 1. At random init (all s near 0) the base
    is near 1 and k is about 0.54 B; well-trained cosine embeddings (positives near 1, negatives near
    0) give a base near 2, cos(2 ** 1.25) < 0 and k = 1 (MH-like).
    """
    batch = _check_group_batch(sims, pos_mask)
    return _k_of_sums(alignment_sums(sims.diagonal(), sims, pos_mask), batch=batch, gamma=gamma)


def _k_of_sums(sums: torch.Tensor, *, batch: int, gamma: float) -> int:
    """adaptive_k's k from alignment_sums over the whole batch (one host read)."""
    align_sum, uniform_sum = sums.tolist()
    return k_of_alignment(align_sum / batch + uniform_sum / batch ** 2, batch=batch, gamma=gamma)


def k_of_alignment(base: float, *, batch: int, gamma: float = GROUP_GAMMA) -> int:
    """k = clip(floor(cos(max(base, 0) ** gamma) * B) + 1, 1, B - 1), base = align + uniform (see adaptive_k)."""
    if not math.isfinite(base):
        raise ValueError(f"adaptive k needs finite similarities, got align + uniform = {base}")
    k = math.floor(math.cos(max(base, 0.0) ** gamma) * batch) + 1
    return min(max(k, 1), batch - 1)


def select_k(mode: str, sims: torch.Tensor, pos_mask: torch.Tensor, *, k: int | None = None,
             gamma: float = GROUP_GAMMA, generator: torch.Generator | None = None) -> int:
    """The number of hard negatives for this batch, by mode -> int in [1, B - 1].

    "adaptive": adaptive_k(sims, pos_mask, gamma=gamma) (the authors' method).
    "constant": k (required, >= 1), capped at B - 1 so a small last batch still works.
    "random":   uniform in [1, B - 1], drawn with `generator` (CPU; None = torch's global RNG, so a
                checkpoint that restores RNG states resumes the same draws).
    """
    batch = _check_group_batch(sims, pos_mask)
    if mode == "adaptive":
        return adaptive_k(sims, pos_mask, gamma=gamma)
    return batch_size_k(mode, batch, k=k, generator=generator)


def batch_size_k(mode: str, batch: int, *, k: int | None = None, generator: torch.Generator | None = None) -> int:
    """The k of the modes that need only the batch size B: "constant" (k capped at B - 1) and "random"."""
    if mode == "constant":
        if k is None or k < 1:
            raise ValueError(f"k mode 'constant' needs k >= 1, got {k}")
        return min(k, batch - 1)
    if mode == "random":
        return int(torch.randint(1, batch, (1,), generator=generator).item())
    raise ValueError(f"unknown k mode {mode!r}; valid: {', '.join(GROUP_K_MODES)}")


class GroupLoss(VSELoss):
    """group_hard_negative_loss with k chosen per batch by `k_mode`; logs k.

    The "random" k stream is a pure function of (seed, epoch, step): a resumed run draws the same k.
    The adaptive k is a number of the whole global batch (its sums are added over the ranks), read on the host
    every step: topk needs it as an int. A batch of one pair has no negative and contributes a zero loss (k 0).
    """

    def __init__(self, *, similarity: str, k_mode: str = "adaptive", k: int = GROUP_K, gamma: float = GROUP_GAMMA,
                 temperature: float = GROUP_TEMPERATURE, margin: float = MARGIN, seed: int = 0) -> None:
        super().__init__(similarity=similarity)
        if k_mode not in GROUP_K_MODES:
            raise ValueError(f"unknown k mode {k_mode!r}; valid: {', '.join(GROUP_K_MODES)}")
        self.k_mode, self.k, self.gamma, self.temperature, self.margin = k_mode, k, gamma, temperature, margin
        self.seed = seed

    def k_generator(self, epoch: int, step: int) -> torch.Generator:
        """The CPU generator of the random k of batch (epoch, step)."""
        seed = np.random.SeedSequence([self.seed, epoch, step, K_STREAM]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(seed))

    def batch_loss(self, batch: GlobalBatch, *, epoch: int, step: int) -> LossOutput:
        caption_scores, image_scores = batch.query_scores(self.similarity)
        if batch.size < 2:
            return LossOutput(caption_scores.sum() * 0.0, {"k": 0})
        caption_mask, image_mask = batch.positive_masks()
        if self.k_mode == "adaptive":
            sums = batch.context.sum(alignment_sums(batch.positives(caption_scores), caption_scores, caption_mask))
            k = _k_of_sums(sums, batch=batch.size, gamma=self.gamma)
        else:
            k = batch_size_k(self.k_mode, batch.size, k=self.k, generator=self.k_generator(epoch, step))
        caption_total, image_total = (
            group_cross_entropy(batch.positives(scores), scores.masked_fill(mask, float("-inf")), k=k,
                                temperature=self.temperature, margin=self.margin)
            for scores, mask in ((caption_scores, caption_mask), (image_scores, image_mask)))
        return LossOutput(mean_of_directions(caption_total, image_total, pairs=batch.size), {"k": k})
