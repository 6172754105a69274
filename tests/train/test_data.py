"""Tests of train/data.py: epoch coverage, reproducible order, feature modes, bounded memmap reads."""

from pathlib import Path

import numpy as np
import pytest
import torch

from features.reader import FeatureStore
from train.data import CaptionBatches, RankShare, read_image_features
from train.text import build_vocabulary


class RecordingFeatures:
    """Wraps a feature memmap and records the index array of every read."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.reads = array, []

    def __getitem__(self, index):
        self.reads.append(np.asarray(index))
        return self.array[index]


def _batches(store: FeatureStore, feature_mode: str, *, batch_size: int = 16, seed: int = 0) -> CaptionBatches:
    vocab = build_vocabulary(store, splits=["train"], min_count=1)
    return CaptionBatches(store, splits=["train"], vocab=vocab, feature_mode=feature_mode, batch_size=batch_size,
                          seed=seed)


def test_epoch_visits_every_caption_once_in_a_seeded_order(store_path: Path):
    with FeatureStore(store_path) as store:
        batches = _batches(store, "1c", batch_size=20)  # 192 captions: the last batch is short
        seen = torch.cat([batch.caption_rows for batch in batches.epoch_batches(0)]).numpy()
        assert sorted(seen.tolist()) == store.caption_indices(["train"]).tolist()
        again = torch.cat([batch.caption_rows for batch in batches.epoch_batches(0)]).numpy()
        other_epoch = torch.cat([batch.caption_rows for batch in batches.epoch_batches(1)]).numpy()
        assert np.array_equal(seen, again) and not np.array_equal(seen, other_epoch)
        resumed = torch.cat([batch.caption_rows for batch in batches.epoch_batches(0, start_step=3)]).numpy()
        assert np.array_equal(resumed, seen[3 * 20:])
        batch = batches.batch(0, 0)
        assert torch.equal(batch.image_ids, torch.from_numpy(store.caption_image_index[batch.caption_rows.numpy()]))
        assert (batch.tokens[torch.arange(len(batch)), batch.lengths - 1] == 2).all()  # <end> at each length


def test_feature_modes_match_the_store(store_path: Path):
    with FeatureStore(store_path) as store:
        ten = np.asarray(store.features("10c"))
        batch = _batches(store, "1c").batch(0, 0)
        rows = batch.image_ids.numpy()
        np.testing.assert_array_equal(batch.images.numpy(), ten[rows, 4])
        batch = _batches(store, "10c").batch(0, 0)
        np.testing.assert_allclose(batch.images.numpy(), ten[rows].mean(axis=1), rtol=1e-6)
        batch = _batches(store, "10c-set").batch(0, 0)
        assert batch.images.shape == (16, 10, store.feature_dim)
        np.testing.assert_array_equal(batch.images.numpy(), ten[rows])


def test_random_crops_are_valid_and_change_across_steps(store_path: Path):
    with FeatureStore(store_path) as store:
        ten = np.asarray(store.features("10c"))
        batches = _batches(store, "10c-random")
        crops_per_step = []
        for step in range(3):
            batch = batches.batch(0, step)
            rows = batch.image_ids.numpy()
            matches = (ten[rows] == batch.images.numpy()[:, None, :]).all(axis=2)  # [B, 10]
            assert matches.any(axis=1).all()  # every row is exactly one of its image's ten crops
            crops_per_step.append(matches.argmax(axis=1))
        assert all(0 <= crops.min() and crops.max() < 10 for crops in crops_per_step)
        assert len(np.unique(np.concatenate(crops_per_step))) > 3
        assert not np.array_equal(crops_per_step[0], crops_per_step[1])
        assert torch.equal(batches.batch(0, 1).images, batches.batch(0, 1).images)  # reproducible


def test_reads_only_the_batch_rows_sorted_and_unique(store_path: Path, monkeypatch: pytest.MonkeyPatch):
    with FeatureStore(store_path) as store:
        recorder = RecordingFeatures(store.feature_rows("10c"))
        monkeypatch.setattr(store, "feature_rows", lambda kind: recorder)
        batches = list(_batches(store, "10c").epoch_batches(0))  # built by the prefetch thread, in order
        assert len(recorder.reads) == len(batches)  # exactly one read per batch
        for read, batch in zip(recorder.reads, batches):
            assert read.ndim == 1 and np.all(np.diff(read) > 0)  # sorted, unique row indices only
            assert np.array_equal(read, np.unique(batch.image_ids.numpy()))
            assert len(read) <= 16 < store.num_images


def test_float16_store_gives_float32(make_train_store):
    with FeatureStore(make_train_store("half.h5", crops=1, dtype="float16")) as store:
        batch = _batches(store, "1c").batch(0, 0)
        assert batch.images.dtype == torch.float32
        with pytest.raises(ValueError, match=r"--feature-mode 10c reads 10c features, but .* holds 1c \(a CNN "
                                             r"store, 1 crop per image\); the feature modes this store serves: 1c; or re-extract"):
            _batches(store, "10c")


def test_workers_give_the_same_batches(store_path: Path):
    with FeatureStore(store_path) as store:
        batches = _batches(store, "10c-random")
        direct = list(batches.epoch_batches(1, start_step=2))
        loaded = list(batches.epoch_batches(1, start_step=2, workers=1))
    assert len(direct) == len(loaded) == batches.steps_per_epoch - 2
    for one, two in zip(direct, loaded):
        assert torch.equal(one.images, two.images) and torch.equal(one.tokens, two.tokens)


def test_read_image_features_rejects_unknown_mode():
    with pytest.raises(ValueError, match="unknown feature mode 'bad'"):
        read_image_features(np.zeros((2, 3), np.float32), np.array([0, 1]), feature_mode="bad")


@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_shares_of_a_batch_concatenate_to_the_single_process_batch(store_path: Path, world_size: int):
    with FeatureStore(store_path) as store:
        vocab = build_vocabulary(store, splits=["train"], min_count=1)
        whole = CaptionBatches(store, splits=["train"], vocab=vocab, feature_mode="10c-random", batch_size=24, seed=3)
        shares = [CaptionBatches(store, splits=["train"], vocab=vocab, feature_mode="10c-random", batch_size=24,
                                 seed=3, share=RankShare(rank, world_size)) for rank in range(world_size)]
        for step in (0, whole.steps_per_epoch - 1):  # a full batch and the short last one (192 = 8 x 24: full)
            expected = whole.batch(1, step)
            parts = [share.batch(1, step) for share in shares]
            assert torch.equal(torch.cat([part.images for part in parts]), expected.images)  # same random crops
            assert torch.equal(torch.cat([part.caption_rows for part in parts]), expected.caption_rows)
            assert torch.equal(torch.cat([part.image_ids for part in parts]), expected.image_ids)
