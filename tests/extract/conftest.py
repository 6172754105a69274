"""Fixtures for extract tests: tiny generated images in every awkward PIL mode, and a Karpathy JSON over them."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_rgb_jpeg(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> Path:
    """Write a small random-colour RGB JPEG (width, height = size)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def write_karpathy_json(path: Path, image_names: list[str], splits: list[str] | None = None) -> Path:
    """Karpathy-style JSON: one image per name (filepath "imgs"), two captions each."""
    splits = splits or ["train"] * len(image_names)
    images = [{"filepath": "imgs", "filename": name, "split": split,
               "sentences": [{"raw": f"caption {k} of {name}", "tokens": ["caption", str(k)]} for k in range(2)]}
              for name, split in zip(image_names, splits)]
    path.write_text(json.dumps({"images": images, "dataset": "test"}))
    return path


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> tuple[Path, Path]:
    """(dataset JSON, image root) with 4 small RGB JPEGs of different sizes."""
    root = tmp_path / "root"
    (root / "imgs").mkdir(parents=True)
    names = [f"im{i}.jpg" for i in range(4)]
    for i, name in enumerate(names):
        write_rgb_jpeg(root / "imgs" / name, seed=i, size=(40 + 3 * i, 30 + 2 * i))
    return write_karpathy_json(tmp_path / "dataset.json", names), root


def write_awkward_images(folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Write images that must decode (by mode) and files that must fail; return ({name: path}, {name: path})."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    good = {
        "rgb": (rgb, "rgb.jpg"),
        "gray": (rgb.convert("L"), "gray.jpg"),
        "cmyk": (rgb.convert("CMYK"), "cmyk.jpg"),
        "palette": (rgb.convert("P"), "palette.png"),
        "rgba": (rgb.convert("RGBA"), "rgba.png"),
        "la": (rgb.convert("LA"), "la.png"),
        "bilevel": (rgb.convert("1"), "bilevel.png"),
        "sixteen_bit": (Image.fromarray(rng.integers(0, 65536, (30, 40), dtype=np.uint16)), "deep16.png"),
    }
    good_paths = {}
    for name, (image, file_name) in good.items():
        image.save(folder / file_name)
        good_paths[name] = folder / file_name
    rgb.save(folder / "full.jpg", quality=90)
    data = (folder / "full.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    broken = {"missing": folder / "missing.jpg", "empty": folder / "empty.jpg",
              "truncated": folder / "truncated.jpg", "text": folder / "text.jpg"}
    return good_paths, broken


@pytest.fixture
def awkward_images(tmp_path: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """({name: path} of images that must decode, {name: path} of files that must fail) in tmp_path/awkward."""
    folder = tmp_path / "awkward"
    folder.mkdir()
    return write_awkward_images(folder)


@pytest.fixture
def karpathy_json_writer() -> Callable[..., Path]:
    """The function write_karpathy_json(path, image_names, splits=None), for tests that build their own JSON."""
    return write_karpathy_json
