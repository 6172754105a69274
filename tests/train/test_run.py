"""Tests of train/run.py end to end on the tiny synthetic store: learning, exact resume, option checks."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from features.reader import FeatureStore
from train.checkpoint import load_checkpoint
from train.config import TrainConfig
from retrieval.model import load_model
from train.encode import encode_split, similarity_matrix
from train.model import build_model
from train.run import run_train
from train.text import Vocabulary, build_vocabulary
from train.trainer import store_validator


def test_training_improves_rsum_over_the_untrained_model(tiny_config: TrainConfig):
    cfg = dataclasses.replace(tiny_config, loss="sh", epochs=2, batch_size=32, lr=5e-3)  # 6 steps per epoch
    with FeatureStore(cfg.store) as store:
        torch.manual_seed(cfg.seed)  # the same init run_train uses
        vocab = build_vocabulary(store, splits=["train"], min_count=cfg.vocab_min_count)
        model = build_model(cfg, vocab_size=len(vocab), feature_dim=store.feature_dim)
        untrained = store_validator(store, config=cfg, vocab=vocab, device=torch.device("cpu"))(model)["rsum"]
    summary = run_train(cfg)
    assert summary["best_rsum"] > untrained + 100, (untrained, summary["best_rsum"])
    run = Path(cfg.out_dir)
    assert TrainConfig.load_json(run / "config.json") == cfg
    assert Vocabulary.load(run / "vocab.json").words == vocab.words
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["event"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 13)) and all(r["steps_per_s"] > 0 for r in steps)
    loaded = load_model(run / "best.pt")
    model, loaded_vocab, loaded_cfg = loaded.model, loaded.vocab, loaded.config
    assert loaded.kind == "train" and not loaded.has_cnn and loaded_cfg == cfg
    with FeatureStore(cfg.store) as store:
        image_emb, caption_emb, caption_image_index, image_rows = encode_split(
            model, store, splits=["val"], feature_mode=cfg.feature_mode, vocab=loaded_vocab, batch_size=7,
            device="cpu")
        assert image_rows.tolist() == store.image_indices(["val"]).tolist()
    assert caption_emb.shape == (3 * len(image_rows), cfg.embed_dim)
    assert similarity_matrix(image_emb, caption_emb, similarity=loaded_cfg.similarity).shape == (len(image_rows),
                                                                                      len(caption_emb))


@pytest.mark.parametrize("feature_mode,loss", [("10c-random", "mh"), ("10c-set", "group")])
def test_interrupted_and_resumed_run_equals_uninterrupted(tiny_config: TrainConfig, feature_mode: str, loss: str):
    group = {"group_k_mode": "random", "text_pool": "mean"} if loss == "group" else {}
    base = dataclasses.replace(tiny_config, batch_size=48, epochs=2, feature_mode=feature_mode, loss=loss, **group)
    whole = dataclasses.replace(base, out_dir=str(Path(base.out_dir) / "whole"))
    part = dataclasses.replace(base, out_dir=str(Path(base.out_dir) / "part"), max_steps=3)  # mid-epoch 0
    run_train(whole)
    run_train(part)
    assert load_checkpoint(Path(part.out_dir) / "last.pt")["step"] == 3
    run_train(dataclasses.replace(part, max_steps=0, resume=str(Path(part.out_dir) / "last.pt")))
    expected = load_checkpoint(Path(whole.out_dir) / "last.pt")
    resumed = load_checkpoint(Path(part.out_dir) / "last.pt")
    assert resumed["step"] == expected["step"] == 8
    for key, value in expected["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    assert resumed["best_rsum"] >= expected["best_rsum"]  # the extra mid-run validation can only add a best


def test_missing_resume_file_is_an_error(tiny_config: TrainConfig):
    cfg = dataclasses.replace(tiny_config, resume=str(Path(tiny_config.out_dir) / "nope.pt"))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        run_train(cfg)
    assert not (Path(tiny_config.out_dir) / "last.pt").exists()


def test_resume_with_other_options_is_an_error(tiny_config: TrainConfig):
    run_train(dataclasses.replace(tiny_config, max_steps=1))
    last = str(Path(tiny_config.out_dir) / "last.pt")
    with pytest.raises(ValueError, match=r"margin: 0.2 -> 0.3"):
        run_train(dataclasses.replace(tiny_config, resume=last, margin=0.3))


@pytest.mark.parametrize("changes,message", [
    ({"image_pool": "adaptive"}, "use --feature-mode 10c-set"),
    ({"loss": "hinge"}, "--loss hinge is not one of"),
    ({"warmup_epochs": 2, "loss": "infonce"}, "does not use --warmup-epochs 2"),
    ({"val_split": "train"}, "also a training split"),
    ({"amp": "fp16"}, "needs CUDA"),
    ({"batch_size": 0}, "--batch-size must be >= 1"),
])
def test_bad_options_are_rejected(tiny_config: TrainConfig, changes: dict, message: str):
    with pytest.raises(ValueError, match=message):
        run_train(dataclasses.replace(tiny_config, **changes))


def test_store_checks(tiny_config: TrainConfig, make_train_store, tmp_path: Path):
    one_crop = make_train_store("one.h5", crops=1)
    with pytest.raises(ValueError, match="this store serves: 1c; or re-extract with --crops 10"):
        run_train(dataclasses.replace(tiny_config, store=str(one_crop), feature_mode="10c"))
    no_val = make_train_store("noval.h5", splits={"train": 8, "test": 4})
    with pytest.raises(ValueError, match=r"no extracted images in splits \['val'\]"):
        run_train(dataclasses.replace(tiny_config, store=str(no_val)))
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        run_train(dataclasses.replace(tiny_config, store=str(tmp_path / "missing.h5")))


def test_a_fresh_run_never_silently_replaces_another(tiny_config: TrainConfig):
    config = dataclasses.replace(tiny_config, epochs=1, max_steps=2)
    run_train(config)
    out_dir = Path(config.out_dir)
    first_best = (out_dir / "best.pt").read_bytes()
    with pytest.raises(ValueError, match="already holds a run .*--resume.*--overwrite"):
        run_train(config)
    assert (out_dir / "best.pt").read_bytes() == first_best  # untouched by the refused run
    old_lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    run_train(dataclasses.replace(config, overwrite=True, max_steps=1))
    new_lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    assert json.loads(new_lines[-1])["step"] == 1 and len(new_lines) < len(old_lines)  # one run per folder


def test_resume_on_a_store_of_another_cnn_is_refused(tiny_config: TrainConfig, make_train_store):
    import h5py

    run_train(dataclasses.replace(tiny_config, max_steps=1))
    other = make_train_store("other_cnn.h5")
    with h5py.File(other, "r+") as h5file:
        h5file.attrs["weights_sha256"] = "f" * 64  # same size of features, another CNN
    last = str(Path(tiny_config.out_dir) / "last.pt")
    with pytest.raises(ValueError, match="another CNN .*weights_sha256: trained on '', store has 'fff"):
        run_train(dataclasses.replace(tiny_config, store=str(other), resume=last))


def test_a_batch_as_large_as_the_training_set_is_warned_about(tiny_config: TrainConfig, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="train.preflight"):
        run_train(dataclasses.replace(tiny_config, batch_size=500, epochs=1))  # 192 training captions
    assert any("--batch-size 500 gives 1 step(s) per epoch on 192 training captions" in record.getMessage()
               and "--batch-size 48 gives 4 steps per epoch" in record.getMessage() for record in caplog.records)


def test_a_validation_split_too_small_to_choose_a_checkpoint_on_is_warned_about(tiny_config: TrainConfig, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="train.preflight"):
        run_train(dataclasses.replace(tiny_config, max_steps=1))  # 16 validation images
    assert any(record.getMessage().startswith("the val split has 16 images: its recall moves in steps of 6%, too "
                                              "coarse to choose best.pt on") for record in caplog.records)
