"""Long captions and queries: Vocabulary.encode keeps the first MAX_TOKENS tokens and warns once."""

from __future__ import annotations

import logging

from train.text import MAX_TOKENS, SPECIAL_TOKENS, Vocabulary


def test_a_caption_past_max_tokens_keeps_its_first_tokens_and_warns_once(caplog):
    vocab = Vocabulary(list(SPECIAL_TOKENS) + ["a", "dog"])
    short = vocab.encode(["a", "dog"] * (MAX_TOKENS // 2))
    assert len(short) == MAX_TOKENS + 2 and not caplog.records
    with caplog.at_level(logging.WARNING):
        long = vocab.encode(["a", "dog"] * 50_000)
        vocab.encode(["dog"] * (MAX_TOKENS + 1))
    assert long.tolist() == short.tolist()
    warning, = [record.getMessage() for record in caplog.records]
    assert warning.startswith(f"a caption or query of 100000 tokens is cut to its first {MAX_TOKENS}")
