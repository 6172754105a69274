"""Group-of-hard-negatives loss and its k (train/group_loss.py) against slow per-query references."""

import math

import pytest
import torch
import torch.nn.functional as F

from train.losses.group import adaptive_k, group_hard_negative_loss, select_k
from train.losses.hinge import contrastive_loss
from train.losses.similarity import cosine_sim, positive_mask

UNIQUE_IDS = [0, 1, 2, 3, 4, 5, 6, 7]
DUPLICATE_IDS = [3, 7, 3, 1, 7, 7, 2, 5]  # image 3 twice, image 7 three times


def random_batch(ids, *, seed=0, dim=6):
    generator = torch.Generator().manual_seed(seed)
    image_emb = F.normalize(torch.randn(len(ids), dim, generator=generator, dtype=torch.float64), dim=1)
    caption_emb = F.normalize(torch.randn(len(ids), dim, generator=generator, dtype=torch.float64), dim=1)
    ids_tensor = torch.tensor(ids)
    return cosine_sim(image_emb, caption_emb), positive_mask(ids_tensor, ids_tensor)


def reference_group_loss(sims, ids, *, k, temperature, margin):
    """Per query: softmax cross-entropy of [positive, k hardest negatives + margin] / tau."""
    s = sims.tolist()
    n = len(ids)

    def query_loss(positive, negatives):
        logits = [positive / temperature] + [(x + margin) / temperature for x in sorted(negatives)[::-1][:k]]
        top = max(logits)
        return -(logits[0] - top) + math.log(sum(math.exp(x - top) for x in logits))

    caption = [query_loss(s[b][b], [s[b][c] for c in range(n) if ids[c] != ids[b]]) for b in range(n)]
    image = [query_loss(s[c][c], [s[b][c] for b in range(n) if ids[b] != ids[c]]) for c in range(n)]
    return (sum(caption) / n + sum(image) / n) / 2


@pytest.mark.parametrize("ids", [UNIQUE_IDS, DUPLICATE_IDS], ids=["unique", "duplicates"])
@pytest.mark.parametrize("k", [1, 3, 7])  # 7 = B - 1: more than the duplicate batch's queries have
def test_group_loss_equals_per_query_reference(ids, k):
    for seed in range(3):
        sims, pos_mask = random_batch(ids, seed=seed)
        loss = group_hard_negative_loss(sims, pos_mask, k=k, temperature=0.05, margin=0.2)
        expected = reference_group_loss(sims, ids, k=k, temperature=0.05, margin=0.2)
        assert loss.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("ids", [UNIQUE_IDS, DUPLICATE_IDS], ids=["unique", "duplicates"])
def test_group_loss_with_k1_and_small_temperature_is_the_mh_hinge(ids):
    # tau * l_q -> [margin + hardest negative - positive]_+ as tau -> 0; averaged over B queries and 2 directions
    temperature = 1e-4
    for seed in range(4):
        sims, pos_mask = random_batch(ids, seed=seed)
        group = temperature * group_hard_negative_loss(sims, pos_mask, k=1, temperature=temperature)
        mh = contrastive_loss(sims, pos_mask, max_violation=True, reduction="mean") / 2
        assert group.item() == pytest.approx(mh.item(), abs=temperature)


def test_group_loss_with_k1_sends_gradient_only_to_positives_and_hardest_negatives():
    sims, pos_mask = random_batch(DUPLICATE_IDS, seed=1)
    sims.requires_grad_()
    group_hard_negative_loss(sims, pos_mask, k=1).backward()
    negatives = sims.detach().masked_fill(pos_mask, float("-inf"))
    expected = torch.eye(len(DUPLICATE_IDS), dtype=torch.bool)
    expected[torch.arange(len(DUPLICATE_IDS)), negatives.argmax(dim=1)] = True  # hardest caption per row
    expected[negatives.argmax(dim=0), torch.arange(len(DUPLICATE_IDS))] = True  # hardest image per column
    assert ((sims.grad != 0) == expected).all()


def test_group_loss_with_a_query_without_negatives_is_finite():
    ids = torch.tensor([4, 4, 4])  # one image: nobody has a negative
    sims = torch.rand(3, 3, requires_grad=True)
    loss = group_hard_negative_loss(sims, positive_mask(ids, ids), k=2)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(sims.grad).all()


def test_group_loss_is_finite_positive_and_reaches_the_embeddings():
    ids = torch.tensor(DUPLICATE_IDS)
    image_emb = torch.randn(len(ids), 6, requires_grad=True)
    caption_emb = torch.randn(len(ids), 6, requires_grad=True)
    sims = cosine_sim(F.normalize(image_emb, dim=1), F.normalize(caption_emb, dim=1))
    loss = group_hard_negative_loss(sims, positive_mask(ids, ids), k=3)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert image_emb.grad.abs().sum() > 0 and caption_emb.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"k": 8}, {"k": 2, "temperature": 0.0}])
def test_group_loss_rejects_bad_options(kwargs):
    sims, pos_mask = random_batch(UNIQUE_IDS)
    with pytest.raises(ValueError):
        group_hard_negative_loss(sims, pos_mask, **kwargs)


# adaptive k

def reference_adaptive_k(sims, pos_mask, gamma):
    n = sims.shape[0]
    align = sum(sims[b, b].item() for b in range(n)) / n
    uniform = sum(math.exp(-(0.0 if pos_mask[i, j] else sims[i, j].item())) for i in range(n) for j in range(n))
    base = max(align + uniform / (n * n), 0.0)
    return min(max(math.floor(math.cos(base ** gamma) * n) + 1, 1), n - 1)


@pytest.mark.parametrize("ids", [UNIQUE_IDS, DUPLICATE_IDS], ids=["unique", "duplicates"])
def test_adaptive_k_follows_the_formula(ids):
    for seed in range(5):
        sims, pos_mask = random_batch(ids, seed=seed)
        sims = sims * 0.3 * seed  # from a collapsed-to-zero space to spread similarities
        assert adaptive_k(sims, pos_mask, gamma=1.25) == reference_adaptive_k(sims, pos_mask, 1.25)


def test_adaptive_k_at_random_init_uses_about_half_the_batch():
    batch = 64
    ids = torch.arange(batch)
    k = adaptive_k(torch.zeros(batch, batch), positive_mask(ids, ids))  # align 0, uniform 1
    assert k == math.floor(math.cos(1.0) * batch) + 1


@pytest.mark.parametrize("batch", [2, 3, 128])
@pytest.mark.parametrize("case", ["random", "aligned", "collapsed", "anti", "order", "huge"])
def test_adaptive_k_stays_in_range(batch, case):
    ids = torch.arange(batch)
    pos_mask = positive_mask(ids, ids)
    eye = torch.eye(batch, dtype=torch.bool)
    sims = {
        "random": torch.rand(batch, batch, generator=torch.Generator().manual_seed(batch)) * 2 - 1,
        "aligned": eye.float(),  # positives 1, negatives 0
        "collapsed": torch.ones(batch, batch),
        "anti": torch.where(eye, -1.0, 1.0),  # align + uniform < 0
        "order": -torch.rand(batch, batch, generator=torch.Generator().manual_seed(0)) * 3,
        "huge": torch.full((batch, batch), -80.0),
    }[case]
    k = adaptive_k(sims, pos_mask)
    assert isinstance(k, int) and 1 <= k <= batch - 1


def test_adaptive_k_builds_no_graph_and_rejects_non_finite_sims():
    sims, pos_mask = random_batch(UNIQUE_IDS)
    assert isinstance(adaptive_k(sims.requires_grad_(), pos_mask), int)
    with pytest.raises(ValueError, match="finite"):
        adaptive_k(torch.full((3, 3), float("nan")), torch.eye(3, dtype=torch.bool))


def test_select_k_modes():
    sims, pos_mask = random_batch(UNIQUE_IDS)
    assert select_k("adaptive", sims, pos_mask, gamma=1.25) == adaptive_k(sims, pos_mask, gamma=1.25)
    assert select_k("constant", sims, pos_mask, k=3) == 3
    assert select_k("constant", sims, pos_mask, k=50) == 7  # capped at B - 1
    draws = [select_k("random", sims, pos_mask, generator=torch.Generator().manual_seed(s)) for s in range(40)]
    assert all(1 <= k <= 7 for k in draws) and len(set(draws)) > 3
    again = [select_k("random", sims, pos_mask, generator=torch.Generator().manual_seed(s)) for s in range(40)]
    assert draws == again


@pytest.mark.parametrize("mode, kwargs", [("constant", {}), ("constant", {"k": 0}), ("hardest", {})])
def test_select_k_rejects_bad_modes(mode, kwargs):
    sims, pos_mask = random_batch(UNIQUE_IDS)
    with pytest.raises(ValueError):
        select_k(mode, sims, pos_mask, **kwargs)
