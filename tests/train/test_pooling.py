"""Set pooling of train/pooling.py: helpers against loops, invariance, lengths, limiting cases."""

import pytest
import torch

from train.pooling import GPO, AdaptivePooling, gather_last, masked_max, masked_mean, sort_set

LENGTHS = [5, 2, 1, 4]


def padded_set(*, seed=0, dim=6, max_len=5, lengths=LENGTHS):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(len(lengths), max_len, dim, generator=generator), torch.tensor(lengths)


def with_garbage_padding(x, lengths, value):
    x = x.clone()
    for b, length in enumerate(lengths.tolist()):
        x[b, length:] = value
    return x


def permute_valid(x, lengths, seed):
    generator = torch.Generator().manual_seed(seed)
    x = x.clone()
    for b, length in enumerate(lengths.tolist()):
        x[b, :length] = x[b, torch.randperm(length, generator=generator)]
    return x


def all_poolings(dim=6):
    torch.manual_seed(0)
    return {"adaptive": AdaptivePooling(dim), "gpo": GPO(dim), "mean": masked_mean, "max": masked_max}


def test_helpers_equal_loops():
    x, lengths = padded_set()
    mean, maximum, last = masked_mean(x, lengths), masked_max(x, lengths), gather_last(x, lengths)
    for b, length in enumerate(lengths.tolist()):
        valid = x[b, :length]
        assert torch.allclose(mean[b], valid.sum(0) / length)
        assert torch.equal(maximum[b], valid.max(0).values)
        assert torch.equal(last[b], x[b, length - 1])


def test_sort_set_sorts_valid_values_and_zeroes_the_tail():
    x, lengths = padded_set()
    x = with_garbage_padding(x, lengths, 1e6)
    valid = torch.arange(x.shape[1]).unsqueeze(0).lt(lengths.unsqueeze(1)).unsqueeze(-1)
    z = sort_set(x, valid)
    for b, length in enumerate(lengths.tolist()):
        assert torch.equal(z[b, :length], x[b, :length].sort(dim=0, descending=True).values)
        assert (z[b, length:] == 0).all()


@pytest.mark.parametrize("name", ["adaptive", "gpo", "mean", "max"])
def test_poolings_are_permutation_invariant(name):
    pool = all_poolings()[name]
    x, lengths = padded_set(seed=1)
    expected = pool(x, lengths)
    assert expected.shape == (len(LENGTHS), 6)
    for seed in range(3):
        assert torch.allclose(pool(permute_valid(x, lengths, seed), lengths), expected, atol=1e-6)


@pytest.mark.parametrize("name", ["adaptive", "gpo", "mean", "max"])
@pytest.mark.parametrize("garbage", [1e6, -1e6, float("inf"), float("nan")])
def test_padding_never_leaks(name, garbage):
    pool = all_poolings()[name]
    x, lengths = padded_set(seed=2)
    expected = pool(x, lengths)
    assert torch.equal(pool(with_garbage_padding(x, lengths, garbage), lengths), expected)
    # and each set alone, without padding, gives the same vector
    for b, length in enumerate(lengths.tolist()):
        alone = pool(x[b:b + 1, :length], lengths[b:b + 1])
        assert torch.allclose(alone[0], expected[b], atol=1e-6)


@pytest.mark.parametrize("name", ["adaptive", "gpo"])
def test_padding_gets_no_gradient_and_parameters_do(name):
    pool = all_poolings()[name]
    x, lengths = padded_set(seed=3)
    x.requires_grad_()
    pool(x, lengths).pow(2).sum().backward()
    for b, length in enumerate(lengths.tolist()):
        assert (x.grad[b, length:] == 0).all() and x.grad[b, :length].abs().sum() > 0
    for parameter_name, parameter in pool.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, parameter_name


@pytest.mark.parametrize("kind, reference", [("max", masked_max), ("mean", masked_mean)])
def test_adaptive_pooling_limits_are_max_and_mean(kind, reference):
    x, lengths = padded_set(seed=4)
    pool = AdaptivePooling.limit(6, kind)
    assert torch.allclose(pool(x, lengths), reference(x, lengths), atol=1e-5)


def test_adaptive_pooling_default_mixes_both_branches():
    x, lengths = padded_set(seed=5)
    torch.manual_seed(0)
    out = AdaptivePooling(6)(x, lengths)
    assert not torch.allclose(out, masked_max(x, lengths), atol=1e-3)
    assert not torch.allclose(out, masked_mean(x, lengths), atol=1e-3)


def test_gpo_weights_sum_to_one_over_valid_positions_and_depend_on_the_set_size():
    torch.manual_seed(0)
    gpo = GPO(6)
    lengths = torch.tensor([5, 2, 3])
    weights = gpo.pool_weights(lengths, 5).squeeze(-1)
    assert torch.allclose(weights.sum(dim=1), torch.ones(3))
    assert (weights[1, 2:] == 0).all() and (weights[2, 3:] == 0).all()
    assert not torch.allclose(weights[0, :2], weights[1, :2])  # same positions, different set sizes


@pytest.mark.parametrize("pool", [AdaptivePooling(6), GPO(6), masked_mean])
@pytest.mark.parametrize("lengths", [[0, 2, 1, 4], [6, 2, 1, 4], [[5], [2], [1], [4]]])
def test_poolings_reject_bad_lengths(pool, lengths):
    x, _ = padded_set()
    with pytest.raises(ValueError, match="lengths"):
        pool(x, torch.tensor(lengths))


def test_poolings_reject_bad_shapes():
    with pytest.raises(ValueError, match="padded set"):
        masked_max(torch.zeros(2, 3), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="feature size"):
        AdaptivePooling(4)(torch.zeros(2, 3, 5), torch.tensor([1, 3]))
    with pytest.raises(ValueError, match="limiting case"):
        AdaptivePooling.limit(4, "median")
