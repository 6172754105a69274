"""Tests of train/model.py: packed GRU, pooling options, normalisation, image head, backbone slot."""

import math

import pytest
import torch
from torch import nn

from train.config import TrainConfig
from train.data import pad_token_ids
from train.model import ImageEncoder, ImageHead, TextEncoder, VSEModel, build_model

VOCAB, WORD_DIM, EMBED_DIM, FEATURE_DIM = 30, 16, 32, 24


def _captions(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = [torch.randint(1, VOCAB, (length,), generator=generator).numpy() for length in lengths]
    return pad_token_ids(ids)


def test_packed_last_state_equals_each_caption_alone():
    torch.manual_seed(0)
    encoder = TextEncoder(VOCAB, word_dim=WORD_DIM, embed_dim=EMBED_DIM, text_pool="last")
    tokens, lengths = _captions([3, 7, 1, 5])  # unsorted lengths, padding after the short ones
    batched = encoder(tokens, lengths)
    for row, length in enumerate(lengths.tolist()):
        alone = encoder(tokens[row:row + 1, :length], lengths[row:row + 1])
        torch.testing.assert_close(batched[row], alone[0], atol=1e-6, rtol=1e-5)
    # and padding really is ignored: a plain nn.GRU run over the padded row ends in another state
    _, states = nn.GRU.forward(encoder.gru, encoder.embed(tokens[:1]))
    assert not torch.allclose(states[-1, 0] / states[-1, 0].norm(), batched[0], atol=1e-4)


@pytest.mark.parametrize("text_pool", ["last", "mean", "adaptive", "gpo"])
@pytest.mark.parametrize("caption_head", [False, True])
def test_caption_embeddings_unit_norm_and_padding_invariant(text_pool: str, caption_head: bool):
    torch.manual_seed(0)
    encoder = TextEncoder(VOCAB, word_dim=WORD_DIM, embed_dim=EMBED_DIM, text_pool=text_pool,
                          caption_head=caption_head).eval()
    tokens, lengths = _captions([4, 6, 2])
    emb = encoder(tokens, lengths)
    assert emb.shape == (3, EMBED_DIM)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    longer = torch.cat([tokens, torch.full((3, 3), 7)], dim=1)  # junk after the true ends must not matter
    torch.testing.assert_close(encoder(longer, lengths), emb, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("image_pool", ["mean", "adaptive"])
def test_image_head_shapes_norm_and_set_mean(image_pool: str):
    torch.manual_seed(0)
    head = ImageHead(FEATURE_DIM, embed_dim=EMBED_DIM, image_pool=image_pool)
    crops = torch.randn(5, 10, FEATURE_DIM)
    set_emb = head(crops)
    torch.testing.assert_close(set_emb.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(head(crops[:, 0]).norm(dim=1), torch.ones(5))
    if image_pool == "mean":  # projecting then averaging = averaging then projecting (10c == 10c-set + mean)
        torch.testing.assert_close(set_emb, head(crops.mean(dim=1)), atol=1e-5, rtol=1e-5)
    assert torch.allclose(head(crops[:, torch.randperm(10)]), set_emb, atol=1e-5)  # a set: order-free
    with pytest.raises(ValueError, match="do not fit"):
        head(torch.randn(5, FEATURE_DIM + 1))


def test_xavier_init_without_image_norm_and_abs():
    head = ImageHead(2048, embed_dim=1024, image_norm=False)
    bound = math.sqrt(6.0) / math.sqrt(2048 + 1024)
    assert head.fc.weight.abs().max() <= bound and head.fc.weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(head.fc.bias) == 0
    features = 10 * torch.randn(3, 2048)
    assert not torch.allclose(head(features).norm(dim=1), torch.ones(3))
    config = TrainConfig(embed_dim=EMBED_DIM, word_dim=WORD_DIM, abs_embeddings=True)
    model = build_model(config, vocab_size=VOCAB, feature_dim=FEATURE_DIM)
    tokens, lengths = _captions([3, 4, 5])
    image_emb, caption_emb = model(torch.randn(3, FEATURE_DIM), tokens, lengths)
    assert (image_emb >= 0).all() and (caption_emb >= 0).all()


def test_backbone_slot_keeps_head_weights():
    model = build_model(TrainConfig(embed_dim=EMBED_DIM, word_dim=WORD_DIM), vocab_size=VOCAB,
                        feature_dim=FEATURE_DIM)
    head_state = {k: v.clone() for k, v in model.image_encoder.head.state_dict().items()}
    model.image_encoder.set_backbone(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, FEATURE_DIM)))
    assert model.encode_images(torch.randn(2, 3, 4, 4)).shape == (2, EMBED_DIM)
    assert all(torch.equal(head_state[k], v) for k, v in model.image_encoder.head.state_dict().items())
    assert isinstance(model.image_encoder, ImageEncoder) and isinstance(model, VSEModel)


def test_the_model_holds_no_loss_state_and_bad_pools_are_rejected():
    model = build_model(TrainConfig(embed_dim=EMBED_DIM, word_dim=WORD_DIM, loss="infonce"), vocab_size=VOCAB,
                        feature_dim=FEATURE_DIM)
    assert all(name.startswith(("image_encoder.", "text_encoder.")) for name, _ in model.named_parameters())
    with pytest.raises(ValueError, match="text pool 'bad'"):
        TextEncoder(VOCAB, word_dim=WORD_DIM, embed_dim=EMBED_DIM, text_pool="bad")
