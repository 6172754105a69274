"""The loss modules of train/losses/ as the trainer calls them: against reference-style code, per option, per loss."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from train.config import PRESETS, TrainConfig
from train.losses import build_loss, unused_loss_options
from train.losses.group import GroupLoss, group_hard_negative_loss, select_k
from train.losses.hinge import HingeLoss, contrastive_loss
from train.losses.infonce import InfoNCELoss, info_nce_loss
from train.losses.similarity import order_sim, positive_mask

DUPLICATE_IDS = torch.tensor([3, 7, 3, 1, 7, 7, 2, 5])


def embeddings(batch: int, *, dim: int = 6, seed: int = 0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    image_emb = F.normalize(torch.randn(batch, dim, generator=generator, dtype=dtype), dim=1)
    caption_emb = F.normalize(torch.randn(batch, dim, generator=generator, dtype=dtype), dim=1)
    return image_emb, caption_emb


def reference_vsepp_loss(image_emb, caption_emb, *, margin, max_violation):
    """The reference implementation's ContrastiveLoss, written from its published form: positives on the diagonal."""
    scores = image_emb @ caption_emb.T
    diagonal = scores.diag().view(-1, 1)
    cost_caption = (margin + scores - diagonal.expand_as(scores)).clamp(min=0)
    cost_image = (margin + scores - diagonal.T.expand_as(scores)).clamp(min=0)
    eye = torch.eye(scores.shape[0], dtype=torch.bool)
    cost_caption, cost_image = cost_caption.masked_fill(eye, 0), cost_image.masked_fill(eye, 0)
    if max_violation:
        cost_caption, cost_image = cost_caption.max(1)[0], cost_image.max(0)[0]
    return cost_caption.sum() + cost_image.sum()


def reference_lseh_loss(image_emb, caption_emb, vectors, *, alpha, lam):
    """LSEH as the authors' code computes it: one row-normalised margin matrix added to both MH cost terms."""
    scores = image_emb @ caption_emb.T
    semantic = vectors @ vectors.T
    semantic = semantic / semantic.max(dim=1, keepdim=True).values
    margins = alpha + lam * semantic
    diagonal = scores.diag().view(-1, 1)
    eye = torch.eye(scores.shape[0], dtype=torch.bool)
    cost_caption = (margins + scores - diagonal).clamp(min=0).masked_fill(eye, 0)
    cost_image = (margins + scores - diagonal.T).clamp(min=0).masked_fill(eye, 0)
    return cost_caption.max(1)[0].sum() + cost_image.max(0)[0].sum()


def call(loss, image_emb, caption_emb, ids, *, epoch=0, step=0):
    return loss(image_emb, caption_emb, ids, caption_ids=torch.arange(len(ids)), epoch=epoch, step=step)


@pytest.mark.parametrize("loss_name", ["sh", "mh"])
def test_sh_and_mh_modules_equal_the_reference_implementation_bit_for_bit(loss_name):
    image_emb, caption_emb = embeddings(16, dtype=torch.float32)
    config = TrainConfig(store="s", loss=loss_name)
    value, logs = call(build_loss(config), image_emb, caption_emb, torch.arange(16))
    expected = reference_vsepp_loss(image_emb, caption_emb, margin=0.2, max_violation=loss_name == "mh")
    assert torch.equal(value, expected) and logs == {}


def test_lseh_module_equals_the_authors_form_of_the_loss():
    image_emb, caption_emb = embeddings(12)
    vectors = torch.rand(12, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    loss = HingeLoss(similarity="cosine", max_violation=True, margin=0.185, semantic_vectors=vectors.numpy(),
                     lseh_lambda=0.025)
    caption_rows = torch.arange(12)
    value, _ = loss(image_emb, caption_emb, torch.arange(12), caption_ids=caption_rows, epoch=0, step=0)
    expected = reference_lseh_loss(image_emb, caption_emb, vectors, alpha=0.185, lam=0.025)
    torch.testing.assert_close(value, expected, rtol=0, atol=1e-12)


def test_lseh_module_reads_the_semantic_vectors_of_the_batch_captions():
    image_emb, caption_emb = embeddings(4)
    store_vectors = np.random.default_rng(0).random((30, 5))
    caption_rows = torch.tensor([17, 3, 29, 8])
    loss = HingeLoss(similarity="cosine", max_violation=True, margin=0.185, semantic_vectors=store_vectors)
    value, _ = loss(image_emb, caption_emb, torch.arange(4), caption_ids=caption_rows, epoch=0, step=0)
    expected = reference_lseh_loss(image_emb, caption_emb, torch.from_numpy(store_vectors[caption_rows.numpy()]),
                                   alpha=0.185, lam=0.025)
    torch.testing.assert_close(value, expected, rtol=0, atol=1e-12)


def test_warmup_uses_sh_then_mh():
    image_emb, caption_emb = embeddings(8)
    loss = build_loss(TrainConfig(store="s", loss="mh", warmup_epochs=2))
    mask = positive_mask(DUPLICATE_IDS, DUPLICATE_IDS)
    sims = image_emb @ caption_emb.T
    for epoch, max_violation in ((0, False), (1, False), (2, True), (5, True)):
        value, _ = call(loss, image_emb, caption_emb, DUPLICATE_IDS, epoch=epoch)
        assert torch.equal(value, contrastive_loss(sims, mask, max_violation=max_violation)), epoch


def test_order_similarity_is_chosen_once_and_used_by_the_hinge():
    image_emb, caption_emb = (emb.abs() for emb in embeddings(8))
    loss = build_loss(dataclasses.replace(TrainConfig(store="s"), **PRESETS["order++"]))
    value, _ = call(loss, image_emb, caption_emb, DUPLICATE_IDS)
    expected = contrastive_loss(order_sim(image_emb, caption_emb), positive_mask(DUPLICATE_IDS, DUPLICATE_IDS),
                                margin=0.05, max_violation=True)
    assert torch.equal(value, expected) and loss.similarity_name == "order"


@pytest.mark.parametrize("k_mode", ["adaptive", "constant", "random"])
def test_group_module_equals_the_pure_loss_and_logs_k(k_mode):
    image_emb, caption_emb = embeddings(8)
    loss = GroupLoss(similarity="cosine", k_mode=k_mode, k=3, seed=4)
    value, logs = call(loss, image_emb, caption_emb, DUPLICATE_IDS, epoch=1, step=2)
    sims, mask = image_emb @ caption_emb.T, positive_mask(DUPLICATE_IDS, DUPLICATE_IDS)
    k = select_k(k_mode, sims, mask, k=3, generator=loss.k_generator(1, 2))
    assert logs == {"k": k}
    assert torch.equal(value, group_hard_negative_loss(sims, mask, k=k))


def test_group_random_k_is_a_function_of_seed_epoch_and_step():
    image_emb, caption_emb = embeddings(32)
    loss = GroupLoss(similarity="cosine", k_mode="random", seed=0)
    ids = torch.arange(32)
    draws = [call(loss, image_emb, caption_emb, ids, epoch=0, step=step)[1]["k"] for step in range(6)]
    again = [call(loss, image_emb, caption_emb, ids, epoch=0, step=step)[1]["k"] for step in range(6)]
    assert draws == again and len(set(draws)) > 1


def test_group_loss_of_a_single_pair_is_zero():
    image_emb, caption_emb = embeddings(1)
    value, logs = call(GroupLoss(similarity="cosine"), image_emb, caption_emb, torch.tensor([0]))
    assert value.item() == 0 and logs == {"k": 0}


def test_infonce_owns_its_temperature():
    loss = build_loss(TrainConfig(store="s", loss="infonce"))
    assert isinstance(loss, InfoNCELoss) and [name for name, _ in loss.named_parameters()] == ["logit_scale"]
    torch.testing.assert_close(loss.scale(), torch.tensor(1 / 0.07))
    image_emb, caption_emb = embeddings(8)
    value, logs = call(loss, image_emb, caption_emb, DUPLICATE_IDS)
    expected = info_nce_loss(image_emb @ caption_emb.T, positive_mask(DUPLICATE_IDS, DUPLICATE_IDS),
                             logit_scale=loss.scale())
    assert torch.equal(value, expected) and logs["logit_scale"] == pytest.approx(1 / 0.07)
    value.backward()
    assert loss.logit_scale.grad is not None


@pytest.mark.parametrize("options,unused", [
    ({"loss": "infonce", "margin": 0.3}, ["margin"]),
    ({"loss": "infonce", "reduction": "mean", "warmup_epochs": 2}, ["reduction", "warmup_epochs"]),
    ({"loss": "mh", "group_k_mode": "random"}, ["group_k_mode"]),
    ({"loss": "group", "group_k": 5}, ["group_k"]),  # k is only read by --group-k-mode constant
    ({"loss": "group", "margin_source": "lseh"}, ["margin_source"]),
    ({"loss": "mh", "lseh_lambda": 0.1}, ["lseh_lambda"]),  # lambda is only read by LSEH margins
    ({"loss": "sh", "warmup_epochs": 3}, ["warmup_epochs"]),  # SH warm-up before SH changes nothing
])
def test_an_option_the_loss_does_not_read_is_refused(options, unused):
    config = TrainConfig(store="s", **options)
    assert unused_loss_options(config) == unused
    with pytest.raises(ValueError, match=f"--loss {options['loss']} .* does not use --{unused[0].replace('_', '-')}"):
        config.validate()


@pytest.mark.parametrize("options", [
    {"loss": "group", "group_k_mode": "constant", "group_k": 5, "margin": 0.1},
    {"loss": "mh", "margin_source": "lseh", "lseh_lambda": 0.1, "margin": 0.185, "reduction": "mean"},
    {"loss": "mh", "warmup_epochs": 2},
    {"loss": "infonce", "similarity": "order"},
])
def test_options_the_loss_reads_are_accepted(options):
    config = TrainConfig(store="s", **options)
    config.validate()
    assert unused_loss_options(config) == []


def test_every_preset_is_a_valid_config():
    for name, overrides in PRESETS.items():
        dataclasses.replace(TrainConfig(store="s"), **overrides).validate()


def test_lseh_needs_the_store():
    with pytest.raises(ValueError, match="feature store"):
        build_loss(TrainConfig(store="s", margin_source="lseh"))
