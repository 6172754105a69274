"""Builders for the finetune tests: tiny PIL images, a Karpathy JSON, a real resnet18 store and a train checkpoint."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from extract.config import ExtractConfig
from extract.run import run_extract
from train.config import TrainConfig
from train.finetune.config import FinetuneConfig
from train.run import run_train

COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 40)}
SPLITS = ["train"] * 9 + ["val"] * 3  # 9 train images x 2 captions; each CNN pass costs, so few of them


@dataclass
class FinetuneSetup:
    """Paths of one generated dataset with its store and stage-two checkpoint."""

    dataset: Path
    image_root: Path
    store: Path
    checkpoint: Path


def write_images(root: Path) -> list[str]:
    """Twelve small RGB JPEGs (a coloured square on noise, various sizes); returns their names."""
    folder = root / "imgs"
    folder.mkdir(parents=True)
    generator = np.random.default_rng(0)
    names = []
    for index, split in enumerate(SPLITS):
        height, width = 48 + 4 * index, 64 - 2 * index
        pixels = generator.integers(0, 80, (height, width, 3), dtype=np.uint8)
        color = list(COLORS.values())[index % len(COLORS)]
        top, left = generator.integers(0, height // 2), generator.integers(0, width // 2)
        pixels[top:top + height // 2, left:left + width // 2] = color
        name = f"{split}{index:02d}.jpg"
        Image.fromarray(pixels).save(folder / name, quality=95)
        names.append(name)
    return names


def write_dataset(path: Path, names: list[str]) -> Path:
    """Karpathy JSON over `names`, two captions per image naming its colour."""
    color_names = list(COLORS)
    images = []
    for index, (name, split) in enumerate(zip(names, SPLITS)):
        color = color_names[index % len(color_names)]
        sentences = [{"raw": f"a {color} square", "tokens": ["a", color, "square"]},
                     {"raw": f"the square is {color}", "tokens": ["the", "square", "is", color]}]
        images.append({"filepath": "imgs", "filename": name, "split": split, "sentences": sentences})
    path.write_text(json.dumps({"images": images, "dataset": "finetune-test"}))
    return path


def extract_store(dataset: Path, image_root: Path, out: Path, *, weights: str = "none", seed: int = 0,
                  crops: int = 1) -> Path:
    """A real resnet18 feature store of the dataset (CPU, no workers)."""
    run_extract(ExtractConfig(dataset=str(dataset), image_root=str(image_root), out=str(out), backbone="resnet18",
                              weights=weights, seed=seed, crops=crops, workers=0, device="cpu", batch_size=12))
    return out


def build_setup(folder: Path, *, crops: int = 1, feature_mode: str = "1c") -> FinetuneSetup:
    """Images, JSON, store and a stage-two checkpoint (2 steps, embed 32) under `folder`."""
    image_root = folder / "root"
    dataset = write_dataset(folder / "dataset.json", write_images(image_root))
    store = extract_store(dataset, image_root, folder / "store.h5", crops=crops)
    train_cfg = TrainConfig(store=str(store), out_dir=str(folder / "train"), embed_dim=32, word_dim=16,
                            vocab_min_count=1, batch_size=4, epochs=1, max_steps=2, lr=1e-3, device="cpu",
                            feature_mode=feature_mode, image_pool="adaptive" if feature_mode == "10c-set" else "mean")
    summary = run_train(train_cfg)
    return FinetuneSetup(dataset=dataset, image_root=image_root, store=store, checkpoint=Path(summary["last"]))


def finetune_config(setup: FinetuneSetup, out_dir: Path, **overrides: object) -> FinetuneConfig:
    """A fast finetune config: batch 2, one epoch, last resnet18 stage unfrozen, no workers."""
    options = dict(checkpoint=str(setup.checkpoint), out_dir=str(out_dir), batch_size=2, epochs=1, unfreeze="1",
                   lr=1e-3, cnn_lr=1e-3, workers=0, device="cpu", log_every=1)
    options.update(overrides)
    return FinetuneConfig(**options)


@pytest.fixture(autouse=True)
def single_thread():
    """One torch thread per test (restored after): the CPU is shared, and 2 threads were ~5x slower under load."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
