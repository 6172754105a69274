"""The image side's set path (ten crops or regions with sizes) against brute force, and GPO's weights per
distinct size against one GRU run per set."""

import pytest
import torch

from train.model import ImageHead
from train.pooling import GPO, _masked_softmax, length_mask, sinusoidal_encoding, sort_set

FEATURE_DIM, EMBED_DIM, K = 5, 8, 6


def per_set_gpo_weights(gpo: GPO, lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Brute force: the GRU run once per set, over exactly its own n encodings, no packing -> [B, max_len, 1]."""
    rows = []
    for length in lengths.tolist():
        states, _ = gpo.gru(sinusoidal_encoding(length, gpo.pe_dim).unsqueeze(0))  # [1, n, 2 * hidden]
        forward_states, backward_states = states.chunk(2, dim=2)
        scores = torch.zeros(1, max_len, 1)
        scores[:, :length] = gpo.score((forward_states + backward_states) / 2)
        valid = length_mask(torch.tensor([length]), max_len).unsqueeze(-1)
        rows.append(_masked_softmax(scores / gpo.temperature, valid))
    return torch.cat(rows)


def test_gpo_weights_per_distinct_size_equal_one_gru_run_per_set():
    torch.manual_seed(0)
    gpo = GPO(EMBED_DIM)
    lengths = torch.tensor([3, 7, 3, 1, 7, 7, 5, 2, 3])  # repeated sizes share one GRU row
    upstream = torch.randn(len(lengths), 7, 1)
    fast = gpo.pool_weights(lengths, 7)
    (fast * upstream).sum().backward()
    fast_grads = [parameter.grad.clone() for parameter in gpo.parameters()]
    gpo.zero_grad()
    slow = per_set_gpo_weights(gpo, lengths, 7)
    (slow * upstream).sum().backward()
    torch.testing.assert_close(fast, slow, rtol=1e-6, atol=1e-7)
    for fast_grad, parameter in zip(fast_grads, gpo.parameters()):
        torch.testing.assert_close(fast_grad, parameter.grad, rtol=1e-4, atol=1e-6)  # summation order


def test_sort_set_on_the_cpu_equals_torch_sort_values_and_gradients():
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(5, K, 7, generator=generator).round(decimals=1)  # rounded: ties within a set
    x[0, 1] = float("inf")
    lengths = torch.tensor([6, 1, 3, 4, 6])
    valid = length_mask(lengths, K).unsqueeze(-1)
    reference = x.masked_fill(~valid, float("-inf")).sort(dim=1, descending=True).values.masked_fill(~valid, 0.0)
    assert torch.equal(sort_set(x, valid), reference)  # numpy's order, torch's values: bit for bit
    distinct = torch.randn(5, K, 7, generator=generator, requires_grad=True)
    upstream = torch.randn(5, K, 7, generator=generator)
    (sort_set(distinct, valid) * upstream).sum().backward()
    ours, distinct.grad = distinct.grad, None
    sorted_reference = distinct.masked_fill(~valid, float("-inf")).sort(dim=1, descending=True).values
    (sorted_reference.masked_fill(~valid, 0.0) * upstream).sum().backward()
    assert torch.equal(ours, distinct.grad)


def _head(pool: str) -> ImageHead:
    torch.manual_seed(1)
    return ImageHead(FEATURE_DIM, embed_dim=EMBED_DIM, image_pool=pool)


@pytest.mark.parametrize("pool", ["mean", "adaptive", "gpo"])
def test_image_head_pools_each_set_over_its_kept_vectors_only(pool):
    head = _head(pool)
    features = torch.randn(4, K, FEATURE_DIM, generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([6, 1, 3, 4])
    padded = features.clone()
    for row, length in enumerate(lengths.tolist()):
        padded[row, length:] = float("nan")  # what lies past a set's size must never reach the embedding
    pooled = head(padded, lengths)
    for row, length in enumerate(lengths.tolist()):
        alone = head(features[row:row + 1, :length])  # the set alone, whole: the brute-force reference
        torch.testing.assert_close(pooled[row:row + 1], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pool", ["mean", "adaptive", "gpo"])
def test_whole_sets_need_no_sizes(pool):
    head = _head(pool)
    features = torch.randn(3, K, FEATURE_DIM, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(head(features), head(features, torch.full((3,), K)), rtol=1e-6, atol=1e-7)
    if pool == "mean":  # the plain mean over all K is what feature mode 10c computes
        expected = torch.nn.functional.normalize(head.fc(features.mean(dim=1)), dim=-1)
        torch.testing.assert_close(head(features), expected, rtol=1e-5, atol=1e-6)


def test_sizes_for_a_single_vector_are_an_error():
    with pytest.raises(ValueError, match="set sizes were given for image features of shape"):
        _head("mean")(torch.zeros(2, FEATURE_DIM), torch.tensor([1, 1]))
