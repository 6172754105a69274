"""report.examples: Recall@K from ranks, sampled and worst queries against a full
similarity matrix."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from eval.blocks import dot_sim
from report.examples import SplitRetrievals, recall_curve


def test_recall_curve_counts_ranks_within_k():
    np.testing.assert_allclose(recall_curve(np.array([1, 2, 2, 7]), ks=[1, 2, 6, 7]), [25, 75, 75, 100])


@pytest.fixture
def retrievals() -> SplitRetrievals:
    generator = torch.Generator().manual_seed(0)
    image_emb = torch.nn.functional.normalize(torch.randn(9, 6, generator=generator), dim=1)
    caption_image_index = np.array([0, 0, 1, 2, 2, 2, 3, 4, 5, 6, 7, 8, 8, 1])
    caption_emb = torch.nn.functional.normalize(image_emb[caption_image_index] + torch.randn(14, 6, generator=generator),
                                                dim=1)
    return SplitRetrievals(image_emb, caption_emb, caption_image_index, sim_fn=dot_sim)


def test_listed_results_follow_the_similarity_matrix(retrievals: SplitRetrievals):
    sims = (retrievals.image_emb @ retrievals.caption_emb.T).numpy()  # [N, M]
    for caption in range(retrievals.num_captions):
        example = retrievals.caption_query(caption, k=4)
        assert [hit.row for hit in example.hits] == list(np.argsort(-sims[:, caption], kind="stable")[:4])
        right = retrievals.caption_image_index[caption]
        assert example.rank == 1 + int((sims[:, caption] >= sims[right, caption]).sum() - 1)
        assert [hit.right for hit in example.hits] == [hit.row == right for hit in example.hits]
    for image in range(retrievals.num_images):
        example = retrievals.image_query(image, k=3)
        assert [hit.row for hit in example.hits] == list(np.argsort(-sims[image], kind="stable")[:3])
        own = np.flatnonzero(retrievals.caption_image_index == image)
        assert example.right_row in own and example.right_score == pytest.approx(sims[image, own].max())


def test_worst_queries_list_only_what_beat_the_right_answer(retrievals: SplitRetrievals):
    captions, images = retrievals.worst(4, k=3)
    caption_ranks = [example.rank for example in captions]
    assert caption_ranks == sorted(caption_ranks, reverse=True)
    assert len({int(retrievals.caption_image_index[example.query]) for example in captions}) == len(captions)
    assert max(caption_ranks) == retrievals.t2i_ranks.max()
    for example in captions + images:
        assert not any(hit.right for hit in example.hits)
        assert len(example.hits) == min(3, example.rank - 1)
        assert all(hit.score >= example.right_score for hit in example.hits)
    assert [example.rank for example in images] == sorted(retrievals.i2t_ranks, reverse=True)[:4]


def test_sampled_captions_come_from_distinct_images_and_are_seeded(retrievals: SplitRetrievals):
    captions, images = retrievals.sampled(5, k=2, seed=3)
    assert len({int(retrievals.caption_image_index[example.query]) for example in captions}) == 5
    assert len({example.query for example in images}) == 5
    again = retrievals.sampled(5, k=2, seed=3)
    assert [example.query for example in again[0]] == [example.query for example in captions]
    assert len(retrievals.sampled(50, k=2, seed=0)[1]) == retrievals.num_images  # never more than the split
