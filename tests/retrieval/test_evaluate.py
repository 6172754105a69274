"""The eval stage (retrieval/evaluate.py) and checkpoint loading (retrieval/model.py) on the tiny synthetic store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eval.metrics import recall_metrics
from eval.protocols import PROTOCOLS
from features.reader import FeatureStore
from retrieval.evaluate import EvalConfig, protocols_for, run_eval
from retrieval.model import load_model
from train.encode import encode_split
from train.losses.similarity import cosine_sim, order_sim


@pytest.mark.parametrize("run,similarity", [("cosine", cosine_sim), ("order", order_sim)])
def test_eval_scores_the_split_with_the_similarity_the_model_was_trained_with(trained, run, similarity, tmp_path):
    out = tmp_path / "results.json"
    results = run_eval(EvalConfig(checkpoint=str(trained[run]), split="test", protocol="all", device="cpu",
                                  out=str(out)))
    loaded = load_model(trained[run])
    with FeatureStore(trained["store"]) as store:
        image_emb, caption_emb, caption_image_index, image_rows = encode_split(
            loaded.model, store, splits=["test"], feature_mode="10c", vocab=loaded.vocab, batch_size=256,
            device="cpu")  # eval's batch size: the same float rounding, so near-ties of order sims break alike
        assert image_rows.tolist() == store.image_indices(["test"]).tolist()
    expected = recall_metrics(similarity(image_emb, caption_emb), caption_image_index)
    scores = results["protocols"]["all-images"]
    assert list(results["protocols"]) == ["all-images"]  # 12 images: no COCO / Flickr protocol fits
    assert {key: scores[key] for key in expected} == expected
    assert json.loads(out.read_text())["protocols"]["all-images"]["rsum"] == expected["rsum"]
    assert EvalConfig.load_json(tmp_path / "results.config.json").checkpoint == str(trained[run])


def test_default_results_path_and_protocol_choice(trained):
    assert EvalConfig(checkpoint="runs/a/best.pt", split="val").results_path() == Path("runs/a/eval-val.json")
    assert protocols_for("all", 5000) == ["coco-1k", "coco-5k", "all-images"]
    assert protocols_for("all", 1000) == ["f30k-1k", "all-images"] and protocols_for("coco-5k", 7) == ["coco-5k"]
    assert set(protocols_for("all", 5000)) <= set(PROTOCOLS)


def test_encode_split_restores_the_training_mode_and_reads_store_rows(trained):
    loaded = load_model(trained["cosine"])
    loaded.model.train()
    with FeatureStore(trained["store"]) as store:
        first = encode_split(loaded.model, store, splits=["val", "test"], feature_mode="10c", vocab=loaded.vocab,
                             batch_size=7, device="cpu")
        again = encode_split(loaded.model, store, splits=["val", "test"], feature_mode="10c-random",
                             vocab=loaded.vocab, batch_size=100, device="cpu")
        assert loaded.model.training
        assert len(first[3]) == 28 and first[2].max() == 27  # 16 val + 12 test images, re-indexed 0..27
        with pytest.raises(ValueError, match="no extracted images"):
            encode_split(loaded.model, store, splits=["restval"], feature_mode="1c", vocab=loaded.vocab,
                         batch_size=4, device="cpu")
    torch.testing.assert_close(first[0], again[0])  # 10c-random is evaluated on the mean of the crops
    torch.testing.assert_close(first[1], again[1])


def test_load_model_rebuilds_the_run_config_and_refuses_other_files(trained, tmp_path):
    loaded = load_model(trained["order"])
    assert loaded.kind == "train" and loaded.config.similarity == "order" and not loaded.model.training
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot be read as a checkpoint"):
        load_model(tmp_path / "junk.pt")


def test_eval_refuses_a_store_of_another_cnn(trained, tmp_path):
    import shutil

    import h5py

    other = tmp_path / "other.h5"
    shutil.copy(trained["store"], other)
    with h5py.File(other, "r+") as h5file:  # the same feature size from another CNN: rsum would be silently wrong
        h5file.attrs["backbone"] = "resnet50"
    with pytest.raises(ValueError, match="another CNN .*backbone: trained on 'synthetic', store has 'resnet50'"):
        run_eval(EvalConfig(checkpoint=str(trained["cosine"]), store=str(other), device="cpu",
                            out=str(tmp_path / "e.json")))
    assert not (tmp_path / "e.json").exists()
