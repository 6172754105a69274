"""Region stores end to end: train and eval with each image pooling and with region drop, exact resume, the
drop's determinism, one clear error for a feature mode the store cannot serve, and the later stages (encode,
search, report, serve, ablate; finetune refuses)."""

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from features.reader import FeatureStore
from ablation.config import AblationConfig
from ablation.run import run_ablation
from report.config import ReportConfig
from report.run import run_report
from retrieval.api import VSE
from retrieval.encode import EncodeConfig, run_encode
from retrieval.evaluate import EvalConfig, run_eval
from retrieval.model import load_model
from retrieval.search import SearchConfig, run_search
from serve.config import ServeConfig
from serve.safety import QueryError
from serve.service import SearchService
from train.checkpoint import load_checkpoint
from train.config import TrainConfig
from train.data import CaptionBatches, pack_sets, region_keep_mask
from train.encode import encode_split
from train.finetune.config import FinetuneConfig
from train.finetune.run import run_finetune
from train.run import run_train
from train.text import build_vocabulary

REGIONS = 6


@pytest.fixture
def region_config(make_train_store, tmp_path: Path) -> TrainConfig:
    """A fast config on a synthetic region store (6 regions per image)."""
    store = make_train_store("regions.h5", regions=REGIONS)
    return TrainConfig(store=str(store), out_dir=str(tmp_path / "run"), feature_mode="regions", embed_dim=32,
                       word_dim=16, vocab_min_count=1, batch_size=32, epochs=3, lr=1e-2, loss="sh", device="cpu",
                       log_every=1)


@pytest.mark.parametrize("image_pool,region_drop", [("mean", 0.0), ("adaptive", 0.0), ("gpo", 0.0),
                                                    ("mean", 0.3), ("gpo", 0.3)])
def test_region_store_trains_and_evaluates(region_config: TrainConfig, image_pool: str, region_drop: float):
    cfg = dataclasses.replace(region_config, image_pool=image_pool, region_drop=region_drop)
    summary = run_train(cfg)
    assert summary["best_rsum"] > 380, summary["best_rsum"]  # untrained: 140 to 215 on these 16 val images
    results = run_eval(EvalConfig(checkpoint=str(Path(cfg.out_dir) / "best.pt"), split="val", protocol="all-images",
                                  device="cpu"))
    assert results["protocols"]["all-images"]["rsum"] == pytest.approx(summary["best_rsum"])  # eval never drops


def test_region_drop_resume_is_bit_exact(region_config: TrainConfig):
    base = dataclasses.replace(region_config, batch_size=48, epochs=2, image_pool="gpo", region_drop=0.4, loss="mh")
    whole = dataclasses.replace(base, out_dir=str(Path(base.out_dir) / "whole"))
    part = dataclasses.replace(base, out_dir=str(Path(base.out_dir) / "part"), max_steps=3)  # mid-epoch 0
    run_train(whole)
    run_train(part)
    run_train(dataclasses.replace(part, max_steps=0, resume=str(Path(part.out_dir) / "last.pt")))
    expected, resumed = (load_checkpoint(Path(run.out_dir) / "last.pt") for run in (whole, part))
    assert resumed["step"] == expected["step"] == 8
    for key, value in expected["model"].items():
        assert torch.equal(resumed["model"][key], value), key


def test_region_drop_batches_are_a_function_of_seed_epoch_step(region_config: TrainConfig):
    with FeatureStore(region_config.store) as store:
        vocab = build_vocabulary(store, splits=["train"], min_count=1)
        make = lambda drop: CaptionBatches(store, splits=["train"], vocab=vocab, feature_mode="regions",  # noqa: E731
                                           batch_size=40, seed=3, region_drop=drop)
        dropped, whole = make(0.5), make(0.0)
        first, again, other = dropped.batch(1, 2), dropped.batch(1, 2), dropped.batch(1, 3)
        assert torch.equal(first.images, again.images) and torch.equal(first.image_lengths, again.image_lengths)
        assert not torch.equal(first.image_lengths, other.image_lengths[:len(first)])
        lengths = first.image_lengths.numpy()
        assert lengths.min() >= 1 and lengths.max() <= REGIONS and lengths.min() < REGIONS
        full = whole.batch(1, 2)
        assert full.image_lengths is None and torch.equal(full.image_ids, first.image_ids)
        for row, length in enumerate(lengths.tolist()):  # each kept set is a subsequence of the whole set
            kept = first.images[row, :length].numpy()
            positions = [int(np.flatnonzero((full.images[row].numpy() == vector).all(axis=1))[0]) for vector in kept]
            assert positions == sorted(positions) and len(set(positions)) == length
            assert not first.images[row, length:].any()


def test_region_keep_mask_and_pack_sets():
    keep = region_keep_mask(np.random.default_rng(0), 500, 4, 0.9)
    assert keep.any(axis=1).all()  # at least one vector survives even a 90% drop
    assert 0.05 < keep.mean() < 0.4
    assert region_keep_mask(np.random.default_rng(0), 3, 5, 0.0).all()
    features = np.arange(2 * 4 * 1, dtype=np.float32).reshape(2, 4, 1) + 1
    packed, lengths = pack_sets(features, np.array([[False, True, False, True], [True, True, True, True]]))
    assert lengths.tolist() == [2, 4]
    assert packed[:, :, 0].tolist() == [[2, 4, 0, 0], [5, 6, 7, 8]]


def test_validation_never_drops(region_config: TrainConfig):
    cfg = dataclasses.replace(region_config, region_drop=0.5, max_steps=1)
    run_train(cfg)
    loaded = load_model(Path(cfg.out_dir) / "last.pt")
    with FeatureStore(cfg.store) as store:
        image_emb = encode_split(loaded.model, store, splits=["val"], feature_mode="regions", vocab=loaded.vocab,
                                 batch_size=5, device="cpu")[0]
        rows = store.image_indices(["val"])
        features = torch.from_numpy(np.asarray(store.features("regions")[rows], dtype=np.float32))
    with torch.no_grad():
        expected = loaded.model.encode_images(features)
    torch.testing.assert_close(image_emb, expected)


def test_feature_mode_the_store_cannot_serve_is_one_clear_error(region_config: TrainConfig, make_train_store):
    for mode in ("1c", "10c", "10c-set"):
        with pytest.raises(ValueError, match=f"--feature-mode {mode} reads .* holds regions \\(a region store, 6 "
                                             "regions per image\\); the feature modes this store serves: regions"):
            run_train(dataclasses.replace(region_config, feature_mode=mode))
    cnn = make_train_store("cnn.h5", crops=10)
    with pytest.raises(ValueError, match="holds 1c, 10c .*serves: 1c, 10c, 10c-random, 10c-set; or import region"):
        run_train(dataclasses.replace(region_config, store=str(cnn)))
    with pytest.raises(ValueError, match="--image-pool gpo works on an image's set, but --feature-mode is '1c'"):
        dataclasses.replace(region_config, feature_mode="1c", image_pool="gpo").validate()
    with pytest.raises(ValueError, match="--region-drop 0.2 works on an image's set"):
        dataclasses.replace(region_config, feature_mode="10c", region_drop=0.2).validate()
    with pytest.raises(ValueError, match="--region-drop 1.0 must be a probability in"):
        dataclasses.replace(region_config, region_drop=1.0).validate()


def test_finetune_refuses_a_region_model(region_config: TrainConfig, tmp_path: Path):
    run_train(dataclasses.replace(region_config, max_steps=1))
    cfg = FinetuneConfig(checkpoint=str(Path(region_config.out_dir) / "last.pt"), out_dir=str(tmp_path / "ft"),
                         device="cpu")
    with pytest.raises(ValueError, match="trained on region features .* no CNN this project can fine-tune and no "
                                         "raw images"):
        run_finetune(cfg)
    assert not (tmp_path / "ft").exists()


def test_ablation_runs_region_cells(region_config: TrainConfig, tmp_path: Path):
    cfg = AblationConfig(store=region_config.store, out_dir=str(tmp_path / "grid"), losses=("sh",),
                         image_features=("regions", "regions-gpo"), epochs=1, batch_size=96, embed_dim=16,
                         word_dim=8, max_steps=2, device="cpu")
    summary = run_ablation(cfg)
    assert [row["name"] for row in summary["runs"]] == ["sh_regions_last", "sh_regions-gpo_last"]
    with pytest.raises(ValueError, match="cell sh_1c_last: image features 1c need 1c features, but .* holds regions "
                                         r"\(a region store, 6 regions per image\); use --image-features regions,"
                                         "regions-adaptive,regions-gpo"):
        run_ablation(dataclasses.replace(cfg, image_features=("1c",)))


@pytest.mark.slow
def test_encode_search_report_and_the_api_take_a_region_model(region_config: TrainConfig, tmp_path: Path, capsys):
    cfg = dataclasses.replace(region_config, image_pool="adaptive", region_drop=0.2, max_steps=2)
    run_train(cfg)
    checkpoint = str(Path(cfg.out_dir) / "last.pt")
    run_encode(EncodeConfig(checkpoint=checkpoint, out=str(tmp_path / "e.h5"), split="test", device="cpu"))
    run_search(SearchConfig(embeddings=str(tmp_path / "e.h5"), text=("a big red circle",), k=2, device="cpu"))
    run_search(SearchConfig(checkpoint=checkpoint, text=("a big red circle",), k=3, device="cpu"))
    assert "text query 1: 'a big red circle' -> top 3 images (exact)" in capsys.readouterr().out
    vse = VSE.load(checkpoint, device="cpu")
    assert vse.encode_split("val").image_emb.shape == (16, cfg.embed_dim)
    with pytest.raises(ValueError, match="embeds region features .* no CNN turns a new image into them"):
        vse.encode_images([Image.new("RGB", (40, 30))])
    report = run_report(ReportConfig(run_dir=cfg.out_dir, out_dir=str(tmp_path / "report"), device="cpu"))
    assert Path(report["index"]).is_file()
    service = SearchService.load(ServeConfig(checkpoint=checkpoint, device="cpu", image_root=str(tmp_path)),
                                 tmp_path / "e.h5")
    assert len(service.text_search("a big red circle", 3)["results"]) == 3
    upload = io.BytesIO()
    Image.new("RGB", (40, 30)).save(upload, format="JPEG")
    with pytest.raises(QueryError, match="could not be embedded: .* embeds region features"):
        service.upload_search(upload.getvalue(), 3)
