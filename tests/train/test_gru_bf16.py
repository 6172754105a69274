"""PackedGRU under CPU bf16 autocast (--amp bf16): products in bf16, state, gates and gradients in float32."""

from __future__ import annotations

import pytest
import torch

from train.gru import PackedGRU

INPUT_SIZE, HIDDEN = 24, 32


def run(gru: PackedGRU, inputs: torch.Tensor, lengths: torch.Tensor, h0: torch.Tensor | None, *, amp: bool):
    """(states, last_state, gradients of parameters, inputs and h0) of a weighted sum of both outputs."""
    gru.zero_grad(set_to_none=True)
    for tensor in (inputs, h0):
        if tensor is not None:
            tensor.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        states, last = gru(inputs, lengths, h0)
    weights = torch.linspace(-1, 1, HIDDEN)
    ((states * weights).sum() + (last * weights.flip(0)).sum()).backward()
    grads = [p.grad for p in gru.parameters()] + [inputs.grad] + ([h0.grad] if h0 is not None else [])
    return states.detach(), last.detach(), grads


@pytest.mark.parametrize("with_h0", [False, True])
def test_bf16_autocast_stays_close_to_float32_and_returns_float32(with_h0: bool):
    torch.manual_seed(0)
    gru = PackedGRU(INPUT_SIZE, HIDDEN)
    inputs = torch.randn(5, 7, INPUT_SIZE, requires_grad=True)
    lengths = torch.tensor([7, 3, 5, 1, 7])
    h0 = torch.randn(5, HIDDEN, requires_grad=True) if with_h0 else None
    states32, last32, grads32 = run(gru, inputs, lengths, h0, amp=False)
    states16, last16, grads16 = run(gru, inputs, lengths, h0, amp=True)
    assert states16.dtype == last16.dtype == torch.float32
    assert all(grad.dtype == torch.float32 for grad in grads16)
    assert (states16[3, 1:] == 0).all()  # padding stays exactly zero
    for ours, reference in [(states16, states32), (last16, last32), *zip(grads16, grads32)]:
        assert float((ours - reference).norm() / reference.norm()) < 2e-2  # bf16 keeps 8 bits of mantissa
        assert not torch.equal(ours, reference) or reference.abs().max() == 0  # the products did run in bf16

