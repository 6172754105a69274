"""A model never meets other data silently: train --resume, finetune and eval check the store against the data
identity the checkpoint carries (issue 20, defect 1: a model trained on a split column, evaluated on the same
photos split by hash, scored its own training images and overwrote the run's eval-test.json)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from features.datasets import DatasetIndex
from features.reader import FeatureStore
from features.store import FeatureStoreWriter
from retrieval.encode import EncodeConfig, run_encode
from retrieval.evaluate import EvalConfig, run_eval
from retrieval.export import ExportConfig, run_export
from tests.train.finetune.fixtures import finetune_config
from train.config import TrainConfig
from train.finetune.run import run_finetune
from train.run import run_train


def copy_store(source: Path, out: Path, *, moved: int = 0) -> Path:
    """A store of the same photos, captions and features as `source`, with its first `moved` training images in
    test and as many test (or val) images in train: the same data split another way."""
    with FeatureStore(source) as store:
        splits = store.image_splits.tolist()
        train_rows = [row for row, split in enumerate(splits) if split == "train"][:moved]
        held_out = [row for row, split in enumerate(splits) if split in ("test", "val")][-moved:] if moved else []
        for train_row, held_row in zip(train_rows, held_out):
            splits[train_row], splits[held_row] = splits[held_row], "train"
        dataset = DatasetIndex(image_paths=store.image_paths.tolist(), image_splits=splits,
                               caption_texts=list(store.caption_texts), caption_tokens=store.caption_tokens,
                               caption_image_index=store.caption_image_index)
        rows = np.arange(store.num_images)
        features_10c = store.features("10c")[:] if store.crops == 10 else None
        with FeatureStoreWriter.create(out, dataset, attrs=dict(store.attrs), feature_dim=store.feature_dim,
                                       crops=store.crops, dtype=store.dtype) as writer:
            writer.write_rows(rows, store.features("1c")[:], features_10c)
    return out


@pytest.fixture(scope="module")
def column_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A model trained on one synthetic store (its split from the dataset's column), that store moved, and the
    same photos split another way (3 training images now in test)."""
    from tests.synthetic_store import FEATURE_DIM, synthetic_dataset, synthetic_features, write_features_store
    folder = tmp_path_factory.mktemp("identity")
    dataset, attributes = synthetic_dataset(splits={"train": 32, "val": 8, "test": 8})
    features = synthetic_features(attributes, feature_dim=FEATURE_DIM)
    column = folder / "column.h5"
    write_features_store(column, dataset, features)
    cfg = TrainConfig(store=str(column), out_dir=str(folder / "run"), embed_dim=16, word_dim=8, vocab_min_count=1,
                      batch_size=32, epochs=1, max_steps=2, lr=5e-3, device="cpu")
    summary = run_train(cfg)
    return {"column": column, "hash": copy_store(column, folder / "hash.h5", moved=3),
            "moved": copy_store(column, folder / "moved.h5"), "last": Path(summary["last"]), "config": cfg}


def test_eval_on_another_split_of_the_same_photos_is_refused_then_labelled(column_run, caplog):
    last = column_run["last"]
    own = run_eval(EvalConfig(checkpoint=str(last), device="cpu", protocol="all-images"))
    assert (own["cross_dataset"], own["data_identity"]) == (False, "checked")
    assert own["training_overlap"]["any"] is False and own["training_overlap"]["images"] == 8
    own_file = last.with_name("eval-test.json")
    assert json.loads(own_file.read_text())["protocols"] == own["protocols"]
    with pytest.raises(ValueError, match=r"holds other data .*pass --cross-dataset"):
        run_eval(EvalConfig(checkpoint=str(last), store=str(column_run["hash"]), device="cpu"))
    with caplog.at_level(logging.WARNING):
        cross = run_eval(EvalConfig(checkpoint=str(last), store=str(column_run["hash"]), cross_dataset=True,
                                    device="cpu", protocol="all-images"))
    assert cross["cross_dataset"] and cross["store"] == str(column_run["hash"])
    overlap = cross["training_overlap"]
    assert (overlap["images"], overlap["images_by_path"], overlap["images_by_content"]) == (8, 3, 3)
    assert any(record.levelname == "WARNING" and "trained on 3 of the 8 images" in record.getMessage()
               for record in caplog.records)
    written = sorted(path.name for path in last.parent.glob("eval-*.json") if ".config." not in path.name)
    assert written == ["eval-hash-" + cross["store_fingerprint"][:8] + "-test.json", "eval-test.json"]
    assert json.loads(own_file.read_text()) == json.loads(json.dumps(own))  # the run's own results kept


def test_a_moved_store_is_the_same_data(column_run):
    results = run_eval(EvalConfig(checkpoint=str(column_run["last"]), store=str(column_run["moved"]),
                                  device="cpu", protocol="all-images", out=str(column_run["last"].parent / "m.json")))
    assert results["cross_dataset"] is False and results["training_overlap"]["any"] is False


def test_resume_on_another_store_is_refused(column_run):
    cfg = dataclasses.replace(column_run["config"], store=str(column_run["hash"]), max_steps=3,
                              resume=str(column_run["last"]))
    with pytest.raises(ValueError, match=r"--resume .* was trained on .*column.h5 .* holds other data .*resume on the "
                                         "run's store"):
        run_train(cfg)


def test_a_checkpoint_without_identity_is_accepted_with_a_warning(column_run, tmp_path: Path, caplog):
    checkpoint = torch.load(column_run["last"], weights_only=True)
    assert checkpoint["data"]["paths"].dtype == torch.int64 and len(checkpoint["data"]["paths"]) == 32
    del checkpoint["data"]  # as written before data identities
    old = tmp_path / "old.pt"
    torch.save(checkpoint, old)
    with caplog.at_level(logging.WARNING):
        results = run_eval(EvalConfig(checkpoint=str(old), device="cpu", protocol="all-images"))
    assert results["data_identity"] == "unknown" and results["training_overlap"] is None
    assert "carries no identity of the data it was trained on" in caplog.text
    with pytest.raises(ValueError, match="pass --cross-dataset"):  # known by its store path only
        run_eval(EvalConfig(checkpoint=str(old), store=str(column_run["moved"]), device="cpu"))


def test_encode_of_a_split_that_held_training_images_warns(column_run, tmp_path: Path, caplog):
    with caplog.at_level(logging.WARNING):
        run_encode(EncodeConfig(checkpoint=str(column_run["last"]), store=str(column_run["hash"]), split="test",
                                out=str(tmp_path / "test.h5"), device="cpu"))
    assert "trained on 3 of the 8 images" in caplog.text


def test_finetune_on_another_store_is_refused(images_setup, tmp_path: Path):
    other = copy_store(images_setup.store, tmp_path / "other.h5", moved=1)
    cfg = finetune_config(images_setup, tmp_path / "ft", store=str(other), image_root=str(images_setup.image_root))
    with pytest.raises(ValueError, match=r"--checkpoint .* holds other data .*fine-tune on the store"):
        run_finetune(cfg)


@pytest.mark.slow
def test_finetune_and_export_keep_the_training_data_identity(images_setup, finetuned, tmp_path: Path):
    trained = torch.load(images_setup.checkpoint, weights_only=True)["data"]
    tuned = torch.load(finetuned, weights_only=True)["data"]
    assert tuned["fingerprint"] == trained["fingerprint"] and tuned["splits"] == ["train"]
    torch.testing.assert_close(tuned["content"], trained["content"])
    run_export(ExportConfig(checkpoint=str(finetuned), out=str(tmp_path / "model.pt")))
    other = copy_store(images_setup.store, tmp_path / "other.h5", moved=1)
    results = run_eval(EvalConfig(checkpoint=str(tmp_path / "model.pt"), store=str(other), split="val",
                                  cross_dataset=True, image_root=str(images_setup.image_root), workers=0,
                                  device="cpu", protocol="all-images"))
    assert results["data_identity"] == "checked" and results["training_overlap"]["images_by_path"] == 1
