"""run_extract on hostile inputs: FIFOs, paths leaving the image root, a wrong root, a full disk, absolute paths."""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from extract.config import ExtractConfig, config_json_path
from extract.run import UnreadableImages, run_extract
from features import disk
from features.disk import StoreSpaceError
from features.store import FeatureStoreWriter
from tests.extract.test_run_extract import make_config, read_features


def _release_fifo(path: Path) -> None:
    """Open and close the FIFO for writing: a reader blocked on it (the defect) gets end-of-file and goes on."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # no reader waiting
        pass


def test_a_fifo_listed_as_an_image_is_marked_failed_at_once(tiny_dataset: tuple[Path, Path],
                                                            karpathy_json_writer: Callable[..., Path],
                                                            tmp_path: Path) -> None:
    _, root = tiny_dataset
    fifo = root / "imgs" / "pipe.jpg"
    os.mkfifo(fifo)
    dataset = karpathy_json_writer(tmp_path / "fifo.json", ["im0.jpg", "pipe.jpg", "im1.jpg", "im2.jpg"])
    rescue = threading.Timer(15, _release_fifo, args=(fifo,))  # so that a blocking read fails the test, not hangs it
    rescue.daemon = True
    rescue.start()
    start = time.perf_counter()
    try:
        summary = run_extract(make_config(dataset, root, tmp_path / "store.h5", crops=1, workers=1))
    finally:
        rescue.cancel()
    assert time.perf_counter() - start < 10, "the FIFO was opened for a blocking read"
    assert (summary["done"], summary["failed"]) == (3, 1)
    with h5py.File(tmp_path / "store.h5", "r") as h5file:
        assert "a FIFO, not an image file" in h5file["images/error"].asstr()[1]


@pytest.mark.parametrize("bad_path", ["../outside.jpg", "/etc/passwd", "imgs/../../outside.jpg", "link.jpg",
                                      "linked_folder/outside.jpg"])
def test_paths_leaving_the_image_root_are_refused_before_anything_is_written(
        tiny_dataset: tuple[Path, Path], tmp_path: Path, bad_path: str) -> None:
    _, root = tiny_dataset
    shutil.copy(root / "imgs" / "im0.jpg", tmp_path / "outside.jpg")
    (root / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    (root / "linked_folder").symlink_to(tmp_path)
    images = [{"filename": name, "split": "train", "sentences": [{"raw": "a caption"}]}
              for name in ["imgs/im0.jpg", "imgs/im1.jpg", bad_path, "imgs/im2.jpg"]]
    dataset = tmp_path / "escape.json"
    dataset.write_text(json.dumps({"images": images}))
    out = tmp_path / "store.h5"
    with pytest.raises(ValueError, match=rf"image 2 path '{bad_path}' leads to .* outside --image-root"):
        run_extract(make_config(dataset, root, out))
    assert not out.exists() and not config_json_path(out).exists() and not Path(f"{out}.partial").exists()


def test_symlinks_inside_the_root_are_followed(tiny_dataset: tuple[Path, Path],
                                               karpathy_json_writer: Callable[..., Path], tmp_path: Path) -> None:
    _, root = tiny_dataset
    (root / "imgs" / "alias.jpg").symlink_to(root / "imgs" / "im3.jpg")
    dataset = karpathy_json_writer(tmp_path / "alias.json", ["im3.jpg", "alias.jpg"])
    summary = run_extract(make_config(dataset, root, tmp_path / "store.h5", crops=1))
    assert summary["done"] == 2
    features = read_features(tmp_path / "store.h5")["features/1c"]
    np.testing.assert_array_equal(features[0], features[1])


def test_a_root_holding_none_of_the_images_is_refused_before_anything_is_written(
        tiny_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    dataset, root = tiny_dataset
    out = tmp_path / "store.h5"
    with pytest.raises(UnreadableImages, match=r"none of the 4 images to extract exists under --image-root .*imgs "
                                               r".*is it the folder the dataset's paths are relative to\?"):
        run_extract(make_config(dataset, root / "imgs", out))  # one folder too deep
    assert not out.exists() and not config_json_path(out).exists()


@pytest.mark.slow
def test_most_images_failing_is_an_error_and_a_retry_under_the_right_root_records_it(
        tiny_dataset: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dataset, root = tiny_dataset
    wrong = tmp_path / "wrong"
    (wrong / "imgs").mkdir(parents=True)
    shutil.copy(root / "imgs" / "im0.jpg", wrong / "imgs" / "im0.jpg")  # 1 of 4 is there
    out = tmp_path / "store.h5"
    with pytest.raises(UnreadableImages, match=r"3 of 4 images could not be read under --image-root .*wrong "
                                               r"\(the first, row 1: FileNotFoundError.*\): is it the folder the "
                                               r"dataset's paths are relative to\? Fix it and rerun with --retry-failed"):
        run_extract(make_config(dataset, wrong, out, crops=1))
    with h5py.File(out, "r") as h5file:  # what was read is kept
        assert h5file["images/status"][()].tolist() == [1, 2, 2, 2] and h5file.attrs["image_root"] == str(wrong)
    with pytest.raises(UnreadableImages, match="3 of 4 images of .* are marked failed by an earlier run .* rerun "
                                               "with --retry-failed"):
        run_extract(make_config(dataset, root, out, crops=1))  # the right root, but failed rows are not retried
    with caplog.at_level(logging.WARNING):
        summary = run_extract(make_config(dataset, root, out, crops=1, retry_failed=True))
    assert (summary["done"], summary["failed"]) == (4, 0)
    assert "image_root was" in caplog.text
    with h5py.File(out, "r") as h5file:
        assert h5file.attrs["image_root"] == str(root.resolve())


def test_every_image_failing_to_decode_is_an_error(tiny_dataset: tuple[Path, Path],
                                                   karpathy_json_writer: Callable[..., Path], tmp_path: Path) -> None:
    _, root = tiny_dataset
    for number in range(3):
        (root / "imgs" / f"note{number}.jpg").write_text("not an image")
    dataset = karpathy_json_writer(tmp_path / "notes.json", [f"note{number}.jpg" for number in range(3)])
    with pytest.raises(UnreadableImages, match="3 of 3 images could not be read under --image-root"):
        run_extract(make_config(dataset, root, tmp_path / "store.h5", crops=1))


@pytest.mark.slow
def test_a_few_failed_images_get_the_retry_hint(awkward_images: tuple[dict, dict],
                                                karpathy_json_writer: Callable[..., Path], tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    good, broken = awkward_images
    dataset = karpathy_json_writer(tmp_path / "a.json", [p.name for p in list(good.values()) + [broken["text"]]])
    (tmp_path / "imgs").symlink_to(tmp_path / "awkward")
    with caplog.at_level(logging.WARNING):
        summary = run_extract(make_config(dataset, tmp_path, tmp_path / "store.h5", crops=1))
    assert summary["failed"] == 1
    assert "rerun with --retry-failed" in caplog.text and "row 8: UnidentifiedImageError" in caplog.text


def test_too_little_free_space_is_refused_before_the_store_is_created(tiny_dataset: tuple[Path, Path],
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    dataset, root = tiny_dataset
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda folder: SimpleNamespace(total=10**9, free=1000))
    out = tmp_path / "store.h5"
    with pytest.raises(StoreSpaceError, match=r"the store .*store.h5 needs 1.1 MB of disk space but only 0.0 MB is "
                                              r"free in .*; free some space or choose another --out"):
        run_extract(make_config(dataset, root, out))
    assert not out.exists() and not Path(f"{out}.partial").exists()


def fill_the_disk_at_write(monkeypatch: pytest.MonkeyPatch, *, call: int) -> Callable:
    """Make the `call`-th FeatureStoreWriter.write_rows raise ENOSPC, as a full disk does; return the real one."""
    real_write, calls = FeatureStoreWriter.write_rows, []

    def write_rows(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(FeatureStoreWriter, "write_rows", write_rows)
    return real_write


@pytest.mark.slow  # two extractions
def test_a_full_disk_while_writing_stops_cleanly_and_a_rerun_resumes(tiny_dataset: tuple[Path, Path],
                                                                     tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    dataset, root = tiny_dataset
    run_extract(make_config(dataset, root, tmp_path / "full.h5", crops=1))
    real_write = fill_the_disk_at_write(monkeypatch, call=2)
    out = tmp_path / "store.h5"
    with pytest.raises(StoreSpaceError, match=r"disk of .* is full \(No space left on device\) after 2 of 4 images; "
                                              r"the store keeps them: .*rerun the same command to resume"):
        run_extract(make_config(dataset, root, out, crops=1, batch_size=2))
    assert read_features(out)["images/status"].tolist() == [1, 1, 0, 0]
    monkeypatch.setattr(FeatureStoreWriter, "write_rows", real_write)
    assert run_extract(make_config(dataset, root, out, crops=1, batch_size=2))["processed"] == 2
    np.testing.assert_allclose(read_features(out)["features/1c"], read_features(tmp_path / "full.h5")["features/1c"],
                               atol=1e-6, rtol=0)


def test_the_store_is_allocated_when_created(tiny_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    dataset, root = tiny_dataset
    out = tmp_path / "store.h5"
    run_extract(make_config(dataset, root, out, max_batches=0))
    assert disk.unallocated_bytes(out) == 0  # no holes left for a full disk to hit in the middle of the run


def test_the_saved_config_holds_absolute_paths(tiny_dataset: tuple[Path, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from torchvision import models

    dataset, root = tiny_dataset
    torch.save(models.resnet18(weights=None).state_dict(), tmp_path / "weights.pth")
    monkeypatch.chdir(tmp_path)
    run_extract(make_config(Path("dataset.json"), Path("root"), Path("store.h5"), weights="weights.pth",
                            max_batches=0))
    saved = ExtractConfig.load_json(config_json_path(tmp_path / "store.h5"))
    assert saved.weights == str(tmp_path / "weights.pth") and saved.dataset == str(dataset)
    assert saved.image_root == str(root) and saved.out == str(tmp_path / "store.h5")
