"""Encode a split of the store into embeddings, for validation and evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from train.data import check_feature_mode, eval_feature_mode, pad_token_ids, read_image_features, store_kind
from train.losses.similarity import similarity_function
from train.model import VSEModel
from train.text import Vocabulary, caption_tokens


@torch.no_grad()
def encode_store_images(model: VSEModel, store: object, image_rows: np.ndarray, *, feature_mode: str,
                        batch_size: int, device: torch.device | str) -> torch.Tensor:
    """image_emb [N, E] float32 on the CPU for `image_rows`, read from the store in batches (sets whole: no
    region drop outside training)."""
    mode = eval_feature_mode(feature_mode)
    check_feature_mode(store, mode, option="the model's feature mode")
    features = store.feature_rows(store_kind(mode))
    chunks = []
    for start in range(0, len(image_rows), batch_size):
        block = read_image_features(features, image_rows[start:start + batch_size], feature_mode=mode)
        chunks.append(model.encode_images(torch.from_numpy(block).to(device)).float().cpu())
    return torch.cat(chunks) if chunks else torch.zeros(0, 0)


@torch.no_grad()
def encode_token_lists(model: VSEModel, token_lists: Sequence[Sequence[str]], *, vocab: Vocabulary,
                       batch_size: int, device: torch.device | str) -> torch.Tensor:
    """caption_emb [M, E] float32 on the CPU for tokenized captions (finetune validation reuses this)."""
    chunks = []
    for start in range(0, len(token_lists), batch_size):
        ids = [vocab.encode(tokens) for tokens in token_lists[start:start + batch_size]]
        tokens, lengths = pad_token_ids(ids)
        chunks.append(model.encode_captions(tokens.to(device), lengths).float().cpu())
    return torch.cat(chunks) if chunks else torch.zeros(0, 0)


def split_rows(store: object, splits: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image_rows [N], caption_rows [M], caption_image_index [M] in 0..N-1) of done images of `splits`."""
    image_rows = store.image_indices(list(splits))
    caption_rows = store.caption_indices(list(splits))
    if len(image_rows) == 0 or len(caption_rows) == 0:
        raise ValueError(f"splits {list(splits)} of {getattr(store, 'path', 'the store')} have no extracted "
                         "images with captions; check the split names and the extraction")
    caption_image_index = np.searchsorted(image_rows, store.caption_image_index[caption_rows])
    assert np.array_equal(image_rows[caption_image_index], store.caption_image_index[caption_rows])
    return image_rows, caption_rows, caption_image_index.astype(np.int64)


def encode_split(model: VSEModel, store: object, *, splits: Sequence[str], feature_mode: str, vocab: Vocabulary,
                 batch_size: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor, np.ndarray,
                                                                       np.ndarray]:
    """Embed every done image of `splits` and its captions, in store order.

    Returns (image_emb [N, E], caption_emb [M, E], caption_image_index [M] re-indexed to 0..N-1,
    image_rows [N] store rows). "10c-random" is encoded with the mean of the crops. The model is put in
    eval mode and restored to its previous mode afterwards.
    """
    image_rows, caption_rows, caption_image_index = split_rows(store, splits)
    was_training = model.training
    model.eval()
    try:
        image_emb = encode_store_images(model, store, image_rows, feature_mode=feature_mode,
                                        batch_size=batch_size, device=device)
        tokens = caption_tokens(store, caption_rows.tolist(), tokenizer=vocab.tokenizer)
        caption_emb = encode_token_lists(model, tokens, vocab=vocab,
                                         batch_size=batch_size, device=device)
    finally:
        model.train(was_training)
    return image_emb, caption_emb, caption_image_index, image_rows


@torch.no_grad()
def similarity_matrix(image_emb: torch.Tensor, caption_emb: torch.Tensor, *, similarity: str) -> torch.Tensor:
    """sims [N, M] with the similarity the model was trained with ("cosine" or "order", chunked inside)."""
    return similarity_function(similarity)(image_emb, caption_emb)
