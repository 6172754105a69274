"""Tests of train/gru.py: PackedGRU against nn.GRU over packed sequences, gradcheck, padding, state_dict."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from train.gru import PackedGRU, pack_plan

INPUT_SIZE, HIDDEN = 6, 5
PARAM_NAMES = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


def _reference(gru: PackedGRU, inputs, lengths, h0):
    """nn.GRU with the same weights over pack_padded_sequence(enforce_sorted=False) -> (states, last, nn.GRU)."""
    reference = nn.GRU(gru.input_size, gru.hidden_size, batch_first=True).to(inputs.dtype)
    reference.load_state_dict(gru.state_dict())
    packed = pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
    packed_states, last = reference(packed, None if h0 is None else h0.unsqueeze(0))
    states, _ = pad_packed_sequence(packed_states, batch_first=True, total_length=inputs.shape[1])
    return states, last[0], reference


def _outputs_and_grads(module_outputs, leaves, params, weights):
    """Backward of a random weighted sum of both outputs -> (states, last, grads of leaves and params)."""
    states, last = module_outputs
    ((states * weights[0]).sum() + (last * weights[1]).sum()).backward()
    grads = [leaf.grad.clone() for leaf in leaves] + [param.grad.clone() for param in params]
    for tensor in leaves:
        tensor.grad = None
    return states.detach(), last.detach(), grads


@pytest.mark.parametrize("lengths, total_length", [
    ([3, 1, 5, 5, 2], 6),       # unsorted, a length 1, ties, padding past the longest
    ([4, 4, 4], 4),             # all equal, no padding
    ([1], 3),                   # batch of one, length one
    ([7], 7),                   # batch of one, no padding
    ([2, 9, 1, 9, 3, 6, 8, 1], 9),
])
@pytest.mark.parametrize("with_h0", [False, True])
def test_outputs_and_gradients_equal_packed_nn_gru(lengths, total_length, with_h0):
    torch.manual_seed(len(lengths) + total_length)
    gru = PackedGRU(INPUT_SIZE, HIDDEN)
    lengths = torch.tensor(lengths)
    inputs = torch.randn(len(lengths), total_length, INPUT_SIZE, requires_grad=True)
    h0 = torch.randn(len(lengths), HIDDEN, requires_grad=True) if with_h0 else None
    leaves = [inputs] + ([h0] if with_h0 else [])
    weights = (torch.randn(len(lengths), total_length, HIDDEN), torch.randn(len(lengths), HIDDEN))

    states, last, grads = _outputs_and_grads(gru(inputs, lengths, h0), leaves, gru.parameters(), weights)
    ref_states, ref_last, reference = _reference(gru, inputs, lengths, h0)
    ref_states, ref_last, ref_grads = _outputs_and_grads((ref_states, ref_last), leaves,
                                                         reference.parameters(), weights)
    torch.testing.assert_close(states, ref_states, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last, ref_last, atol=1e-5, rtol=1e-5)
    names = ["inputs"] + (["h0"] if with_h0 else []) + list(PARAM_NAMES)
    for name, grad, ref_grad in zip(names, grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-5, msg=lambda text, n=name: f"{n}: {text}")


def test_larger_case_with_only_the_last_state_used():
    """The training path: only last_state feeds the loss (states gets no gradient at all)."""
    torch.manual_seed(1)
    gru = PackedGRU(24, 48)
    lengths = torch.randint(1, 13, (32,))
    inputs = torch.randn(32, 12, 24, requires_grad=True)
    _, last = gru(inputs, lengths)
    weights = torch.randn_like(last)
    (last * weights).sum().backward()
    grads = [inputs.grad.clone()] + [param.grad.clone() for param in gru.parameters()]
    inputs.grad = None
    _, ref_last, reference = _reference(gru, inputs, lengths, None)
    (ref_last * weights).sum().backward()
    torch.testing.assert_close(last, ref_last, atol=1e-5, rtol=1e-5)
    for grad, ref_grad in zip(grads, [inputs.grad] + [param.grad for param in reference.parameters()]):
        torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-5)


def test_given_h0_without_gradient():
    """A given h0 that needs no gradient: its rows still count in dW_hh, and no dh0 is formed."""
    torch.manual_seed(6)
    gru = PackedGRU(INPUT_SIZE, HIDDEN)
    lengths = torch.tensor([3, 1, 4])
    inputs = torch.randn(3, 4, INPUT_SIZE, requires_grad=True)
    h0 = torch.randn(3, HIDDEN)
    weights = (torch.randn(3, 4, HIDDEN), torch.randn(3, HIDDEN))
    _, last, grads = _outputs_and_grads(gru(inputs, lengths, h0), [inputs], gru.parameters(), weights)
    ref_states, ref_last, reference = _reference(gru, inputs, lengths, h0)
    _, _, ref_grads = _outputs_and_grads((ref_states, ref_last), [inputs], reference.parameters(), weights)
    torch.testing.assert_close(last, ref_last.detach(), atol=1e-5, rtol=1e-5)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-5)


def test_gradcheck_float64():
    torch.manual_seed(2)
    gru = PackedGRU(3, 4).double()
    lengths = torch.tensor([2, 4, 1])
    inputs = torch.randn(3, 4, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    params = tuple(getattr(gru, name).detach().clone().requires_grad_() for name in PARAM_NAMES)

    def run(inputs, h0, *params):
        return torch.func.functional_call(gru, dict(zip(PARAM_NAMES, params)), (inputs, lengths, h0))

    assert torch.autograd.gradcheck(run, (inputs, h0, *params), eps=1e-6, atol=1e-7)


def test_padded_states_are_zero_and_pass_no_gradient():
    torch.manual_seed(3)
    gru = PackedGRU(INPUT_SIZE, HIDDEN)
    lengths = torch.tensor([2, 5, 1])
    inputs = torch.randn(3, 6, INPUT_SIZE, requires_grad=True)
    padded = torch.arange(6).unsqueeze(0) >= lengths.unsqueeze(1)  # [B, T] True after each row's length
    weights = torch.randn(3, 6, HIDDEN)

    def grads(weights):
        states, _ = gru(inputs, lengths)
        gru.zero_grad()
        (states * weights).sum().backward()
        out = [inputs.grad.clone()] + [param.grad.clone() for param in gru.parameters()]
        inputs.grad = None
        return states.detach(), out

    states, with_padding = grads(weights)
    _, without_padding = grads(weights.masked_fill(padded.unsqueeze(-1), 0.0))
    assert torch.equal(states[padded], torch.zeros(int(padded.sum()), HIDDEN))
    assert not torch.equal(states[~padded], torch.zeros(int((~padded).sum()), HIDDEN))
    for grad, reference in zip(with_padding, without_padding):
        assert torch.equal(grad, reference)  # the weights on padded states changed nothing
    assert torch.equal(with_padding[0][padded], torch.zeros(int(padded.sum()), INPUT_SIZE))


def test_state_dict_round_trip_with_nn_gru():
    torch.manual_seed(4)
    gru = PackedGRU(INPUT_SIZE, HIDDEN)
    reference = nn.GRU(INPUT_SIZE, HIDDEN, batch_first=True)
    assert list(gru.state_dict()) == list(reference.state_dict()) == list(PARAM_NAMES)
    reference.load_state_dict(gru.state_dict())  # strict
    back = PackedGRU(INPUT_SIZE, HIDDEN)
    back.load_state_dict(reference.state_dict())  # strict
    for name in PARAM_NAMES:
        assert torch.equal(getattr(back, name), getattr(gru, name))
    inputs, lengths = torch.randn(2, 3, INPUT_SIZE), torch.tensor([3, 2])
    torch.testing.assert_close(back(inputs, lengths)[1], gru(inputs, lengths)[1], atol=0, rtol=0)


def test_pack_plan_matches_pack_padded_sequence():
    lengths = torch.tensor([2, 4, 1, 4])
    plan = pack_plan(lengths, total_length=5)
    packed = pack_padded_sequence(torch.arange(4 * 5).view(4, 5), lengths, batch_first=True, enforce_sorted=False)
    assert plan.batch_sizes == packed.batch_sizes.tolist()
    assert torch.equal(plan.padded_index, packed.data)  # the padded index of each packed row, in packed order


@pytest.mark.parametrize("lengths, message", [([0, 2], "1..3"), ([4, 2], "1..3"), ([2], r"shape \[2\]")])
def test_bad_lengths_are_rejected(lengths, message):
    gru = PackedGRU(INPUT_SIZE, HIDDEN)
    with pytest.raises(ValueError, match=message):
        gru(torch.randn(2, 3, INPUT_SIZE), torch.tensor(lengths))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_uses_nn_gru_and_agrees_with_cpu():
    torch.manual_seed(5)
    gru = PackedGRU(INPUT_SIZE, HIDDEN)
    inputs, lengths = torch.randn(3, 4, INPUT_SIZE), torch.tensor([4, 1, 3])
    cpu_states, cpu_last = gru(inputs, lengths)
    cuda_states, cuda_last = gru.cuda()(inputs.cuda(), lengths)
    torch.testing.assert_close(cuda_states.cpu(), cpu_states, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cuda_last.cpu(), cpu_last, atol=1e-5, rtol=1e-5)
