"""recall_metrics / ranks_i2t / ranks_t2i against a literal brute-force double loop, plus hand-built cases; the
chance levels against counting."""

from __future__ import annotations

import itertools
import math
import re
import statistics

import numpy as np
import pytest
import torch

from eval.metrics import chance_curve, chance_metrics, ranks_i2t, ranks_t2i, recall_metrics, summarise_ranks


def brute_force_ranks(sims: np.ndarray, index: np.ndarray) -> tuple[list[int], list[int]]:
    """The stated tie policy, literally: 1 + negatives with s >= the positive's s; i2t takes the best positive."""
    rows = np.asarray(sims, dtype=np.float32).tolist()
    index = index.tolist()
    num_images, num_captions = len(rows), len(index)
    i2t = []
    for i in range(num_images):
        best = None
        for p in range(num_captions):
            if index[p] != i:
                continue
            rank = 1 + sum(1 for c in range(num_captions) if index[c] != i and rows[i][c] >= rows[i][p])
            best = rank if best is None else min(best, rank)
        i2t.append(best)
    t2i = []
    for c in range(num_captions):
        own = index[c]
        t2i.append(1 + sum(1 for i in range(num_images) if i != own and rows[i][c] >= rows[own][c]))
    return i2t, t2i


def brute_force_metrics(sims: np.ndarray, index: np.ndarray) -> dict[str, float]:
    metrics = {}
    for direction, ranks in zip(("i2t", "t2i"), brute_force_ranks(sims, index)):
        for k in (1, 5, 10):
            metrics[f"{direction}_r{k}"] = 100.0 * sum(r <= k for r in ranks) / len(ranks)
        metrics[f"{direction}_medr"] = math.floor(statistics.median(r - 1 for r in ranks)) + 1
        metrics[f"{direction}_meanr"] = sum(ranks) / len(ranks)
    metrics["rsum"] = sum(metrics[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return metrics


def assert_metrics_equal(actual: dict[str, float], expected: dict[str, float]) -> None:
    assert list(actual) == list(expected)
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, abs=1e-9), key


def correlated_sims(rng: np.random.Generator, index: np.ndarray, num_images: int) -> np.ndarray:
    """Random sims where positives score higher on average, so ranks spread over 1..N (not all near N/2)."""
    sims = rng.normal(size=(num_images, len(index)))
    sims[index, np.arange(len(index))] += 1.5
    return sims.astype(np.float32)


@pytest.mark.parametrize("captions_per_image", [1, 5, 7, "uneven"])
def test_matches_brute_force_on_random_sims(rng, make_index, captions_per_image):
    num_images = 23
    uneven = captions_per_image == "uneven"
    index = make_index(list(rng.integers(1, 9, size=num_images)) if uneven else [captions_per_image] * num_images)
    sims = correlated_sims(rng, index, num_images)
    i2t, t2i = brute_force_ranks(sims, index)
    np.testing.assert_array_equal(ranks_i2t(sims, index), i2t)
    np.testing.assert_array_equal(ranks_t2i(sims, index), t2i)
    assert 1 < max(i2t) and 1 < max(t2i)  # the case is not trivially perfect
    assert_metrics_equal(recall_metrics(sims, index), brute_force_metrics(sims, index))


@pytest.mark.parametrize("captions_per_image", [1, 5, "uneven"])
def test_matches_brute_force_with_many_ties(rng, make_index, captions_per_image):
    num_images = 17
    uneven = captions_per_image == "uneven"
    index = make_index(list(rng.integers(1, 8, size=num_images)) if uneven else [captions_per_image] * num_images)
    sims = rng.integers(0, 4, size=(num_images, len(index))).astype(np.float64)  # small integers: ties everywhere
    i2t, t2i = brute_force_ranks(sims, index)
    np.testing.assert_array_equal(ranks_i2t(sims, index), i2t)
    np.testing.assert_array_equal(ranks_t2i(sims, index), t2i)
    assert_metrics_equal(recall_metrics(sims, index), brute_force_metrics(sims, index))


def test_float16_input_is_ranked_in_float32(rng, make_index):
    index = make_index([5] * 19)
    sims16 = (correlated_sims(rng, index, 19) / 8).astype(np.float16)  # fp16 rounding creates ties
    expected = brute_force_metrics(sims16.astype(np.float32), index)
    assert_metrics_equal(recall_metrics(sims16, index), expected)
    assert_metrics_equal(recall_metrics(torch.from_numpy(sims16), torch.from_numpy(index)), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_torch_and_numpy_inputs_agree(rng, make_index, dtype):
    index = make_index([1, 3, 5, 2, 7, 4, 4, 6, 1, 2])
    sims = torch.from_numpy(correlated_sims(rng, index, 10)).to(dtype)
    from_numpy = recall_metrics(sims.float().numpy(), index)
    assert_metrics_equal(recall_metrics(sims, index), from_numpy)
    assert_metrics_equal(recall_metrics(sims.clone().requires_grad_(True), list(index)), from_numpy)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 22, 23, 1000])
def test_chunk_size_does_not_change_results(rng, make_index, chunk_size):
    index = make_index(list(rng.integers(1, 6, size=23)))
    sims = rng.integers(0, 6, size=(23, len(index))).astype(np.float32)
    assert_metrics_equal(recall_metrics(sims, index, chunk_size=chunk_size), brute_force_metrics(sims, index))


def test_perfect_sims_give_perfect_metrics(make_index):
    index = make_index([5] * 12)
    sims = (index[None, :] == np.arange(12)[:, None]).astype(np.float32)
    metrics = recall_metrics(sims, index)
    for direction in ("i2t", "t2i"):
        assert metrics[f"{direction}_r1"] == metrics[f"{direction}_r10"] == 100.0
        assert metrics[f"{direction}_medr"] == metrics[f"{direction}_meanr"] == 1.0
    assert metrics["rsum"] == 600.0


def test_all_equal_sims_rank_every_positive_last():
    index = np.array([0, 0, 1, 2, 2, 2])  # 3 images, 6 captions
    sims = np.zeros((3, 6), dtype=np.float32)
    np.testing.assert_array_equal(ranks_i2t(sims, index), [5, 6, 4])  # 1 + number of negatives
    np.testing.assert_array_equal(ranks_t2i(sims, index), [3] * 6)  # 1 + (3 - 1)


def test_other_positives_do_not_push_the_best_positive_down():
    # Image 0 has captions 0, 1 (scores 0.9 and 0.9, tied); negative caption 2 scores 0.5.
    sims = np.array([[0.9, 0.9, 0.5], [0.1, 0.2, 0.8]], dtype=np.float32)
    index = np.array([0, 0, 1])
    np.testing.assert_array_equal(ranks_i2t(sims, index), [1, 1])
    # Caption 1's image scores 0.9 and image 1 scores 0.2 -> rank 1; caption 2: image 1 (0.8) beats image 0.
    np.testing.assert_array_equal(ranks_t2i(sims, index), [1, 1, 1])
    sims[1, 2] = 0.5  # tie for caption 2 between its image (1) and image 0 -> pessimistic rank 2
    np.testing.assert_array_equal(ranks_t2i(sims, index), [1, 1, 2])


def test_known_ranks_and_medr_floor_for_even_counts():
    # Anti-diagonal: each caption's image is ranked 2nd of 2, each image's caption 2nd of 2.
    sims = np.array([[0.0, 1.0], [1.0, 0.0]])
    metrics = recall_metrics(sims, np.array([0, 1]), ks=(1, 2))
    assert metrics == {
        "i2t_r1": 0.0, "i2t_r2": 100.0, "i2t_medr": 2.0, "i2t_meanr": 2.0,
        "t2i_r1": 0.0, "t2i_r2": 100.0, "t2i_medr": 2.0, "t2i_meanr": 2.0,
        "rsum": 200.0,
    }
    summary = summarise_ranks(np.array([1, 2, 4, 9]), ks=(1, 5), prefix="x")  # median of 0-based = 2.0
    assert summary == {"x_r1": 25.0, "x_r5": 75.0, "x_medr": 3.0, "x_meanr": 4.0}
    assert summarise_ranks(np.array([1, 2]), ks=(1,), prefix="x")["x_medr"] == 1.0  # floor(0.5) + 1


def test_negative_infinity_scores_are_ranked_not_rejected():
    sims = np.array([[-np.inf, 0.0], [np.inf, -np.inf]], dtype=np.float32)
    index = np.array([0, 1])
    np.testing.assert_array_equal(ranks_i2t(sims, index), [2, 2])
    np.testing.assert_array_equal(ranks_t2i(sims, index), [2, 2])


@pytest.mark.parametrize(
    ("sims", "index", "kwargs", "message"),
    [
        (np.zeros((2, 3, 1)), [0, 1, 1], {}, "2-D"),
        (np.zeros((2, 3), dtype=np.int64), [0, 1, 1], {}, "floating dtype"),
        ([[0.0, 1.0]], [0, 0], {}, "torch.Tensor or numpy.ndarray"),
        (np.zeros((0, 3)), [0, 0, 0], {}, "empty"),
        (np.zeros((2, 3)), [0, 1], {}, "2 entries but there are 3 captions"),
        (np.zeros((2, 3)), [[0, 1, 1]], {}, "1-D"),
        (np.zeros((2, 3)), [0.0, 1.0, 1.0], {}, "integer dtype"),
        (np.zeros((2, 3)), [0, 2, 1], {}, "max 2"),
        (np.zeros((2, 3)), [0, -1, 1], {}, "min -1"),
        (np.zeros((3, 3)), [0, 0, 1], {}, "rows [2]"),
        (np.array([[0.0, np.nan], [1.0, 0.0]]), [0, 1], {}, "NaN in image rows 0..1"),
        (np.zeros((2, 2)), [0, 1], {"chunk_size": 0}, "chunk_size must be a positive integer, got 0"),
        (np.zeros((2, 2)), [0, 1], {"ks": ()}, "at least one cutoff"),
        (np.zeros((2, 2)), [0, 1], {"ks": (1, 0)}, "got 0"),
        (np.zeros((2, 2)), [0, 1], {"ks": (5, 5)}, "repeat"),
    ],
)
def test_invalid_inputs_raise_naming_the_problem(sims, index, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        recall_metrics(sims, np.asarray(index), **kwargs)


def test_chance_curve_of_five_captions_per_image_matches_counting():
    (i2t, i2t_10), (t2i, _) = chance_curve(np.full(50, 5), ks=[1, 10])
    assert math.isclose(i2t, 100 * 5 / 250) and math.isclose(t2i, 2.0)
    assert math.isclose(chance_curve(np.full(3, 2), ks=[5])[0][0], 100.0)  # a positive always fits
    assert math.isclose(i2t_10, 100 * (1 - math.comb(245, 10) / math.comb(250, 10)), rel_tol=1e-12)


def test_chance_curve_of_uneven_captions_equals_enumerating_every_ranking():
    counts = np.array([1, 3, 2])  # 6 captions; one image query ranks all 6
    captions_of = np.repeat(np.arange(3), counts)
    for k in range(1, 7):
        hits = [np.mean([any(captions_of[c] == image for c in order[:k]) for order in itertools.permutations(range(6))])
                for image in range(3)]
        i2t, t2i = chance_curve(counts, ks=[k])
        assert i2t[0] == pytest.approx(100 * np.mean(hits))
        assert t2i[0] == pytest.approx(100 * min(1, k / 3))


def test_chance_metrics_are_the_curve_at_the_recall_ks_and_their_rsum():
    chance = chance_metrics(np.full(50, 5))
    (i2t_1, i2t_5, i2t_10), (t2i_1, t2i_5, t2i_10) = chance_curve(np.full(50, 5), ks=[1, 5, 10])
    assert chance == pytest.approx({"i2t_r1": i2t_1, "i2t_r5": i2t_5, "i2t_r10": i2t_10, "t2i_r1": t2i_1,
                                    "t2i_r5": t2i_5, "t2i_r10": t2i_10,
                                    "rsum": i2t_1 + i2t_5 + i2t_10 + t2i_1 + t2i_5 + t2i_10})
