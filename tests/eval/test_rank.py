"""eval.rank: the blocked rank engine, chunked top-k and positive_ranks against brute-force loops and full sorts."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from eval.metrics import ranks_i2t, ranks_t2i, recall_metrics, recall_metrics_from_embeddings
from eval.blocks import swap_sim
from eval.rank import positive_ranks, retrieval_ranks
from eval.topk import topk


def brute_force_ranks(sims: np.ndarray, index: np.ndarray) -> tuple[list[int], list[int]]:
    """The stated policy, literally: 1 + negatives with s >= the positive's s; i2t takes the best positive."""
    rows, index = np.asarray(sims, dtype=np.float64).tolist(), index.tolist()
    num_images, num_captions = len(rows), len(index)
    i2t = []
    for i in range(num_images):
        ranks = [1 + sum(index[c] != i and rows[i][c] >= rows[i][p] for c in range(num_captions))
                 for p in range(num_captions) if index[p] == i]
        i2t.append(min(ranks))
    t2i = [1 + sum(i != index[c] and rows[i][c] >= rows[index[c]][c] for i in range(num_images))
           for c in range(num_captions)]
    return i2t, t2i


def order_sim(image_emb: torch.Tensor, caption_emb: torch.Tensor) -> torch.Tensor:
    """-||max(0, c - i)||, [n, D] x [m, D] -> [n, m] (temporaries [n, m, D])."""
    return -(caption_emb[None, :, :] - image_emb[:, None, :]).clamp(min=0).norm(dim=2)


def integer_rows(rng: np.random.Generator, count: int, dim: int = 3, high: int = 3) -> np.ndarray:
    """Small integers: every dot product is exact in float32, so ties are real and rounding cannot break them."""
    return rng.integers(0, high, size=(count, dim)).astype(np.float32)


def correlated(rng: np.random.Generator, index: np.ndarray, num_images: int, dim: int = 8):
    """Random image rows and captions near their image's, so ranks spread over 1..N."""
    image_emb = rng.normal(size=(num_images, dim)).astype(np.float32)
    caption_emb = image_emb[index] + rng.normal(size=(len(index), dim)).astype(np.float32)
    return image_emb, caption_emb


def assert_ranks(image_emb, caption_emb, index, sims, **kwargs) -> None:
    i2t, t2i = retrieval_ranks(image_emb, caption_emb, index, **kwargs)
    expected_i2t, expected_t2i = brute_force_ranks(sims, index)
    assert i2t.tolist() == expected_i2t
    assert t2i.tolist() == expected_t2i


@pytest.mark.parametrize("blocks", [(1, 1), (3, 7), (5, 4), (64, 1000), (4, 13)])
@pytest.mark.parametrize("captions_per_image", [1, 5, "uneven"])
def test_ranks_match_brute_force_on_random_embeddings(rng, make_index, blocks, captions_per_image):
    uneven = captions_per_image == "uneven"
    index = make_index(list(rng.integers(1, 8, size=19)) if uneven else [captions_per_image] * 19)  # shuffled
    image_emb, caption_emb = correlated(rng, index, 19)
    assert_ranks(image_emb, caption_emb, index, image_emb.astype(np.float64) @ caption_emb.T.astype(np.float64),
                 image_block=blocks[0], caption_block=blocks[1])


@pytest.mark.parametrize("blocks", [(1, 1), (2, 3), (4, 5), (7, 11), (100, 100)])
def test_ranks_match_brute_force_with_exact_ties(rng, make_index, blocks):
    index = make_index(list(rng.integers(1, 6, size=17)))
    image_emb, caption_emb = integer_rows(rng, 17), integer_rows(rng, len(index))
    assert_ranks(image_emb, caption_emb, index, image_emb @ caption_emb.T,
                 image_block=blocks[0], caption_block=blocks[1])


def test_every_tie_rule_by_hand():
    # 1-d embeddings, so s[i, c] = image * caption. Image 0 = 1 (s = caption value), image 1 = 0 (s = 0 always).
    image_emb = np.array([[1.0], [0.0]], dtype=np.float32)
    caption_emb = np.array([[2.0], [2.0], [2.0], [1.0], [0.0]], dtype=np.float32)
    index = np.array([0, 0, 1, 1, 1])
    i2t, t2i = retrieval_ranks(image_emb, caption_emb, index, image_block=1, caption_block=2)
    # Image 0: positives 0, 1 tie each other (2.0): neither pushes the other down; negative caption 2 ties them
    # (2.0 >= 2.0, counted against: pessimistic), caption 3 (1.0) and 4 (0.0) do not -> rank 2.
    # Image 1: every score is 0; its best positive (0) ties both negatives -> rank 3.
    assert i2t.tolist() == [2, 3]
    # Captions 0, 1: own image scores 2 vs image 1's 0 -> 1. Caption 2: own image 1 scores 0 < image 0's 2 -> 2.
    # Caption 3: 0 < 1 -> 2. Caption 4: own 0 ties image 0's 0 -> pessimistic 2.
    assert t2i.tolist() == [1, 1, 2, 2, 2]


def test_single_image_and_single_caption():
    one = np.ones((1, 4), dtype=np.float32)
    assert [r.tolist() for r in retrieval_ranks(one, one, [0])] == [[1], [1]]
    captions = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    i2t, t2i = retrieval_ranks(one, captions, np.zeros(6, dtype=np.int64), caption_block=4)  # > one block
    assert i2t.tolist() == [1] and t2i.tolist() == [1] * 6  # no negatives at all


def test_an_image_with_more_captions_than_a_block(rng):
    index = np.array([0] * 9 + [1, 2, 2])
    image_emb, caption_emb = integer_rows(rng, 3), integer_rows(rng, 12)
    assert_ranks(image_emb, caption_emb, index, image_emb @ caption_emb.T, image_block=2, caption_block=4)


@pytest.mark.parametrize("blocks", [(1, 1), (3, 5), (64, 64)])
def test_order_similarity_matches_brute_force(rng, make_index, blocks):
    index = make_index(list(rng.integers(1, 5, size=13)))
    image_emb, caption_emb = (np.abs(emb) for emb in correlated(rng, index, 13, dim=5))
    sims = order_sim(torch.from_numpy(image_emb), torch.from_numpy(caption_emb)).numpy()
    assert_ranks(image_emb, caption_emb, index, sims, sim_fn=order_sim, image_block=blocks[0],
                 caption_block=blocks[1])


def test_float16_embeddings_are_scored_in_float32(rng, make_index):
    index = make_index([3] * 15)
    image16, caption16 = (emb.astype(np.float16) for emb in correlated(rng, index, 15))
    sims = image16.astype(np.float32) @ caption16.astype(np.float32).T
    assert_ranks(image16, caption16, index, sims, image_block=4, caption_block=10)
    assert_ranks(torch.from_numpy(image16), torch.from_numpy(caption16), index, sims)


def test_from_embeddings_equals_the_matrix_path(rng, make_index):
    """recall_metrics on the full matrix (the trainer's path) and recall_metrics_from_embeddings agree."""
    index = make_index(list(rng.integers(1, 7, size=300)))
    image_emb, caption_emb = (torch.from_numpy(emb) for emb in correlated(rng, index, 300, dim=16))
    sims = image_emb @ caption_emb.T
    assert ranks_i2t(sims, index).tolist() == retrieval_ranks(image_emb, caption_emb, index)[0].tolist()
    assert ranks_t2i(sims, index).tolist() == retrieval_ranks(image_emb, caption_emb, index)[1].tolist()
    from_embeddings = recall_metrics_from_embeddings(image_emb, caption_emb, index, image_block=64,
                                                     caption_block=100)
    assert from_embeddings == recall_metrics(sims, index)
    assert 0 < from_embeddings["i2t_r1"] < 100 and 0 < from_embeddings["t2i_r1"] < 100


class RecordingSim:
    """A dot product over columns 1: that records the block shapes and the (image id, caption id) pairs it
    scored, column 0 of each embedding carrying its row id."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, int]] = []
        self.pairs: list[tuple[int, int]] = []

    def __call__(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        self.shapes.append((left.shape[0], right.shape[0]))
        self.pairs += [(int(i), int(c)) for i in left[:, 0] for c in right[:, 0]]
        return left[:, 1:] @ right[:, 1:].T


def with_ids(emb: np.ndarray) -> np.ndarray:
    return np.concatenate([np.arange(len(emb), dtype=np.float32)[:, None], emb], axis=1)


@pytest.mark.parametrize("blocks", [(4, 6), (5, 9), (1, 3), (50, 50)])
def test_blocks_stay_within_the_bounds_and_score_each_pair_once(rng, make_index, blocks):
    index = make_index(list(rng.integers(1, 4, size=23)))
    image_emb, caption_emb = integer_rows(rng, 23), integer_rows(rng, len(index))
    recorder = RecordingSim()
    i2t, t2i = retrieval_ranks(with_ids(image_emb), with_ids(caption_emb), index, sim_fn=recorder,
                               image_block=blocks[0], caption_block=blocks[1])
    assert max(n for n, _ in recorder.shapes) <= blocks[0] and max(m for _, m in recorder.shapes) <= blocks[1]
    assert sorted(recorder.pairs) == [(i, c) for i in range(23) for c in range(len(index))]  # each exactly once
    expected = brute_force_ranks(image_emb @ caption_emb.T, index)
    assert (i2t.tolist(), t2i.tolist()) == expected


def test_counting_restores_the_thread_count(rng):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        retrieval_ranks(integer_rows(rng, 4), integer_rows(rng, 4), np.arange(4))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def full_sort_topk(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: each row fully sorted by (score descending, gallery index ascending)."""
    order = np.array([sorted(range(sims.shape[1]), key=lambda g: (-sims[q, g], g))[:k] for q in range(len(sims))])
    return np.take_along_axis(sims, order, axis=1), order


@pytest.mark.parametrize("k", [1, 3, 10, 29])
@pytest.mark.parametrize("blocks", [(1, 1), (4, 5), (7, 30), (100, 100)])
@pytest.mark.parametrize("data", ["random", "ties"])
def test_topk_matches_a_full_sort(rng, k, blocks, data):
    if data == "ties":
        queries, gallery = integer_rows(rng, 11), integer_rows(rng, 29)
    else:
        queries, gallery = rng.normal(size=(11, 6)).astype(np.float32), rng.normal(size=(29, 6)).astype(np.float32)
    scores, indices = topk(queries, gallery, k, query_block=blocks[0], gallery_block=blocks[1])
    expected_scores, expected_indices = full_sort_topk(queries.astype(np.float64) @ gallery.T.astype(np.float64), k)
    np.testing.assert_array_equal(indices.numpy(), expected_indices)  # k = 29 = the whole gallery
    np.testing.assert_allclose(scores.numpy(), expected_scores, rtol=1e-6, atol=1e-6)


def test_topk_breaks_ties_by_lower_gallery_index_across_chunks():
    gallery = np.array([[1.0], [2.0], [2.0], [0.0], [2.0], [2.0]], dtype=np.float32)
    scores, indices = topk(np.ones((1, 1), dtype=np.float32), gallery, 3, gallery_block=2)
    assert indices.tolist() == [[1, 2, 4]] and scores.tolist() == [[2.0, 2.0, 2.0]]


def test_topk_with_order_similarity_for_caption_queries(rng):
    images, captions = np.abs(rng.normal(size=(9, 4))), np.abs(rng.normal(size=(5, 4)))
    images, captions = images.astype(np.float32), captions.astype(np.float32)
    sims = order_sim(torch.from_numpy(images), torch.from_numpy(captions)).numpy()  # [images, captions]
    scores, indices = topk(captions, images, 4, sim_fn=swap_sim(order_sim), query_block=2, gallery_block=3)
    expected_scores, expected_indices = full_sort_topk(sims.T, 4)
    np.testing.assert_array_equal(indices.numpy(), expected_indices)
    np.testing.assert_allclose(scores.numpy(), expected_scores, rtol=1e-6)


def test_topk_blocks_stay_within_the_bounds(rng):
    recorder = RecordingSim()
    topk(with_ids(integer_rows(rng, 10)), with_ids(integer_rows(rng, 33)), 5, sim_fn=recorder, query_block=3,
         gallery_block=8)
    assert {shape for shape in recorder.shapes} <= {(q, g) for q in (1, 3) for g in (1, 8)}
    assert sorted(recorder.pairs) == [(q, g) for q in range(10) for g in range(33)]


def brute_force_positive_ranks(sims: np.ndarray, query_rows: list[int], positive_rows: list[int]) -> list[int]:
    positives = {q: {g for q2, g in zip(query_rows, positive_rows) if q2 == q} for q in query_rows}
    return [1 + sum(g2 not in positives[q] and sims[q][g2] >= sims[q][g] for g2 in range(sims.shape[1]))
            for q, g in zip(query_rows, positive_rows)]


@pytest.mark.parametrize("blocks", [(1, 1), (2, 4), (3, 7), (100, 100)])
def test_positive_ranks_match_brute_force_with_ties_and_sibling_positives(rng, blocks):
    queries, gallery = integer_rows(rng, 8), integer_rows(rng, 21)
    query_rows = [5, 0, 5, 3, 3, 3, 7, 0, 2]  # queries with 1, 2 and 3 positives, out of order
    positive_rows = [4, 20, 9, 0, 1, 13, 13, 2, 6]
    ranks = positive_ranks(queries, gallery, query_rows, positive_rows, query_block=blocks[0],
                           gallery_block=blocks[1])
    assert ranks.tolist() == brute_force_positive_ranks(queries @ gallery.T, query_rows, positive_rows)


def test_positive_ranks_equal_eval_ranks_and_topk_positions(rng, make_index):
    index = make_index(list(rng.integers(1, 5, size=40)))
    image_emb, caption_emb = correlated(rng, index, 40)
    i2t, t2i = retrieval_ranks(image_emb, caption_emb, index, image_block=16, caption_block=32)
    t2i_search = positive_ranks(caption_emb, image_emb, np.arange(len(index)), index, sim_fn=swap_sim(None),
                                query_block=16, gallery_block=32)
    assert t2i_search.tolist() == t2i.tolist()
    per_caption = positive_ranks(image_emb, caption_emb, index, np.arange(len(index)), gallery_block=50)
    best = [min(r for r, i in zip(per_caption.tolist(), index) if i == image) for image in range(40)]
    assert best == i2t.tolist()
    # On untied scores the top-k position of a positive is its rank.
    _, indices = topk(caption_emb, image_emb, 40, gallery_block=7)
    positions = [row.index(image) + 1 for row, image in zip(indices.tolist(), index)]
    assert positions == t2i.tolist()


def test_positive_ranks_of_one_query_with_more_positives_than_a_block(rng):
    queries, gallery = integer_rows(rng, 2), integer_rows(rng, 12)
    query_rows, positive_rows = [1] * 5 + [0], [0, 3, 4, 8, 11, 2]
    ranks = positive_ranks(queries, gallery, query_rows, positive_rows, query_block=2, gallery_block=5)
    assert ranks.tolist() == brute_force_positive_ranks(queries @ gallery.T, query_rows, positive_rows)


def test_nan_is_rejected_in_embeddings_and_in_sim_fn_output(rng):
    good = integer_rows(rng, 4)
    bad = good.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match=re.escape("caption_emb contains NaN in 1 row(s), e.g. rows [2]")):
        retrieval_ranks(good, bad, np.arange(4))
    with pytest.raises(ValueError, match=re.escape("sim_fn output contains NaN in image rows 0..1")):
        retrieval_ranks(good, good, np.arange(4), sim_fn=lambda i, c: (i @ c.T) / 0.0 * 0.0, image_block=2)
    infinite = good.copy()
    infinite[0, 0] = np.inf  # inf * 0 = NaN inside the dot product: the block check must stay on
    with pytest.raises(ValueError, match="contains NaN in query rows 0..3"):
        topk(infinite * np.array([1, 0, 0], dtype=np.float32), good * np.array([0, 1, 1], dtype=np.float32), 2)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda e: retrieval_ranks(e, e[:, :2], np.arange(4)), "image_emb dim 3 != caption_emb dim 2"),
        (lambda e: retrieval_ranks(e, e, np.arange(4), image_block=0), "image_block must be a positive integer"),
        (lambda e: retrieval_ranks(e, e, np.arange(4), caption_block=1 << 25), "caption_block must be at most"),
        (lambda e: retrieval_ranks(e, e, [0, 1, 2, 2]), "rows [3]"),
        (lambda e: retrieval_ranks(e.astype(int), e, np.arange(4)), "image_emb must have a floating dtype"),
        (lambda e: retrieval_ranks(e[0], e, np.arange(4)), "image_emb must be 2-D [count, dim]"),
        (lambda e: retrieval_ranks(e.tolist(), e, np.arange(4)), "image_emb must be a torch.Tensor or numpy"),
        (lambda e: retrieval_ranks(e, e, np.arange(4), sim_fn=lambda i, c: i @ c[:2].T),
         "sim_fn must return a float [4, 4] matrix"),
        (lambda e: topk(e, e, 5), "k must be an integer in [1, 4] (the gallery size), got 5"),
        (lambda e: topk(e, e, 0), "got 0"),
        (lambda e: topk(e, e, 2, gallery_block=-1), "gallery_block must be a positive integer, got -1"),
        (lambda e: positive_ranks(e, e, [0, 1], [0]), "query_rows has 2 entries but positive_rows 1"),
        (lambda e: positive_ranks(e, e, [0], [4]), "positive_rows values must lie in [0, 4), got min 4"),
        (lambda e: positive_ranks(e, e, [], []), "query_rows must be a non-empty 1-D integer array"),
        (lambda e: positive_ranks(e, e, [0.5], [1]), "query_rows must be a non-empty 1-D integer array"),
    ],
)
def test_invalid_inputs_raise_naming_the_problem(rng, call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call(integer_rows(rng, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_results(rng, make_index):
    index = make_index(list(rng.integers(1, 5, size=30)))
    image_emb, caption_emb = (torch.from_numpy(integer_rows(rng, count)) for count in (30, len(index)))
    cpu = retrieval_ranks(image_emb, caption_emb, index, image_block=7, caption_block=16)
    cuda = retrieval_ranks(image_emb.cuda(), caption_emb.cuda(), index, image_block=7, caption_block=16)
    assert [ranks.tolist() for ranks in cuda] == [ranks.tolist() for ranks in cpu]
    assert [t.tolist() for t in topk(caption_emb.cuda(), image_emb.cuda(), 5, gallery_block=8)] == [
        t.tolist() for t in topk(caption_emb, image_emb, 5, gallery_block=8)]
    pairs = (np.arange(len(index)), index)
    assert positive_ranks(caption_emb.cuda(), image_emb.cuda(), *pairs).tolist() == positive_ranks(
        caption_emb, image_emb, *pairs).tolist()
