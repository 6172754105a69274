"""The reference training workload that the step benches share: the paper's model sizes as command-line
arguments, a synthetic batch of that shape, and the matrix-product FLOP count of one step."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from train.data import Batch, pad_token_ids
from train.text import SPECIAL_TOKENS

START_ID, END_ID = 1, 2  # train.text: <pad>=0, <start>=1, <end>=2, <unk>=3


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--batch-size, --embed-dim, --word-dim, --feature-dim, --words, --vocab-size (the VSE++ paper's sizes)."""
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--embed-dim", type=int, default=1024, help="GRU and joint space size (paper: 1024)")
    parser.add_argument("--word-dim", type=int, default=300, help="word embedding size (paper: 300)")
    parser.add_argument("--feature-dim", type=int, default=2048, help="image feature size (ResNet152: 2048)")
    parser.add_argument("--words", type=int, default=12, help="mean words per caption (COCO: ~11)")
    parser.add_argument("--vocab-size", type=int, default=10000, help="vocabulary size incl. 4 special tokens")


def synthetic_batch(rng: np.random.Generator, *, batch_size: int, words: int, vocab_size: int,
                    feature_dim: int) -> Batch:
    """Captions of words-2..words+2 random ids between <start> and <end>, one random 1C feature per caption."""
    lengths = rng.integers(max(words - 2, 1), words + 3, batch_size)
    token_ids = [np.concatenate([[START_ID], rng.integers(len(SPECIAL_TOKENS), vocab_size, length), [END_ID]])
                 for length in lengths.tolist()]
    tokens, token_lengths = pad_token_ids([ids.astype(np.int64) for ids in token_ids])
    return Batch(tokens=tokens, lengths=token_lengths,
                 images=torch.from_numpy(rng.standard_normal((batch_size, feature_dim), dtype=np.float32)),
                 image_ids=torch.arange(batch_size), caption_rows=torch.arange(batch_size))


def step_gflop(lengths: torch.Tensor, *, word_dim: int, embed_dim: int, feature_dim: int) -> dict[str, float]:
    """Matrix-product GFLOP of one step over captions of `lengths` tokens: forward + backward = 3 x forward,
    2 FLOP per multiply-add; the GRU's 3 gates (W_i x + W_h h) run over the true tokens only (packed)."""
    tokens, batch_size = int(lengths.sum()), int(lengths.shape[0])
    parts = {"gru": 3 * 2 * 3 * embed_dim * (word_dim + embed_dim) * tokens,
             "image_head": 3 * 2 * feature_dim * embed_dim * batch_size,
             "sims": 3 * 2 * batch_size * batch_size * embed_dim}
    return {name: flop / 1e9 for name, flop in parts.items()}
