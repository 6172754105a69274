"""evaluate_protocol folding, size checks and custom similarities; format_table."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from eval.metrics import recall_metrics
from eval.protocols import PROTOCOLS, evaluate_protocol, format_table, similarity_matrix
from eval.blocks import DEFAULT_CAPTION_BLOCK


def unit_rows(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    rows = rng.normal(size=(count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def noisy_captions(rng: np.random.Generator, image_emb: np.ndarray, index: np.ndarray, noise: float) -> np.ndarray:
    """Caption embeddings near their image's, so that recall is far from both chance and perfection."""
    captions = image_emb[index] + noise * rng.normal(size=(len(index), image_emb.shape[1])).astype(np.float32)
    return captions / np.linalg.norm(captions, axis=1, keepdims=True)


def test_coco_1k_is_the_mean_of_manual_per_fold_metrics(rng, make_index):
    index = make_index(list(rng.integers(1, 3, size=5000)))  # uneven, captions shuffled across folds
    image_emb = unit_rows(rng, 5000, 8)
    caption_emb = noisy_captions(rng, image_emb, index, noise=0.35)
    results = evaluate_protocol(image_emb, caption_emb, index, protocol="coco-1k")

    manual = []
    for start in range(0, 5000, 1000):
        keep = (index >= start) & (index < start + 1000)
        sims = image_emb[start : start + 1000] @ caption_emb[keep].T
        manual.append(recall_metrics(sims, index[keep] - start))
    assert results["num_folds"] == 5 and len(results["folds"]) == 5
    for key in manual[0]:
        assert [fold[key] for fold in results["folds"]] == pytest.approx([fold[key] for fold in manual])
        assert results[key] == pytest.approx(np.mean([fold[key] for fold in manual]))
    assert 5 < results["i2t_r1"] < 95 and 5 < results["t2i_r1"] < 95  # a non-degenerate case
    coco_5k = evaluate_protocol(image_emb, caption_emb, index, protocol="coco-5k")
    assert coco_5k["i2t_r1"] < results["i2t_r1"]  # 5x the distractors -> lower recall


def test_all_images_equals_recall_metrics_on_dot_product(rng, make_index):
    index = make_index([5] * 37)
    image_emb, caption_emb = unit_rows(rng, 37, 16), unit_rows(rng, len(index), 16)
    results = evaluate_protocol(torch.from_numpy(image_emb).half(), caption_emb, index, protocol="all-images")
    expected = recall_metrics(image_emb.astype(np.float16).astype(np.float32) @ caption_emb.T, index)
    assert {key: results[key] for key in expected} == pytest.approx(expected)
    assert results["folds"] == [pytest.approx(expected)]
    assert (results["protocol"], results["num_images"], results["num_captions"]) == ("all-images", 37, 185)


@pytest.mark.slow  # a 5K protocol in chunks
def test_custom_sim_fn_is_applied_in_chunks(rng, make_index):
    def order_sim(image_emb: torch.Tensor, caption_emb: torch.Tensor) -> torch.Tensor:
        return -(caption_emb[None, :, :] - image_emb[:, None, :]).clamp(min=0).norm(dim=2)

    index = make_index([3] * 1000)
    image_emb = np.abs(unit_rows(rng, 1000, 6))
    caption_emb = np.abs(noisy_captions(rng, image_emb, index, noise=0.3))
    results = evaluate_protocol(image_emb, caption_emb, index, protocol="f30k-1k", sim_fn=order_sim, chunk_size=64)
    sims = order_sim(torch.from_numpy(image_emb), torch.from_numpy(caption_emb))
    expected = recall_metrics(sims, index)
    assert {key: results[key] for key in expected} == pytest.approx(expected)
    assert expected != recall_metrics(image_emb @ caption_emb.T, index)  # the sim_fn really was used


def test_evaluate_protocol_never_scores_more_than_a_block(rng, make_index):
    shapes = []

    def recording_dot(image_emb: torch.Tensor, caption_emb: torch.Tensor) -> torch.Tensor:
        shapes.append((image_emb.shape[0], caption_emb.shape[0]))
        return image_emb @ caption_emb.T

    index = make_index(list(rng.integers(1, 6, size=300)))
    image_emb = unit_rows(rng, 300, 8)
    caption_emb = noisy_captions(rng, image_emb, index, noise=0.5)
    results = evaluate_protocol(image_emb, caption_emb, index, protocol="all-images", sim_fn=recording_dot,
                                chunk_size=64)
    assert max(rows for rows, _ in shapes) <= 64 and max(cols for _, cols in shapes) <= DEFAULT_CAPTION_BLOCK
    assert sum(rows * cols for rows, cols in shapes) == 300 * len(index)  # every pair scored once
    expected = recall_metrics(image_emb @ caption_emb.T, index)
    assert {key: results[key] for key in expected} == expected


def test_similarity_matrix_rejects_a_sim_fn_of_the_wrong_shape(rng):
    images, captions = torch.from_numpy(unit_rows(rng, 5, 4)), torch.from_numpy(unit_rows(rng, 7, 4))
    with pytest.raises(ValueError, match=re.escape("must return a float [2, 7] matrix")):
        similarity_matrix(images, captions, sim_fn=lambda i, c: i @ c[:6].T, chunk_size=2)


@pytest.mark.parametrize(
    ("protocol", "num_images", "message"),
    [
        ("coco-1k", 4000, "protocol coco-1k needs exactly 5000 test images, got 4000"),
        ("coco-5k", 1000, "protocol coco-5k needs exactly 5000 test images, got 1000"),
        ("f30k-1k", 999, "protocol f30k-1k needs exactly 1000 test images, got 999"),
        ("coco-10k", 10, "unknown protocol 'coco-10k'"),
    ],
)
def test_wrong_image_count_or_protocol_raises(protocol, num_images, message):
    image_emb = np.zeros((num_images, 2), dtype=np.float32)
    caption_emb = np.zeros((num_images, 2), dtype=np.float32)
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate_protocol(image_emb, caption_emb, np.arange(num_images), protocol=protocol)


@pytest.mark.parametrize(
    ("caption_emb", "index", "message"),
    [
        (np.zeros((4, 3), dtype=np.float32), [0, 1, 2, 3], "image_emb dim 2 != caption_emb dim 3"),
        (np.zeros((4, 2), dtype=np.float32), [0, 1, 2], "3 entries but there are 4 captions"),
        (np.zeros((4, 2), dtype=np.float32), [0, 1, 2, 2], "rows [3]"),
        (np.zeros((4, 2), dtype=np.int32), [0, 1, 2, 3], "caption_emb must have a floating dtype"),
        (np.zeros((0, 2), dtype=np.float32), [], "caption_emb must be 2-D [count, dim] with count >= 1"),
    ],
)
def test_invalid_embeddings_or_index_raise(caption_emb, index, message):
    image_emb = np.zeros((4, 2), dtype=np.float32)
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate_protocol(image_emb, caption_emb, np.asarray(index, dtype=np.int64), protocol="all-images")


def test_protocols_list_names_every_supported_protocol():
    assert PROTOCOLS == ("coco-1k", "coco-5k", "f30k-1k", "all-images")


def test_format_table_lays_out_both_directions_and_rsum(rng, make_index):
    index = make_index([2] * 9)
    results = evaluate_protocol(unit_rows(rng, 9, 4), unit_rows(rng, 18, 4), index, protocol="all-images")
    lines = format_table(results).splitlines()
    assert lines[0] == "all-images: 9 images, 18 captions"
    assert lines[1].split() == ["R@1", "R@5", "R@10", "medr", "meanr"]
    for line, direction in zip(lines[2:4], ("i2t", "t2i")):
        assert line.startswith(direction)
        values = [float(value) for value in line.split()[-5:]]
        expected = [results[f"{direction}_{key}"] for key in ("r1", "r5", "r10", "medr", "meanr")]
        assert values == pytest.approx(expected, abs=0.005)
    assert [line.split()[:3] for line in lines[4:6]] == [["i2t", "by", "chance"], ["t2i", "by", "chance"]]
    assert lines[6].split() == ["rsum", f"{results['rsum']:.2f}", "(chance", f"{results['chance']['rsum']:.2f})"]
    assert len({len(line) for line in lines[1:4]}) == 1  # fixed width


def test_format_table_rejects_results_without_metrics():
    with pytest.raises(ValueError, match="results lack metric keys"):
        format_table({"protocol": "coco-5k", "i2t_r1": 1.0})


def test_results_carry_the_chance_of_a_random_ranking_and_the_table_shows_it():
    from eval.metrics import chance_metrics

    generator = torch.Generator().manual_seed(0)
    image_emb, caption_emb = torch.randn(6, 4, generator=generator), torch.randn(14, 4, generator=generator)
    index = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4, 5, 5])  # uneven captions per image
    results = evaluate_protocol(image_emb, caption_emb, index, protocol="all-images")
    assert results["chance"] == chance_metrics(np.bincount(index), ks=(1, 5, 10))
    assert results["chance"]["t2i_r1"] == pytest.approx(100 / 6) and results["chance"]["i2t_r10"] <= 100
    table = format_table(results)
    assert "i2t by chance" in table and "t2i by chance" in table
    assert f"(chance {results['chance']['rsum']:.2f})" in table
