"""A single-layer GRU over variable-length sequences with its own CPU autograd function (nn.GRU on CUDA).

Math, per time step t of a sequence (identical to nn.GRU, gate order r, z, n):

    r = sigmoid(W_ir x_t + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x_t + b_iz + W_hz h + b_hz)
    n = tanh(W_in x_t + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h              (computed as lerp(n, h, z) = n + z * (h - n))

Why a function of our own: nn.GRU's CPU path over a PackedSequence runs the recurrence as separate autograd
ops, so in the backward pass every step's slice of the input projection gets its own zero-filled gradient of
the full [N, 3H] size, added into the total (a fill and an add of [N, 3H] per time step: about a fifth of
the reference training step here), and the weight gradients are sums of one small product per step. Here
only what must be sequential runs step by step:

    forward:  G = X W_ih^T + b_ih (+ b_hr, b_hz)           one product over all N true tokens  [N, I] x [I, 3H]
              per step t: gh = h W_hh^T                     [bs_t, H] x [H, 3H], then 6 pointwise gate ops
    backward: per step t (reverse): gate gradients, dh_prev = dh * z + dGH_t W_hh   [bs_t, 3H] x [3H, H]
              dW_hh = dGH^T H_prev, dW_ih = dGI^T X, dX = dGI W_ih, biases = column sums:
              one product each over all N tokens

dGH = [dr, dz, dn * r] (gradient of W_hh h + b_hh) and dGI = [dr, dz, dn] (of W_ih x + b_ih), dr, dz, dn
taken before the gates' sigmoid / tanh. The layout is PackedSequence's: rows sorted by length (longest
first), time-major, so the active rows of step t are a contiguous prefix [offset_t, offset_t + bs_t) of every
[N, .] buffer, each sequence's state stops at its own last token, and no product touches a padded position.

With h0 = 0 (the default) the first step's W_hh h0, its rows of dW_hh and the product for dh0 are exact
zeros and are skipped (the one difference from nn.GRU: a NaN or inf in W_hh reaches its first state only there).

The time is in the products (~85% of the GRU's forward + backward, at close to the CPU's large-matmul rate;
bench/train_step.py, BENCHMARKS.md "Training step"), so the gate math uses fused ATen ops (lerp,
tanh_backward, sigmoid_backward) for fewer passes over memory, b_hr and b_hz are folded into the input bias,
and rows are sorted by length rather than masked: masking all B rows at every step would run B * T_max rows
through the sequential products instead of N.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def _matmul(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """a @ b; with `dtype` (CPU autocast's bf16) the product runs in it and returns float32 (the gate math,
    the state and the gradients stay float32, as autocast keeps pointwise ops)."""
    return a @ b if dtype is None else (a.to(dtype) @ b.to(dtype)).float()


@dataclass(frozen=True)
class PackPlan:
    """Index tensors that move rows between the padded batch [B, T] and the packed layout [N]."""

    batch_sizes: list[int]       # active rows per time step, non-increasing, bs_0 = B
    offsets: list[int]           # first packed row of each time step
    order: torch.Tensor          # int64 [B]: sorted position -> input row (longest first, stable)
    padded_index: torch.Tensor   # int64 [N]: packed row -> row of the flattened padded batch [B * T]
    last_index: torch.Tensor     # int64 [B]: input row -> packed row of its last token


def pack_plan(lengths: torch.Tensor, total_length: int) -> PackPlan:
    """The packed layout of sequences of `lengths` (CPU int64 [B], 1 <= length <= total_length)."""
    batch = lengths.shape[0]
    sorted_lengths, order = torch.sort(lengths, descending=True, stable=True)
    steps = torch.arange(int(sorted_lengths[0]))
    active = sorted_lengths.unsqueeze(0) > steps.unsqueeze(1)  # [T_max, B]; each row a prefix (sorted)
    batch_sizes = active.sum(1)
    offsets = torch.cumsum(batch_sizes, 0) - batch_sizes
    step_of, rank_of = active.nonzero(as_tuple=True)  # row-major = packed order: (t, sorted position)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(batch)  # input row -> sorted position
    return PackPlan(batch_sizes=batch_sizes.tolist(), offsets=offsets.tolist(), order=order,
                    padded_index=order[rank_of] * total_length + step_of,
                    last_index=offsets[lengths - 1] + rank)


class _GRUFunction(torch.autograd.Function):
    """Forward and backward of the packed GRU; see the module docstring for the formulas. `dtype` None: float32
    throughout; bf16: every product runs in it (weights cast once per forward), all else in float32."""

    @staticmethod
    def forward(ctx, inputs, h0, weight_ih, weight_hh, bias_ih, bias_hh, plan: PackPlan, dtype):
        batch, total_length, input_size = inputs.shape
        hidden = weight_hh.shape[1]
        tokens = plan.padded_index.shape[0]
        x = inputs.reshape(batch * total_length, input_size).index_select(0, plan.padded_index)  # [N, I]
        # b_hr, b_hz join the input bias (they are only ever added to it); b_hn cannot: r * (W_hn h + b_hn)
        bias = torch.cat([bias_ih[:2 * hidden] + bias_hh[:2 * hidden], bias_ih[2 * hidden:]])
        if dtype is not None:  # cast once: the products below and in the backward read these copies
            weight_ih, weight_hh = weight_ih.to(dtype), weight_hh.to(dtype)
            gates = _matmul(x, weight_ih.t(), dtype).add_(bias)
        else:
            gates = torch.addmm(bias, x, weight_ih.t())  # [N, 3H]; becomes [r, z, n] in place below
        hidden_gates = torch.empty_like(gates)       # W_hh h of every step, b_hn added to its n part
        states = torch.empty(tokens, hidden, dtype=inputs.dtype)
        zero_h0 = h0 is None
        h = inputs.new_zeros(batch, hidden) if zero_h0 else h0.index_select(0, plan.order)
        bias_hn = bias_hh[2 * hidden:]
        for offset, size in zip(plan.offsets, plan.batch_sizes):
            rows = slice(offset, offset + size)
            if offset == 0 and zero_h0:  # W_hh 0 = 0: no product for the first step
                gh = hidden_gates[rows].zero_()
            elif dtype is not None:
                gh = hidden_gates[rows].copy_(_matmul(h[:size], weight_hh.t(), dtype))
            else:
                gh = torch.mm(h[:size], weight_hh.t(), out=hidden_gates[rows])
            g = gates[rows]
            g[:, :2 * hidden].add_(gh[:, :2 * hidden]).sigmoid_()  # r, z
            r, z, n = g[:, :hidden], g[:, hidden:2 * hidden], g[:, 2 * hidden:]
            ghn = gh[:, 2 * hidden:].add_(bias_hn)
            n.addcmul_(r, ghn).tanh_()
            h = torch.lerp(n, h[:size], z, out=states[rows])  # n + z (h - n), one op instead of three
        ctx.plan, ctx.shape, ctx.dtype = plan, inputs.shape, dtype
        ctx.save_for_backward(x, h0, weight_ih, weight_hh, gates, hidden_gates, states)
        ctx.set_materialize_grads(False)  # an unused output (often `states`) costs no backward work
        padded = states.new_zeros(batch * total_length, hidden).index_copy_(0, plan.padded_index, states)
        return padded.view(batch, total_length, hidden), states.index_select(0, plan.last_index)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_states, grad_last):
        x, h0, weight_ih, weight_hh, gates, hidden_gates, states = ctx.saved_tensors
        plan, (batch, total_length, input_size), dtype = ctx.plan, ctx.shape, ctx.dtype
        hidden = weight_hh.shape[1]
        if grad_states is None:
            grad_h = states.new_zeros(states.shape)
        else:  # padded positions are dropped here: they get no gradient
            grad_h = grad_states.reshape(batch * total_length, hidden).index_select(0, plan.padded_index)
        if grad_last is not None:
            grad_h.index_add_(0, plan.last_index, grad_last)
        # the state each packed row started from: h0 for step 0 (left out when it is 0: it adds nothing to
        # dW_hh), else the previous step's prefix; [N - skipped, H]
        skipped = batch if h0 is None else 0
        prev_parts = (([] if h0 is None else [h0.index_select(0, plan.order)])
                      + [states[start:start + size] for start, size in zip(plan.offsets, plan.batch_sizes[1:])])
        h_prev = torch.cat(prev_parts) if prev_parts else states[:0]  # empty: one step, h0 = 0
        needs = ctx.needs_input_grad
        grad_gh = torch.empty_like(gates)  # dGH = [dr, dz, dn * r]
        grad_n = torch.empty_like(states)  # dn; dGI = [dGH[:, :2H], dn]
        carry = None  # gradient of the previous step's state from step t + 1, [bs_{t+1}, H]
        for offset, size in zip(reversed(plan.offsets), reversed(plan.batch_sizes)):
            rows = slice(offset, offset + size)
            dh = grad_h[rows]  # our own buffer, so the carry is added in place
            if carry is not None:
                dh[:carry.shape[0]] += carry
            g, ghn = gates[rows], hidden_gates[rows, 2 * hidden:]
            r, z, n = g[:, :hidden], g[:, hidden:2 * hidden], g[:, 2 * hidden:]
            dgh, dn = grad_gh[rows], grad_n[rows]
            # fused ATen backward kernels: tanh_backward(g, y) = g (1 - y^2), sigmoid_backward(g, y) = g y (1 - y)
            torch.ops.aten.tanh_backward.grad_input(torch.rsub(z, 1).mul_(dh), n, grad_input=dn)
            torch.mul(dn, ghn, out=dgh[:, :hidden])  # dr before sigmoid'
            prev = n.new_zeros(n.shape) if offset < skipped else h_prev[offset - skipped:offset - skipped + size]
            torch.mul(torch.sub(prev, n), dh, out=dgh[:, hidden:2 * hidden])  # dz before sigmoid'
            torch.ops.aten.sigmoid_backward.grad_input(dgh[:, :2 * hidden], g[:, :2 * hidden],
                                                       grad_input=dgh[:, :2 * hidden])
            torch.mul(dn, r, out=dgh[:, 2 * hidden:])
            if offset > 0 or needs[1]:  # the first step's carry is dh0, needed only for a given h0
                if dtype is None:
                    carry = torch.addmm(torch.mul(dh, z), dgh, weight_hh)  # the only sequential product
                else:
                    carry = _matmul(dgh, weight_hh, dtype).add_(torch.mul(dh, z))
        grad_inputs = grad_h0 = grad_weight_ih = grad_weight_hh = grad_bias_ih = grad_bias_hh = None
        # each of these is read by two of the products below: under bf16, cast once (_matmul's cast is then a no-op)
        grad_n_mm, grad_gh_mm, x_mm = (grad_n, grad_gh, x) if dtype is None else (
            grad_n.to(dtype), grad_gh.to(dtype), x.to(dtype))
        if needs[0]:
            grad_x = _matmul(grad_n_mm, weight_ih[2 * hidden:], dtype)
            if dtype is None:
                grad_x = torch.addmm(grad_x, grad_gh[:, :2 * hidden], weight_ih[:2 * hidden])
            else:
                grad_x += _matmul(grad_gh_mm[:, :2 * hidden], weight_ih[:2 * hidden], dtype)
            grad_inputs = x.new_zeros(batch * total_length, input_size).index_copy_(0, plan.padded_index, grad_x)
            grad_inputs = grad_inputs.view(batch, total_length, input_size)
        if needs[1]:
            grad_h0 = torch.empty_like(carry).index_copy_(0, plan.order, carry)  # bs_0 = B: every row
        if needs[2]:
            grad_weight_ih = torch.cat([_matmul(grad_gh_mm[:, :2 * hidden].t(), x_mm, dtype),
                                        _matmul(grad_n_mm.t(), x_mm, dtype)])
        if needs[3]:
            grad_weight_hh = _matmul(grad_gh_mm[skipped:].t(), h_prev, dtype)
        if needs[4] or needs[5]:
            grad_bias_hh = grad_gh.sum(0)
            grad_bias_ih = torch.cat([grad_bias_hh[:2 * hidden], grad_n.sum(0)])  # r, z parts are shared
        return grad_inputs, grad_h0, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh, None, None


class PackedGRU(nn.GRU):
    """nn.GRU(input_size, hidden_size, 1 layer, batch_first) over [B, T, I] inputs with per-row lengths.

    Same parameters (names, shapes, init) as nn.GRU, so a state_dict loads in either. On the CPU the
    recurrence runs in `_GRUFunction`; elsewhere (CUDA: cuDNN) through nn.GRU over a PackedSequence.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size, num_layers=1, bias=True, batch_first=True)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor,
                h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs [B, T, I], lengths int64 [B] (1..T), h0 [B, H] or None (zeros) ->
        (states [B, T, H], 0 after each row's length; last_state [B, H] = state at its last token).

        Rows stay in input order (pack_padded_sequence with enforce_sorted=False, then unpacked).
        """
        if inputs.dim() != 3 or inputs.shape[0] == 0:
            raise ValueError(f"PackedGRU wants inputs [B, T, I] with B >= 1; got {tuple(inputs.shape)}")
        batch, total_length = inputs.shape[:2]
        lengths = torch.as_tensor(lengths).detach().to("cpu", torch.int64)
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must have shape [{batch}] (one per row); got {tuple(lengths.shape)}")
        if int(lengths.min()) < 1 or int(lengths.max()) > total_length:
            raise ValueError(f"lengths must lie in 1..{total_length} (the padded length); got "
                             f"{int(lengths.min())}..{int(lengths.max())}")
        if h0 is not None and h0.shape != (batch, self.hidden_size):
            raise ValueError(f"h0 must have shape [{batch}, {self.hidden_size}]; got {tuple(h0.shape)}")
        if inputs.device.type != "cpu":
            packed = pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
            packed_states, last_state = super().forward(packed, None if h0 is None else h0.unsqueeze(0))
            states, _ = pad_packed_sequence(packed_states, batch_first=True, total_length=total_length)
            return states, last_state[0]
        # Under CPU autocast (--amp bf16) the products run in its dtype, the rest in float32 (autocast itself
        # would hand the in-place gate math bf16 and float32 tensors at once)
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        if dtype is not None:
            inputs, h0 = inputs.float(), None if h0 is None else h0.float()
        with torch.autocast("cpu", enabled=False):
            return _GRUFunction.apply(inputs, h0, self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0,
                                      self.bias_hh_l0, pack_plan(lengths, total_length), dtype)
