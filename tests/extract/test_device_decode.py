"""--decode gpu's logic, run on the CPU: device decode + resize + crops against the CPU path, fallbacks per image."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from extract.config import ExtractConfig
from extract.device_decode import CollateBytes, JpegBytesDataset, crops_on_device, decode_batch
from extract.loader import load_crops
from extract.run import run_extract


def photo_like(size: tuple[int, int], seed: int) -> np.ndarray:
    """Smooth gradients plus noise, like a photo (pure noise would magnify the resize's rounding)."""
    rng = np.random.default_rng(seed)
    height, width = size[1], size[0]
    waves = np.sin(np.linspace(0, 9 + seed, width))[None, :, None] * np.cos(np.linspace(0, 7, height))[:, None, None]
    return (waves * 110 + 128 + rng.normal(0, 12, (height, width, 3))).clip(0, 255).astype(np.uint8)


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    """Three JPEGs of different sizes, a PNG, and a truncated JPEG."""
    paths = []
    for number, size in enumerate([(640, 480), (300, 500), (256, 256)]):
        path = tmp_path / f"photo{number}.jpg"
        Image.fromarray(photo_like(size, number)).save(path, quality=92)
        paths.append(path)
    png = tmp_path / "drawing.png"
    Image.fromarray(photo_like((200, 150), 5)).save(png)
    broken = tmp_path / "broken.jpg"
    buffer = io.BytesIO()
    Image.fromarray(photo_like((320, 240), 7)).save(buffer, format="JPEG")
    broken.write_bytes(buffer.getvalue()[:600])
    return paths + [png, broken]


@pytest.mark.parametrize("crops", [1, 10])
def test_device_crops_are_the_cpu_crops_within_one_level(images: list[Path], crops: int):
    for path in images[:3]:
        expected = load_crops(path, crops)  # PIL decode, PIL resize, numpy crops
        image = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1).copy())
        found = crops_on_device(image, crops)
        difference = (found.int() - expected.int()).abs()
        assert found.shape == expected.shape == (crops, 3, 224, 224)
        assert difference.max() <= 1 and difference.float().mean() < 0.3, (path.name, difference.float().mean())


def test_a_mixed_batch_decodes_jpegs_on_the_device_and_the_rest_on_the_cpu(images: list[Path]):
    dataset = JpegBytesDataset(list(range(len(images))), images, crops=10)
    items = [dataset[position] for position in range(len(images))]
    assert [value.dim() if isinstance(value, torch.Tensor) else "failed" for _, value in items] == [1, 1, 1, 4, 1]
    batch = CollateBytes(10)(items)
    assert batch.jpeg_indices == [0, 1, 2, 4] and batch.decoded.indices.tolist() == [3] and len(batch) == 5
    decoded = decode_batch(batch, device=torch.device("cpu"), crops=10)
    assert sorted(decoded.indices.tolist()) == [0, 1, 2, 3] and decoded.failed_indices == [4]  # truncated: alone
    assert decoded.errors[0].startswith("RuntimeError")
    for row, crops in zip(decoded.indices.tolist(), decoded.crops):
        assert (crops.int() - load_crops(images[row], 10).int()).abs().max() <= 1, row


def test_decode_gpu_without_a_gpu_is_refused(tmp_path: Path, images: list[Path]):
    import json

    (tmp_path / "d.json").write_text(json.dumps({"images": [{"filename": "photo0.jpg", "split": "train",
                                                             "sentences": [{"raw": "a photo"}]}]}))
    config = ExtractConfig(dataset=str(tmp_path / "d.json"), image_root=str(tmp_path), out=str(tmp_path / "s.h5"),
                           backbone="resnet18", weights="none", decode="gpu", device="cpu")
    with pytest.raises(ValueError, match="--decode gpu decodes on the GPU, but the device is cpu"):
        run_extract(config)
    assert not (tmp_path / "s.h5").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_decode_features_match_the_cpu_path(tmp_path: Path, images: list[Path]):
    import json

    import h5py

    names = [path.name for path in images[:3]]
    (tmp_path / "d.json").write_text(json.dumps({"images": [{"filename": name, "split": "train",
                                                             "sentences": [{"raw": "a photo"}]} for name in names]}))
    stores = {}
    for decode in ("cpu", "gpu"):
        run_extract(ExtractConfig(dataset=str(tmp_path / "d.json"), image_root=str(tmp_path),
                                  out=str(tmp_path / f"{decode}.h5"), backbone="resnet18", weights="none", crops=10,
                                  decode=decode, device="cuda", workers=0))
        with h5py.File(tmp_path / f"{decode}.h5") as h5file:
            stores[decode] = h5file["features/10c"][()]
    assert np.abs(stores["gpu"] - stores["cpu"]).max() < 0.05 * np.abs(stores["cpu"]).max()
