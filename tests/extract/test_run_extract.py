"""run_extract end to end on tiny images: exact features, 1c/10c, resume, failures, config checks."""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import models

from extract.config import ExtractConfig, config_json_path
from extract.loader import to_rgb
from extract import run as extract_run
from extract.run import ExtractFailures, run_extract
from extract.transforms import ten_crop_normalized


def make_config(dataset: Path, root: Path, out: Path, **overrides: object) -> ExtractConfig:
    """Small, fast CPU config: resnet18 random init, 10 crops, batch 3, no workers."""
    options = dict(backbone="resnet18", weights="none", crops=10, device="cpu", batch_size=3, workers=0, seed=7)
    options.update(overrides)
    return ExtractConfig(dataset=str(dataset), image_root=str(root), out=str(out), **options)


def read_features(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as h5file:
        return {name: h5file[name][()] for name in ("features/1c", "features/10c", "images/status")
                if name in h5file}


@pytest.mark.slow  # a resnet152 forward at 224 px
def test_features_equal_torchvision_model(tiny_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    dataset, root = tiny_dataset
    out = tmp_path / "store.h5"
    summary = run_extract(make_config(dataset, root, out))
    assert summary["done"] == 4 and summary["failed"] == 0 and summary["pending"] == 0
    stored = read_features(out)
    assert stored["features/10c"].shape == (4, 10, 512) and stored["features/1c"].shape == (4, 512)
    np.testing.assert_array_equal(stored["features/1c"], stored["features/10c"][:, 4])
    torch.manual_seed(7)
    reference = models.resnet18(weights=None)
    reference.fc = torch.nn.Identity()
    reference.eval()
    with Image.open(root / "imgs" / "im3.jpg") as image:
        crops = ten_crop_normalized(to_rgb(image))
    with torch.no_grad():
        expected = reference(crops).numpy()
    np.testing.assert_allclose(stored["features/10c"][3], expected, atol=1e-5, rtol=0)
    with h5py.File(out, "r") as h5file:
        assert h5file.attrs["backbone"] == "resnet18" and h5file.attrs["layer"] == "avgpool"
        assert h5file.attrs["weights_name"] == "none" and h5file.attrs["weights_seed"] == 7
        assert h5file.attrs["crops"] == 10
    assert ExtractConfig.load_json(config_json_path(out)) == make_config(dataset, root, out)
    # --crops 1 --dtype float16 gives the center crop of the ten, rounded to float16
    run_extract(make_config(dataset, root, tmp_path / "one.h5", crops=1, dtype="float16", channels_last=False))
    one = read_features(tmp_path / "one.h5")
    assert "features/10c" not in one and one["features/1c"].dtype == np.float16
    np.testing.assert_allclose(one["features/1c"], stored["features/1c"], rtol=2e-3, atol=2e-3)


@pytest.mark.slow  # two extractions
def test_interrupted_then_resumed_equals_uninterrupted(tiny_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    dataset, root = tiny_dataset
    run_extract(make_config(dataset, root, tmp_path / "full.h5", crops=1))
    partial = run_extract(make_config(dataset, root, tmp_path / "resumed.h5", crops=1, batch_size=1, max_batches=2))
    assert partial["done"] == 2 and partial["pending"] == 2 and partial["processed"] == 2
    assert read_features(tmp_path / "resumed.h5")["images/status"].tolist() == [1, 1, 0, 0]
    resumed = run_extract(make_config(dataset, root, tmp_path / "resumed.h5", crops=1, batch_size=1))
    assert resumed["processed"] == 2 and resumed["done"] == 4 and resumed["pending"] == 0
    full, again = read_features(tmp_path / "full.h5"), read_features(tmp_path / "resumed.h5")
    for name in full:
        np.testing.assert_allclose(again[name], full[name], atol=1e-6, rtol=0)
    assert run_extract(make_config(dataset, root, tmp_path / "resumed.h5", crops=1))["processed"] == 0


@pytest.mark.slow
def test_keyboard_interrupt_leaves_resumable_store(tiny_dataset: tuple[Path, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    dataset, root = tiny_dataset
    out = tmp_path / "store.h5"
    real_embed, calls = extract_run.embed_crops, []

    def interrupt_second_batch(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_embed(*args, **kwargs)

    monkeypatch.setattr(extract_run, "embed_crops", interrupt_second_batch)
    with caplog.at_level(logging.WARNING), pytest.raises(KeyboardInterrupt):
        run_extract(make_config(dataset, root, out, crops=1, batch_size=2))
    assert "2 of 4 images done" in caplog.text and "rerun the same command to resume" in caplog.text
    assert read_features(out)["images/status"].tolist() == [1, 1, 0, 0]
    monkeypatch.setattr(extract_run, "embed_crops", real_embed)
    assert run_extract(make_config(dataset, root, out, crops=1, batch_size=2))["processed"] == 2


@pytest.mark.slow
def test_bad_files_are_marked_failed_and_run_goes_on(awkward_images: tuple[dict, dict],
                                                     karpathy_json_writer: Callable[..., Path],
                                                     tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good, broken = awkward_images
    names = [path.name for path in list(good.values()) + list(broken.values())]
    dataset = karpathy_json_writer(tmp_path / "awkward.json", names)
    (tmp_path / "imgs").symlink_to(tmp_path / "awkward")
    config = make_config(dataset, tmp_path, tmp_path / "store.h5", crops=1, batch_size=4, workers=1)
    with caplog.at_level(logging.WARNING):
        summary = run_extract(config)
    assert summary["done"] == len(good) and summary["failed"] == len(broken) and summary["pending"] == 0
    with h5py.File(tmp_path / "store.h5", "r") as h5file:
        errors = h5file["images/error"].asstr()[()]
        status = h5file["images/status"][()]
    assert status.tolist() == [1] * len(good) + [2] * len(broken)
    assert all(errors[: len(good)] == "") and all(error for error in errors[len(good):])
    assert "missing.jpg" in caplog.text or "FileNotFoundError" in caplog.text
    with pytest.raises(ExtractFailures, match=f"{len(broken)} image"):  # strict: nothing pending, failures stay
        run_extract(make_config(dataset, tmp_path, tmp_path / "store.h5", crops=1, strict=True))


@pytest.mark.slow
def test_config_mismatch_on_rerun(tiny_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    dataset, root = tiny_dataset
    out = tmp_path / "store.h5"
    run_extract(make_config(dataset, root, out, max_batches=0))
    with pytest.raises(ValueError, match="another config .weights_seed: stored 7 vs requested 8"):
        run_extract(make_config(dataset, root, out, seed=8, max_batches=0))
    with pytest.raises(ValueError, match="crops"):
        run_extract(make_config(dataset, root, out, crops=1, max_batches=0))
    summary = run_extract(make_config(dataset, root, out, crops=1, overwrite=True, max_batches=0))
    assert summary["pending"] == 4 and "features/10c" not in read_features(out)


@pytest.mark.parametrize("content", ["{not json", json.dumps({"images": [{"filename": "a.jpg"}]})])
def test_bad_dataset_json_writes_nothing(tmp_path: Path, content: str) -> None:
    dataset = tmp_path / "bad.json"
    dataset.write_text(content)
    (tmp_path / "root").mkdir()
    with pytest.raises(ValueError):
        run_extract(make_config(dataset, tmp_path / "root", tmp_path / "store.h5"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "root"]


def test_missing_image_root_and_bad_options_write_nothing(tiny_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    dataset, root = tiny_dataset
    out = tmp_path / "store.h5"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_extract(make_config(dataset, tmp_path / "nowhere", out))
    with pytest.raises(ValueError, match="--amp fp16 needs CUDA"):
        run_extract(make_config(dataset, root, out, amp="fp16"))
    with pytest.raises(ValueError, match="shard '2/2'"):
        run_extract(make_config(dataset, root, out, shard="2/2"))
    with pytest.raises(FileNotFoundError, match="resnet18-f37072fd.pth"):
        run_extract(make_config(dataset, root, out, weights="default"))
    assert not out.exists() and not config_json_path(out).exists()


@pytest.mark.slow
def test_shards_cover_all_rows(tiny_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    dataset, root = tiny_dataset
    first = run_extract(make_config(dataset, root, tmp_path / "a.h5", shard="0/2", crops=1))
    second = run_extract(make_config(dataset, root, tmp_path / "b.h5", shard="1/2", crops=1))
    assert (first["done"], second["done"]) == (2, 2) and first["pending"] == second["pending"] == 0
    status_a, status_b = read_features(tmp_path / "a.h5")["images/status"], read_features(tmp_path / "b.h5")[
        "images/status"]
    assert status_a.tolist() == [1, 1, 0, 0] and status_b.tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="holds shard '0/2'"):
        run_extract(make_config(dataset, root, tmp_path / "a.h5", shard="1/2", crops=1, max_batches=0))
