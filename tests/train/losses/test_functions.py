"""The pure loss functions of train/losses/ against slow double-loop references, and their invariants."""

import math

import pytest
import torch
import torch.nn.functional as F

from train.losses import similarity
from train.losses.hinge import contrastive_loss
from train.losses.infonce import info_nce_loss
from train.losses.lseh import lseh_margins
from train.losses.similarity import cosine_sim, order_sim, positive_mask

UNIQUE_IDS = [0, 1, 2, 3, 4, 5, 6]
DUPLICATE_IDS = [3, 7, 3, 1, 7, 7, 2]  # image 3 twice, image 7 three times


def random_embeddings(batch, dim=5, *, seed=0, normalize=True, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    image_emb = torch.randn(batch, dim, generator=generator, dtype=dtype)
    caption_emb = torch.randn(batch, dim, generator=generator, dtype=dtype)
    if normalize:
        image_emb, caption_emb = F.normalize(image_emb, dim=1), F.normalize(caption_emb, dim=1)
    return image_emb, caption_emb


def batch(ids, *, seed=0, similarity="cosine"):
    ids = torch.tensor(ids)
    image_emb, caption_emb = random_embeddings(len(ids), seed=seed, normalize=similarity == "cosine")
    if similarity == "order":
        image_emb, caption_emb = image_emb.abs(), caption_emb.abs()
    sims = cosine_sim(image_emb, caption_emb) if similarity == "cosine" else order_sim(image_emb, caption_emb)
    return sims, positive_mask(ids, ids), ids.tolist()


def reference_hinge(sims, ids, *, margin, max_violation, reduction):
    """Slow per-query loops over the paper's eq. 5 / 6 with positives from the image ids."""
    s = sims.tolist()
    n = len(ids)
    m = margin.tolist() if isinstance(margin, torch.Tensor) else [[margin] * n for _ in range(n)]
    total = 0.0
    for b in range(n):  # caption retrieval: image row b, positive caption b
        costs = [max(0.0, m[b][c] + s[b][c] - s[b][b]) for c in range(n) if ids[c] != ids[b]]
        total += max(costs, default=0.0) if max_violation else sum(costs)
    for c in range(n):  # image retrieval: caption c, positive image row c
        costs = [max(0.0, m[b][c] + s[b][c] - s[c][c]) for b in range(n) if ids[b] != ids[c]]
        total += max(costs, default=0.0) if max_violation else sum(costs)
    return total / n if reduction == "mean" else total


def test_positive_mask_marks_same_image_pairs():
    mask = positive_mask(torch.tensor([4, 2, 4]), torch.tensor([4, 4, 2, 9]))
    expected = [[True, True, False, False], [False, False, True, False], [True, True, False, False]]
    assert mask.tolist() == expected


@pytest.mark.parametrize("bad", [torch.tensor([1.0, 2.0]), torch.tensor([[1, 2]]), torch.tensor([True])])
def test_positive_mask_rejects_non_integer_or_non_vector_ids(bad):
    with pytest.raises(ValueError, match="1-D integer"):
        positive_mask(bad, torch.tensor([1, 2]))


def test_cosine_sim_is_the_inner_product_per_pair():
    image_emb, caption_emb = random_embeddings(4)
    sims = cosine_sim(image_emb, caption_emb[:3])
    assert sims.shape == (4, 3)
    for i in range(4):
        for c in range(3):
            assert sims[i, c].item() == pytest.approx(sum(a * b for a, b in zip(image_emb[i].tolist(),
                                                                               caption_emb[c].tolist())))


@pytest.mark.parametrize("chunk_elements", [similarity.ORDER_SIM_CHUNK_ELEMENTS, 7])
def test_order_sim_equals_the_unsquared_norm_of_the_order_violation(monkeypatch, chunk_elements):
    monkeypatch.setattr(similarity, "ORDER_SIM_CHUNK_ELEMENTS", chunk_elements)  # 7: one image row per chunk
    image_emb, caption_emb = random_embeddings(5, normalize=False)
    sims = order_sim(image_emb, caption_emb[:4])
    assert sims.shape == (5, 4)
    for i in range(5):
        for c in range(4):
            violation = [max(0.0, cd - id_) for cd, id_ in zip(caption_emb[c].tolist(), image_emb[i].tolist())]
            assert sims[i, c].item() == pytest.approx(-math.sqrt(sum(v * v for v in violation)))


def test_order_sim_gradient_is_finite_when_the_order_holds():
    image_emb = torch.ones(2, 3, requires_grad=True)
    caption_emb = torch.zeros(2, 3, requires_grad=True)  # c <= i everywhere: norm 0
    order_sim(image_emb, caption_emb).sum().backward()
    assert torch.isfinite(image_emb.grad).all() and torch.isfinite(caption_emb.grad).all()


@pytest.mark.parametrize("similarity", ["cosine", "order"])
@pytest.mark.parametrize("ids", [UNIQUE_IDS, DUPLICATE_IDS], ids=["unique", "duplicates"])
@pytest.mark.parametrize("max_violation", [False, True], ids=["SH", "MH"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_contrastive_loss_equals_double_loop_reference(similarity, ids, max_violation, reduction):
    for seed in range(3):
        sims, pos_mask, id_list = batch(ids, seed=seed, similarity=similarity)
        margin = 0.2 if similarity == "cosine" else 0.05
        loss = contrastive_loss(sims, pos_mask, margin=margin, max_violation=max_violation, reduction=reduction)
        expected = reference_hinge(sims, id_list, margin=margin, max_violation=max_violation, reduction=reduction)
        assert loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("max_violation", [False, True])
def test_contrastive_loss_with_per_pair_margins_equals_reference(max_violation):
    sims, pos_mask, id_list = batch(DUPLICATE_IDS, seed=4)
    margins = torch.rand(sims.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    loss = contrastive_loss(sims, pos_mask, margin=margins, max_violation=max_violation)
    assert loss.item() == pytest.approx(reference_hinge(sims, id_list, margin=margins,
                                                        max_violation=max_violation, reduction="sum"))


def test_duplicate_image_rows_are_not_negatives_of_each_other():
    ids = torch.tensor([0, 0, 1])
    sims = torch.tensor([[0.9, 5.0, 0.1], [5.0, 0.9, 0.1], [0.1, 0.1, 0.9]])  # same-image entries huge
    for max_violation in (False, True):
        assert contrastive_loss(sims, positive_mask(ids, ids), max_violation=max_violation).item() == 0.0


@pytest.mark.parametrize("ids", [UNIQUE_IDS, DUPLICATE_IDS], ids=["unique", "duplicates"])
@pytest.mark.parametrize("max_violation", [False, True])
def test_loss_is_exactly_zero_when_every_positive_beats_every_negative_by_the_margin(ids, max_violation):
    ids = torch.tensor(ids)
    pos_mask = positive_mask(ids, ids)
    noise = torch.rand(len(ids), len(ids), generator=torch.Generator().manual_seed(0))
    sims = torch.where(pos_mask, 1.0 + noise, 0.79 - noise)  # every positive >= 1, every negative <= 0.79
    hardest = int((~pos_mask[0]).nonzero()[0])
    sims[0, 0], sims[0, hardest] = 1.0, 0.79  # one pair exactly 0.21 apart: a margin of 0.22 must bite
    assert contrastive_loss(sims, pos_mask, margin=0.2, max_violation=max_violation).item() == 0.0
    assert contrastive_loss(sims, pos_mask, margin=0.22, max_violation=max_violation).item() > 0.0


@pytest.mark.parametrize("ids", [UNIQUE_IDS, DUPLICATE_IDS], ids=["unique", "duplicates"])
def test_mh_is_nonnegative_and_at_most_sh(ids):
    for seed in range(5):
        sims, pos_mask, _ = batch(ids, seed=seed)
        mh = contrastive_loss(sims, pos_mask, max_violation=True)
        sh = contrastive_loss(sims, pos_mask, max_violation=False)
        assert 0.0 <= mh.item() <= sh.item()


@pytest.mark.parametrize("similarity", ["cosine", "order"])
@pytest.mark.parametrize("loss_name", ["sh", "mh", "lseh", "infonce"])
def test_losses_are_finite_and_reach_both_embeddings(similarity, loss_name):
    ids = torch.tensor(DUPLICATE_IDS)
    image_emb, caption_emb = (t.float().abs().requires_grad_() for t in random_embeddings(len(ids)))
    sims = cosine_sim(image_emb, caption_emb) if similarity == "cosine" else order_sim(image_emb, caption_emb)
    pos_mask = positive_mask(ids, ids)
    if loss_name == "lseh":
        vectors = torch.randn(len(ids), 4, generator=torch.Generator().manual_seed(0))
        margins = lseh_margins(vectors @ vectors.T, pos_mask)
        loss = contrastive_loss(sims, pos_mask, margin=margins)
    elif loss_name == "infonce":
        loss = info_nce_loss(sims, pos_mask, logit_scale=torch.tensor(10.0))
    else:
        loss = contrastive_loss(sims, pos_mask, max_violation=loss_name == "mh")
    loss.backward()
    assert torch.isfinite(loss) and loss.item() >= 0.0
    for emb in (image_emb, caption_emb):
        assert torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, message", [
    ({"reduction": "avg"}, "unknown reduction"),
    ({"margin": -0.1}, "margin must be >= 0"),
    ({"margin": torch.zeros(2, 2)}, "per-pair margin"),
])
def test_contrastive_loss_rejects_bad_options(kwargs, message):
    sims, pos_mask, _ = batch(UNIQUE_IDS)
    with pytest.raises(ValueError, match=message):
        contrastive_loss(sims, pos_mask, **kwargs)


def test_losses_reject_non_square_sims_and_masks_without_the_diagonal():
    with pytest.raises(ValueError, match="square"):
        contrastive_loss(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        contrastive_loss(torch.zeros(2, 2), torch.ones(2, 2))
    with pytest.raises(ValueError, match="diagonal"):
        info_nce_loss(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.bool), logit_scale=1.0)


# LSEH

def test_lseh_margin_is_alpha_for_unrelated_captions_and_zero_for_same_image_pairs():
    ids = torch.tensor([0, 0, 1, 2])
    vectors = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 1.0, 1.0]])
    margins = lseh_margins(vectors @ vectors.T, positive_mask(ids, ids), alpha=0.185, lam=0.025)
    assert margins[0, 0] == 0 and margins[0, 1] == 0 and margins[1, 0] == 0  # same image
    assert margins[0, 2].item() == pytest.approx(0.185) and margins[2, 0].item() == pytest.approx(0.185)
    # caption 3 vs caption 2: v3.v2 = 3 is row 3's max (above v3.v3 = 2) -> S = 1
    assert margins[3, 2].item() == pytest.approx(0.185 + 0.025)
    # row 2's max is v2.v2 = 9 -> S[2, 3] = 3 / 9: the matrix is row-normalised, not symmetric
    assert margins[2, 3].item() == pytest.approx(0.185 + 0.025 * 3 / 9)


def test_lseh_margins_guard_a_zero_semantic_vector():
    ids = torch.tensor([0, 1])
    vectors = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    margins = lseh_margins(vectors @ vectors.T, positive_mask(ids, ids))
    assert torch.isfinite(margins).all() and margins[0, 1].item() == pytest.approx(0.185)


def test_lseh_margins_in_the_hinge_equal_reference_with_looped_margins():
    sims, pos_mask, id_list = batch(DUPLICATE_IDS, seed=2)
    vectors = torch.randn(len(id_list), 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    v = vectors.tolist()
    dots = [[sum(a * b for a, b in zip(v[i], v[j])) for j in range(len(v))] for i in range(len(v))]
    margins = torch.tensor([[0.0 if id_list[i] == id_list[j] else 0.185 + 0.025 * dots[i][j] / max(dots[i])
                             for j in range(len(v))] for i in range(len(v))], dtype=torch.float64)
    expected = reference_hinge(sims, id_list, margin=margins, max_violation=True, reduction="sum")
    loss = contrastive_loss(sims, pos_mask, margin=lseh_margins(vectors @ vectors.T, pos_mask))
    assert loss.item() == pytest.approx(expected)


# InfoNCE

def reference_info_nce(sims, ids, scale):
    s = (sims * scale).tolist()
    n = len(ids)
    total = 0.0
    for b in range(n):  # row b: target caption b; other captions of the same image are left out
        logits = [s[b][c] for c in range(n) if c == b or ids[c] != ids[b]]
        total += -s[b][b] + math.log(sum(math.exp(x) for x in logits))
    for c in range(n):  # column c: target image row c; other rows of the same image are left out
        logits = [s[b][c] for b in range(n) if b == c or ids[b] != ids[c]]
        total += -s[c][c] + math.log(sum(math.exp(x) for x in logits))
    return total / (2 * n)


@pytest.mark.parametrize("ids", [UNIQUE_IDS, DUPLICATE_IDS], ids=["unique", "duplicates"])
def test_info_nce_equals_brute_force_reference(ids):
    sims, pos_mask, id_list = batch(ids, seed=5)
    loss = info_nce_loss(sims, pos_mask, logit_scale=14.3)
    assert loss.item() == pytest.approx(reference_info_nce(sims, id_list, 14.3), rel=1e-10)


def test_info_nce_gives_a_gradient_to_the_learnable_log_scale():
    sims, pos_mask, _ = batch(DUPLICATE_IDS)
    log_scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)
    loss = info_nce_loss(sims, pos_mask, logit_scale=log_scale.exp())
    loss.backward()
    assert torch.isfinite(loss) and log_scale.grad is not None and log_scale.grad != 0


def test_info_nce_rejects_a_non_positive_scale():
    sims, pos_mask, _ = batch(UNIQUE_IDS)
    with pytest.raises(ValueError, match="logit_scale"):
        info_nce_loss(sims, pos_mask, logit_scale=0.0)
