"""A 100,000-word query or sentence is cut to MAX_TOKENS tokens: `search` and `encode --texts` take well under a
second for it, not minutes."""

from __future__ import annotations

import time

import numpy as np

from retrieval import VSE
from retrieval.embeddings import EmbeddingsFile
from retrieval.encode import EncodeConfig, run_encode
from train.text import MAX_TOKENS

WORDS = "a big red circle and a small blue star "


def test_a_huge_query_is_embedded_as_its_first_max_tokens_words_in_well_under_a_second(trained, caplog):
    vse = VSE.load(trained["cosine"], device="cpu")
    huge = WORDS * 12_500  # 112,500 words
    vse.encode_text(["warm up"])
    start = time.perf_counter()
    embedded = vse.encode_text([huge])
    assert time.perf_counter() - start < 1.5
    first = " ".join(huge.split()[:MAX_TOKENS])
    assert np.array_equal(embedded.numpy(), vse.encode_text([first]).numpy())
    assert any("112500 tokens is cut" in record.getMessage() for record in caplog.records)


def test_encode_texts_of_a_huge_line_finishes_fast(trained, tmp_path):
    texts = tmp_path / "long.txt"
    texts.write_text("a red circle\n" + WORDS * 12_500 + "\n")
    start = time.perf_counter()
    run_encode(EncodeConfig(checkpoint=str(trained["cosine"]), out=str(tmp_path / "e.h5"), texts=str(texts),
                            device="cpu", workers=0))
    assert time.perf_counter() - start < 5
    with EmbeddingsFile(tmp_path / "e.h5") as embeddings:
        assert embeddings.done_rows("captions").tolist() == [0, 1]
