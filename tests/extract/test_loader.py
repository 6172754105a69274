"""Every PIL mode becomes RGB; unreadable files become failure records; collate carries them."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from extract import loader
from extract.loader import (
    ImageDataset, LoaderStalled, collate_crops, iter_batches, make_loader, stall_timeout, to_rgb,
)

Awkward = tuple[dict[str, Path], dict[str, Path]]  # (images that must decode, files that must fail)


def test_to_rgb_scales_16_bit(tmp_path: Path) -> None:
    levels = np.array([[0, 257 * 100], [65535, 257 * 7]], dtype=np.uint16)
    Image.fromarray(levels).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        image.load()
        rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (2, 2, 3)
    assert rgb[..., 0].tolist() == [[0, 100], [255, 7]]


def test_to_rgb_composites_alpha_on_white() -> None:
    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 0))
    rgba.putpixel((1, 0), (10, 20, 30, 255))
    rgb = np.asarray(to_rgb(rgba))
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[0, 1].tolist() == [10, 20, 30]


def test_to_rgb_palette_with_transparency() -> None:
    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    assert np.asarray(to_rgb(palette)).tolist() == [[[255, 255, 255], [200, 0, 0]]]


def test_dataset_decodes_awkward_modes_and_reports_broken_files(awkward_images: Awkward) -> None:
    good, broken = awkward_images
    paths = list(good.values()) + list(broken.values())
    dataset = ImageDataset(list(range(len(paths))), paths, crops=1)
    items = [dataset[i] for i in range(len(dataset))]
    for (index, value), name in zip(items, list(good) + list(broken)):
        if name in good:
            assert isinstance(value, torch.Tensor), f"{name}: {value}"
            assert value.shape == (1, 3, 224, 224) and value.dtype == torch.uint8
        else:
            assert isinstance(value, str) and value, name
    reasons = dict(zip(broken, [value for _, value in items[len(good):]]))
    assert "FileNotFoundError" in reasons["missing"]
    assert "0 bytes" in reasons["empty"]
    assert "truncated" in reasons["truncated"]
    assert "UnidentifiedImageError" in reasons["text"]


def test_cmyk_converts_like_pil(awkward_images: Awkward) -> None:
    good, _ = awkward_images
    with Image.open(good["cmyk"]) as image:
        assert image.mode == "CMYK"
        image.load()
        assert np.array_equal(np.asarray(to_rgb(image)), np.asarray(image.convert("RGB")))


def test_collate_stacks_good_and_carries_failures() -> None:
    good = torch.zeros((10, 3, 224, 224), dtype=torch.uint8)
    batch = collate_crops([(3, good), (5, "OSError: bad"), (7, good + 1)], crops=10)
    assert batch.indices.tolist() == [3, 7] and batch.crops.shape == (2, 10, 3, 224, 224)
    assert batch.failed_indices == [5] and batch.errors == ["OSError: bad"] and len(batch) == 3
    assert torch.equal(batch.crops[1], good + 1)
    empty = collate_crops([(1, "x")], crops=10)
    assert empty.crops.shape == (0, 10, 3, 224, 224) and empty.indices.dtype == torch.int64


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_keeps_order(awkward_images: Awkward, workers: int) -> None:
    good, broken = awkward_images
    paths = list(good.values())[:3] + [broken["missing"]]
    loader = make_loader(ImageDataset([10, 11, 12, 13], paths, crops=1), batch_size=3, workers=workers,
                         pin_memory=False)
    batches = list(loader)
    assert [b.indices.tolist() for b in batches] == [[10, 11, 12], []]
    assert batches[1].failed_indices == [13]


def _in_daemon_thread(function, *args):
    """Run `function(*args)` in a daemon thread; return (finished within 5 s, result or exception)."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function(*args)
        except Exception as error:  # the test inspects it
            outcome["value"] = error

    thread = threading.Thread(target=target, daemon=True)  # a daemon: a hang cannot keep pytest alive
    thread.start()
    thread.join(timeout=5)
    return not thread.is_alive(), outcome.get("value")


def test_a_fifo_or_a_folder_fails_at_once_without_blocking(tmp_path: Path) -> None:
    fifo, folder = tmp_path / "pipe.jpg", tmp_path / "folder.jpg"
    os.mkfifo(fifo)
    folder.mkdir()
    dataset = ImageDataset([0, 1], [fifo, folder], crops=1)
    try:
        finished, items = _in_daemon_thread(lambda: [dataset[0], dataset[1]])
    finally:  # a reader stuck in open() (the defect) is released by a writer
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert finished, "reading a FIFO blocked"
    assert "a FIFO, not an image file" in items[0][1] and "a directory, not an image file" in items[1][1]


def hang_on_gray(monkeypatch: pytest.MonkeyPatch, *, seconds: float = 30, beyond_signals: bool = False) -> None:
    """Make decoding the gray test image hang for `seconds`; `beyond_signals`: as C code looping without returning,
    which the time limit's alarm cannot interrupt."""
    real_load = loader.load_crops

    def load_crops(path, crops, **options):
        if "gray" in str(path):
            if beyond_signals:
                signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
            time.sleep(seconds)
        return real_load(path, crops, **options)

    monkeypatch.setattr(loader, "load_crops", load_crops)


def test_a_decode_that_hangs_is_a_failure_after_the_time_limit(awkward_images: Awkward,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    good, _ = awkward_images
    hang_on_gray(monkeypatch)
    dataset = ImageDataset([0, 1], [good["gray"], good["rgb"]], crops=1, timeout_s=0.3)
    start = time.perf_counter()
    (_, hung), (_, decoded) = dataset[0], dataset[1]
    assert time.perf_counter() - start < 5
    assert hung.startswith("DecodeTimeout: not decoded within 0.3 s") and isinstance(decoded, torch.Tensor)
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL and signal.getitimer(signal.ITIMER_REAL)[0] == 0


@pytest.mark.slow
def test_a_hanging_worker_image_is_a_failure_and_the_run_goes_on(awkward_images: Awkward,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    good, _ = awkward_images
    hang_on_gray(monkeypatch)  # forked workers inherit the patch
    dataset = ImageDataset([0, 1, 2], [good["rgb"], good["gray"], good["cmyk"]], crops=1, timeout_s=0.5)
    batches = list(iter_batches(make_loader(dataset, batch_size=3, workers=1, pin_memory=False,
                                            stall_timeout=stall_timeout(0.5, 3))))
    assert batches[0].indices.tolist() == [0, 2] and batches[0].failed_indices == [1]
    assert "DecodeTimeout" in batches[0].errors[0]


@pytest.mark.slow
def test_a_worker_stuck_beyond_signals_stops_the_loader_and_is_ended(awkward_images: Awkward,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    good, _ = awkward_images
    hang_on_gray(monkeypatch, seconds=2.5, beyond_signals=True)
    dataset = ImageDataset([5, 6, 7], [good["rgb"], good["gray"], good["cmyk"]], crops=1, timeout_s=0.5)
    batches = []
    with pytest.raises(LoaderStalled, match=r"within 1.5 s: an image of rows 6..6 hangs .*gray.jpg"):
        for batch in iter_batches(make_loader(dataset, batch_size=1, workers=1, pin_memory=False,
                                              stall_timeout=stall_timeout(0.5, 1))):
            batches.append(batch)
    assert [b.indices.tolist() for b in batches] == [[5]]
    assert multiprocessing.active_children() == []  # the stuck worker was ended, not left behind
