"""Pooling of a padded set of vectors [B, K, D] with lengths [B] into [B, D]: helpers, adaptive, GPO.

Every function and module here respects `lengths`: positions k >= lengths[b] are padding and never
reach the output (their values are never read into a sum, max or softmax).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

ADAPTIVE_VALUE_TEMPERATURE = 1.0  # Zhang et al.'s code: plain softmax over the sorted values
LIMIT_VALUE_TEMPERATURE = 1e-6  # AdaptivePooling.limit("max"): branch (a) becomes the max
GATE_SATURATION = 50.0  # gate bias of AdaptivePooling.limit: sigmoid(+-50) is 1 / 0 in float32
GPO_PE_DIM = 32  # VSE-infinity defaults: positional-encoding size, GRU hidden size, softmax temperature
GPO_HIDDEN_DIM = 32
GPO_TEMPERATURE = 0.1
POOL_LIMITS = ("max", "mean")


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Valid positions: lengths [B] -> bool [B, max_len], True where k < lengths[b]."""
    positions = torch.arange(max_len, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


def _check_set(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Validate x [B, K, D] and lengths [B] (1 <= length <= K) -> valid mask [B, K, 1]."""
    if x.dim() != 3:
        raise ValueError(f"expected a padded set [B, K, D], got shape {tuple(x.shape)}")
    if lengths.dim() != 1 or lengths.shape[0] != x.shape[0] or lengths.is_floating_point():
        raise ValueError(f"lengths must be an integer tensor [B] with B = {x.shape[0]}, "
                         f"got {lengths.dtype} {tuple(lengths.shape)}")
    if x.shape[0] > 0 and (int(lengths.min()) < 1 or int(lengths.max()) > x.shape[1]):
        raise ValueError(f"lengths must be in [1, K = {x.shape[1]}], got min {int(lengths.min())} "
                         f"max {int(lengths.max())}")
    return length_mask(lengths.to(x.device), x.shape[1]).unsqueeze(-1)


def masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over the valid positions: x [B, K, D], lengths [B] -> [B, D]."""
    valid = _check_set(x, lengths)
    total = x.masked_fill(~valid, 0.0).sum(dim=1)
    return total / lengths.to(device=x.device, dtype=x.dtype).unsqueeze(1)


def masked_max(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-dimension max over the valid positions: x [B, K, D], lengths [B] -> [B, D]."""
    valid = _check_set(x, lengths)
    return x.masked_fill(~valid, float("-inf")).max(dim=1).values


def gather_last(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The last valid timestep x[b, lengths[b] - 1]: x [B, K, D], lengths [B] -> [B, D]."""
    _check_set(x, lengths)
    index = (lengths.to(x.device) - 1).view(-1, 1, 1).expand(-1, 1, x.shape[2])  # [B, 1, D]
    return x.gather(1, index).squeeze(1)


def _descending_order(x: torch.Tensor) -> torch.Tensor:
    """int64 [B, K, D]: the positions k that sort each x[b, :, d] descending (a CPU float tensor).

    numpy's argsort of contiguous rows (SIMD sorting networks) takes a tenth of the time of torch.sort along
    dim 1 for the small sets pooled here (bench/pool_step.py); the order of equal values may differ, their
    values never do.
    """
    rows = np.ascontiguousarray((-x).transpose(1, 2).numpy())  # [B, D, K], ascending of -x
    return torch.from_numpy(np.argsort(rows, axis=-1)).transpose(1, 2)


def sort_set(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Sort each dimension over the valid positions, descending; padding -> 0 at the tail.

    x [B, K, D], valid bool [B, K, 1] -> [B, K, D] with out[b, j, d] the (j+1)-th largest of
    x[b, :lengths[b], d] for j < lengths[b], and 0 for j >= lengths[b]. Padding is filled with -inf
    before the sort, so it sorts last and can never displace a valid value. On the CPU the order comes from
    numpy and the values are gathered by it (the same values as torch.sort, gradients through the gather).
    """
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):  # the order needs no gradient
        sorted_values = x.gather(1, _descending_order(x.detach().masked_fill(~valid, float("-inf"))))
    else:
        sorted_values = x.masked_fill(~valid, float("-inf")).sort(dim=1, descending=True).values
    return sorted_values.masked_fill(~valid, 0.0)


def _masked_softmax(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 1 restricted to the valid positions (padding weight exactly 0)."""
    return torch.softmax(logits.masked_fill(~valid, float("-inf")), dim=1)


class AdaptivePooling(nn.Module):
    """Adaptive pooling of Zhang et al. (EACL 2023): a learned gate between two sorted-set poolings.

    With z [B, K, D] = sort_set(x) (each dimension sorted over the valid positions, descending; this
    makes the output invariant to permutations of the set) and all softmaxes over valid positions k:
      (a) value weighting:    a[b, k, d] = softmax_k(z[b, k, d] / T),          p_a = sum_k a * z
      (b) learned weighting:  w[b, k, :] = softmax_k(ReLU(W z[b, k, :] + c)),  p_b = sum_k w * z
          with W, c a Linear(D, D) (Xavier-uniform weight, zero bias, as the authors' init)
      gate: g[b] = sigmoid(u . [p_a; p_b] + u0), u0 and u Linear(2D, 1), zero-initialised (g = 1/2)
      out = g * p_a + (1 - g) * p_b   [B, D]
    (a) is the authors' "embedding-level" softmax over the sorted values (T = 1 in their code);
    (b) their "token-level" weights. Their gate is softmax over {a, b} of one shared Linear(D, 1)
    score, i.e. sigmoid(v . (p_a - p_b)); ours, with separate weights and a bias, contains it
    (u = [v, -v], u0 = 0) and can be pinned to one branch. Unlike their code, padding gets weight 0
    in (b) too (theirs softmaxes the zero-filled padding positions into the weights).
    Limiting cases, built by `AdaptivePooling.limit(dim, kind)`:
      "max":  T -> 0 turns (a) into the per-dimension max; gate pinned to (a).
      "mean": W = 0, c = 0 makes (b) uniform over the valid positions = the mean; gate pinned to (b).
    """

    def __init__(self, dim: int, *, value_temperature: float = ADAPTIVE_VALUE_TEMPERATURE) -> None:
        super().__init__()
        if value_temperature <= 0:
            raise ValueError(f"value_temperature must be > 0, got {value_temperature}")
        self.dim = dim
        self.value_temperature = value_temperature
        self.position_weights = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.position_weights.weight)
        nn.init.zeros_(self.position_weights.bias)
        self.gate = nn.Linear(2 * dim, 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    @classmethod
    def limit(cls, dim: int, kind: str) -> AdaptivePooling:
        """A module fixed at a documented limiting case: "max" (max pooling) or "mean" (mean pooling)."""
        if kind not in POOL_LIMITS:
            raise ValueError(f"unknown limiting case {kind!r}; valid: {', '.join(POOL_LIMITS)}")
        pool = cls(dim, value_temperature=LIMIT_VALUE_TEMPERATURE if kind == "max" else ADAPTIVE_VALUE_TEMPERATURE)
        with torch.no_grad():
            if kind == "mean":
                pool.position_weights.weight.zero_()
                pool.position_weights.bias.zero_()
            pool.gate.bias.fill_(GATE_SATURATION if kind == "max" else -GATE_SATURATION)
        return pool

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x [B, K, D], lengths [B] (1 <= length <= K) -> pooled [B, D]."""
        valid = _check_set(x, lengths)
        if x.shape[2] != self.dim:
            raise ValueError(f"expected feature size {self.dim}, got {x.shape[2]}")
        z = sort_set(x, valid)  # [B, K, D]
        value_weights = _masked_softmax(z / self.value_temperature, valid)
        pooled_values = (value_weights * z).sum(dim=1)  # p_a [B, D]
        learned_weights = _masked_softmax(F.relu(self.position_weights(z)), valid)
        pooled_learned = (learned_weights * z).sum(dim=1)  # p_b [B, D]
        gate = torch.sigmoid(self.gate(torch.cat([pooled_values, pooled_learned], dim=1)))  # [B, 1]
        return gate * pooled_values + (1 - gate) * pooled_learned


def sinusoidal_encoding(length: int, dim: int, *, device: torch.device | None = None) -> torch.Tensor:
    """Transformer sinusoidal encoding of positions 0..length-1 -> [length, dim] (dim even):
    pe[k, 2i] = sin(k / 10000^(2i/dim)), pe[k, 2i+1] = cos(k / 10000^(2i/dim))."""
    if dim % 2:
        raise ValueError(f"the sinusoidal encoding needs an even size, got {dim}")
    positions = torch.arange(length, dtype=torch.float32, device=device).unsqueeze(1)
    frequencies = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device)
                            * (-math.log(10000.0) / dim))
    encoding = torch.zeros(length, dim, device=device)
    encoding[:, 0::2] = torch.sin(positions * frequencies)
    encoding[:, 1::2] = torch.cos(positions * frequencies)
    return encoding


class GPO(nn.Module):
    """Generalized Pooling Operator of VSE-infinity (Chen et al., CVPR 2021): learned weights over
    sorted positions, generated from the positions and the set size.

      z = sort_set(x)                           each dimension sorted descending over the valid k
      h_k = (GRU_fwd(pe)_k + GRU_bwd(pe)_k) / 2 a bidirectional GRU (hidden 32) run over exactly the
                                                sinusoidal encodings pe_0..pe_{n-1} (pe size 32) of a
                                                set of size n, so the weights depend on k and on n
      theta_k = softmax_k(w . h_k / 0.1)        over the valid positions; w a Linear(32, 1), no bias
      out[b, d] = sum_k theta[b, k] * z[b, k, d]
    One weight per position, shared by all D dimensions, as in the authors' code. Padding gets weight
    exactly 0 (the authors' code uses a -10000 score). `dim` is only checked against the input.
    """

    def __init__(self, dim: int, *, pe_dim: int = GPO_PE_DIM, hidden_dim: int = GPO_HIDDEN_DIM,
                 temperature: float = GPO_TEMPERATURE) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.dim = dim
        self.pe_dim = pe_dim
        self.temperature = temperature
        self.gru = nn.GRU(pe_dim, hidden_dim, num_layers=1, batch_first=True, bidirectional=True)
        self.score = nn.Linear(hidden_dim, 1, bias=False)

    def size_weights(self, sizes: torch.Tensor, max_len: int) -> torch.Tensor:
        """Distinct set sizes [U] (CPU int64, decreasing) -> their weights [U, max_len, 1] (see the class
        docstring)."""
        device = self.score.weight.device
        encoding = sinusoidal_encoding(max_len, self.pe_dim, device=device)
        encoding = encoding.unsqueeze(0).expand(sizes.shape[0], -1, -1)  # [U, K, pe_dim]
        packed = pack_padded_sequence(encoding, sizes, batch_first=True)
        states, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=max_len)
        forward_states, backward_states = states.chunk(2, dim=2)  # [U, K, hidden] each
        scores = self.score((forward_states + backward_states) / 2)  # [U, K, 1]
        valid = length_mask(sizes.to(device), max_len).unsqueeze(-1)  # [U, K, 1]
        return _masked_softmax(scores / self.temperature, valid)

    def pool_weights(self, lengths: torch.Tensor, max_len: int) -> torch.Tensor:
        """lengths [B] -> weights [B, max_len, 1], summing to 1 over each set's valid positions.

        The weights depend on a set's size alone, so the GRU runs over the distinct sizes of the batch (at
        most max_len short sequences), not once per set: the batch's sets share their size's row.
        """
        sizes, inverse = torch.unique(lengths.detach().to("cpu", torch.int64), return_inverse=True)  # increasing
        decreasing = len(sizes) - 1 - inverse  # row of each set among the sizes flipped to decreasing order
        return self.size_weights(sizes.flip(0), max_len)[decreasing.to(self.score.weight.device)]

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x [B, K, D], lengths [B] (1 <= length <= K) -> pooled [B, D]."""
        valid = _check_set(x, lengths)
        if x.shape[2] != self.dim:
            raise ValueError(f"expected feature size {self.dim}, got {x.shape[2]}")
        weights = self.pool_weights(lengths, x.shape[1]).to(x.dtype)
        return (weights * sort_set(x, valid)).sum(dim=1)
