"""End-to-end tests of run_finetune on a real (tiny) resnet18 store: exact start, exact resume, refusals, eval API."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import h5py
import pytest
import torch

from eval.metrics import recall_metrics
from extract.backbones import build_backbone
from features.reader import FeatureStore
from retrieval.evaluate import EvalConfig, run_eval
from retrieval.model import model_from_checkpoint
from train.checkpoint import load_checkpoint
from train.encode import encode_split, similarity_matrix
from train.finetune.cnn import backbone_from_store
from train.finetune.config import FinetuneConfig
from train.data import RankShare
from train.finetune.data import ImageCaptionBatches, encode_split_from_images
from train.finetune.run import init_model, resolve_config, run_finetune

from tests.train.finetune.fixtures import (  # noqa: F401  (single_thread is an autouse fixture)
    FinetuneSetup, build_setup, extract_store, finetune_config, single_thread, write_dataset,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> FinetuneSetup:
    """Twelve images (9 train, 3 val), a random-init resnet18 store (crops=1) and a 2-step stage-two checkpoint."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_setup(tmp_path_factory.mktemp("finetune"))
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def whole_run(setup: FinetuneSetup, tmp_path_factory: pytest.TempPathFactory) -> tuple[FinetuneConfig, dict]:
    """An uninterrupted 2-step fine-tune (last resnet18 stage unfrozen): (config, summary)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = finetune_config(setup, tmp_path_factory.mktemp("whole"), max_steps=2)
        return cfg, run_finetune(cfg)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.slow
def test_finetune_starts_from_exactly_the_checkpoint_weights(setup: FinetuneSetup, tmp_path: Path):
    init = load_checkpoint(setup.checkpoint)
    cfg = resolve_config(finetune_config(setup, tmp_path), init["config"])
    loaded = model_from_checkpoint(init)
    train_model, vocab = loaded.model, loaded.vocab
    with FeatureStore(setup.store) as store:
        model, cnn, _, spec = init_model(cfg, init, store=store)
        state = model.state_dict()
        for key, value in init["model"].items():  # head and caption encoder: the checkpoint's tensors
            assert torch.equal(state[key], value), key
        assert spec["backbone"] == "resnet18" and spec["feature_dim"] == 512
        expected = encode_split(train_model, store, splits=["val"], feature_mode="1c", vocab=vocab, batch_size=4,
                                device="cpu")
        # the CNN re-reads the raw images (center crop), the train model the stored 1c features
        found = encode_split_from_images(model, store, splits=["val"], vocab=vocab, image_root=setup.image_root,
                                         batch_size=4, workers=0, device="cpu")
    assert torch.allclose(found[0], expected[0], atol=1e-5), (found[0] - expected[0]).abs().max()
    assert torch.equal(found[1], expected[1])
    assert found[2].tolist() == expected[2].tolist() and found[3].tolist() == expected[3].tolist()


@pytest.mark.slow
def test_store_made_from_a_weight_file_is_rebuilt_and_verified(setup: FinetuneSetup, tmp_path: Path):
    torch.manual_seed(5)
    weights = tmp_path / "resnet18-custom.pth"
    torch.save(build_backbone("resnet18", None, seed=5).net.state_dict() | {
        "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}, weights)
    two_images = write_dataset(tmp_path / "two.json", sorted(p.name for p in (setup.image_root / "imgs").iterdir())[:2])
    store_path = extract_store(two_images, setup.image_root, tmp_path / "file.h5", weights=str(weights))
    with FeatureStore(store_path) as store:
        rebuilt = backbone_from_store(store.attrs, store_path=store_path, feature_dim=512)  # via the extract JSON
        expected = build_backbone("resnet18", weights)
        assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), expected.state_dict().values()))
        other = tmp_path / "other.pth"
        torch.save({"fc.bias": torch.zeros(3)}, other)
        with pytest.raises(ValueError, match="sha256"):
            backbone_from_store(store.attrs, store_path=store_path, feature_dim=512, weights=str(other))


@pytest.mark.slow
def test_finetune_trains_the_unfrozen_stage_only(setup: FinetuneSetup, whole_run: tuple[FinetuneConfig, dict]):
    cfg, summary = whole_run
    init = load_checkpoint(setup.checkpoint)["model"]
    tuned = load_checkpoint(summary["last"])["model"]
    original_cnn = build_backbone("resnet18", None, seed=0).state_dict()
    for key, value in original_cnn.items():
        found = tuned[f"image_encoder.backbone.{key}"]
        trainable = key.startswith("net.layer4.") and value.dtype.is_floating_point and ".bn" not in key \
            and "downsample.1" not in key
        assert torch.equal(found, value) != trainable, key  # changed exactly when trainable
    assert not torch.equal(tuned["image_encoder.head.fc.weight"], init["image_encoder.head.fc.weight"])
    assert not torch.equal(tuned["text_encoder.gru.weight_hh_l0"], init["text_encoder.gru.weight_hh_l0"])
    saved = FinetuneConfig.load_json(Path(cfg.out_dir) / "config.json")
    assert saved.embed_dim == 32 and saved.store == str(setup.store) and Path(saved.image_root) == setup.image_root
    assert load_checkpoint(summary["last"])["kind"] == "finetune"


@pytest.mark.slow
def test_interrupted_finetune_resumes_bitwise_equal(setup: FinetuneSetup, whole_run: tuple[FinetuneConfig, dict],
                                                    tmp_path: Path):
    whole_cfg, whole_summary = whole_run
    part = finetune_config(setup, tmp_path / "part", max_steps=1, workers=1)  # workers: same batches as in-process
    run_finetune(part)
    assert load_checkpoint(tmp_path / "part" / "last.pt")["step"] == 1
    run_finetune(dataclasses.replace(part, max_steps=2, workers=0, resume=str(tmp_path / "part" / "last.pt")))
    expected, resumed = load_checkpoint(whole_summary["last"]), load_checkpoint(tmp_path / "part" / "last.pt")
    assert resumed["step"] == expected["step"] == 2
    for key, value in expected["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    for group_state, expected_state in zip(resumed["optimizer"]["state"].values(),
                                           expected["optimizer"]["state"].values()):
        assert torch.equal(group_state["exp_avg"], expected_state["exp_avg"])


@pytest.mark.slow
def test_finetune_checkpoint_serves_eval(whole_run: tuple[FinetuneConfig, dict], setup: FinetuneSetup,
                                         tmp_path: Path):
    cfg, summary = whole_run
    checkpoint = load_checkpoint(summary["best"])
    loaded = model_from_checkpoint(checkpoint)
    model, vocab, loaded_cfg = loaded.model, loaded.vocab, loaded.config
    assert loaded.has_cnn and isinstance(loaded_cfg, FinetuneConfig) and loaded_cfg.unfreeze == "1"
    assert not model.training
    with FeatureStore(setup.store) as store:
        image_emb, caption_emb, caption_image_index, _ = encode_split_from_images(
            model, store, splits=["val"], vocab=vocab, image_root=loaded_cfg.image_root, batch_size=3, workers=0,
            device="cpu")
    sims = similarity_matrix(image_emb, caption_emb, similarity=loaded_cfg.similarity)
    rsum = recall_metrics(sims, caption_image_index)["rsum"]
    assert rsum == pytest.approx(summary["best_rsum"])
    results = run_eval(EvalConfig(checkpoint=summary["best"], split="val", protocol="all-images", workers=0,
                                  device="cpu", out=str(tmp_path / "eval.json")))
    assert results["kind"] == "finetune"
    assert results["protocols"]["all-images"]["rsum"] == pytest.approx(rsum)


def test_store_of_another_cnn_is_refused(setup: FinetuneSetup, tmp_path: Path):
    other = tmp_path / "other.h5"
    shutil.copy(setup.store, other)
    with h5py.File(other, "r+") as h5file:
        h5file.attrs["weights_seed"] = 1
    with pytest.raises(ValueError, match="another CNN"):
        run_finetune(finetune_config(setup, tmp_path / "run", store=str(other)))


def test_missing_files_are_errors_before_training(setup: FinetuneSetup, whole_run: tuple[FinetuneConfig, dict],
                                                  tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_finetune(finetune_config(setup, tmp_path / "a", checkpoint=str(tmp_path / "missing.pt")))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_finetune(finetune_config(setup, tmp_path / "b", resume=str(tmp_path / "missing.pt")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="images are missing"):
        run_finetune(finetune_config(setup, tmp_path / "c", image_root=str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="expected 'train'"):
        run_finetune(finetune_config(setup, tmp_path / "d", checkpoint=whole_run[1]["last"]))
    with pytest.raises(ValueError, match="cnn_lr"):
        run_finetune(dataclasses.replace(whole_run[0], cnn_lr=1e-2, resume=whole_run[1]["last"]))
    assert not (tmp_path / "a").exists() and not (tmp_path / "c" / "last.pt").exists()


def test_batches_are_deterministic_and_crops_change_between_epochs(setup: FinetuneSetup):
    with FeatureStore(setup.store) as store:
        vocab = model_from_checkpoint(load_checkpoint(setup.checkpoint)).vocab
        batches = ImageCaptionBatches(store, splits=["train"], vocab=vocab, batch_size=4, seed=0,
                                      image_root=setup.image_root, rc="paper")
        first, again = batches.batch(0, 1), batches.batch(0, 1)
        assert torch.equal(first.images, again.images) and torch.equal(first.tokens, again.tokens)
        assert first.images.shape == (4, 3, 224, 224) and first.images.dtype == torch.uint8
        later = batches.batch(1, 0)
        assert set(later.image_ids.tolist()) - set(store.image_indices(["train"]).tolist()) == set()
        # the same image in two epochs gets another crop
        epoch0 = {}
        for step in range(4):
            batch = batches.batch(0, step)
            epoch0.update(zip(batch.image_ids.tolist(), batch.images))
        epoch1 = dict(zip(later.image_ids.tolist(), later.images))
        shared = set(epoch0) & set(epoch1)
        assert shared and all(not torch.equal(epoch0[i], epoch1[i]) for i in shared)


def test_rank_shares_of_a_finetune_batch_keep_the_single_process_crops(setup: FinetuneSetup):
    with FeatureStore(setup.store) as store:
        vocab = model_from_checkpoint(load_checkpoint(setup.checkpoint)).vocab
        options = dict(splits=["train"], vocab=vocab, batch_size=6, seed=0, image_root=setup.image_root, rc="paper")
        whole = ImageCaptionBatches(store, **options)
        shares = [ImageCaptionBatches(store, **options, share=RankShare(rank, 2)) for rank in range(2)]
        expected = whole.batch(0, 1)
        parts = [share.batch(0, 1) for share in shares]
    assert [len(part) for part in parts] == [3, 3]
    assert torch.equal(torch.cat([part.images for part in parts]), expected.images)
    rows = [(tokens[:length].tolist()) for part in parts for tokens, length in zip(part.tokens, part.lengths)]
    assert rows == [tokens[:length].tolist() for tokens, length in zip(expected.tokens, expected.lengths)]
    assert torch.equal(torch.cat([part.caption_rows for part in parts]), expected.caption_rows)
