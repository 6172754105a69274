"""Benchmark: does the training loop's input keep the step busy? Real loop / step alone, side by side.

    python bench/train_input.py                        # reference model, batch 128, 2048-d 1C store
    python bench/train_input.py --mode finetune        # the demo's resnet18 fine-tuning on generated JPEGs

train: a synthetic store (random 2048-d float32 1C features of --images images, 5 captions of 12 words each).
  "loop" = CaptionBatches.epoch_batches (preadv row reads, token padding, collate; the prefetch thread or
  --workers processes) + Trainer.train_step; "step" = Trainer.train_step alone on the same batches built
  beforehand. Goal: loop / step >= 0.97.
finetune: generated JPEGs (demo-sized scenes) and a random-init resnet18 store; "loop" =
  ImageCaptionBatches.epoch_batches (decode + random crop per caption, in --workers processes) + train_step
  with the CNN's last stage unfrozen; "step" = train_step alone on the same batches of crops built
  beforehand. Goal: loop / step >= 0.9.
The two sides alternate, --rounds times (loop first, then step first, ...), in this one process; the ratio is
the median of the rounds' ratios. Runs on CUDA when present (--device auto), printing steps/s too.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.machine import print_machine  # noqa: E402
from common.choices import DEVICES  # noqa: E402
from common.device import resolve_device  # noqa: E402
from features.datasets import DatasetIndex  # noqa: E402
from features.reader import FeatureStore  # noqa: E402
from features.store import FeatureStoreWriter  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.data import CaptionBatches  # noqa: E402
from train.losses import build_loss  # noqa: E402
from train.model import build_model  # noqa: E402
from train.text import build_vocabulary  # noqa: E402
from train.trainer import Trainer  # noqa: E402

STORE_ATTRS = {
    "backbone": "synthetic", "layer": "none", "weights_name": None, "weights_sha256": None, "weights_seed": None, "decode": "cpu",
    "resize": 256, "crop": 224, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
    "torch_version": "bench", "torchvision_version": "bench", "command": "bench/train_input.py",
    "image_root": "/nowhere", "dataset_path": "/nowhere/dataset.json",
}


def synthetic_store(path: Path, *, images: int, feature_dim: int) -> Path:
    rng = np.random.default_rng(0)
    words = rng.integers(0, 5000, (images * 5, 12))
    dataset = DatasetIndex(image_paths=[f"img/{row:06d}.jpg" for row in range(images)],
                           image_splits=["train"] * (images - 64) + ["val"] * 64,
                           caption_texts=[" ".join(f"w{word}" for word in row) for row in words.tolist()],
                           caption_tokens=None, caption_image_index=np.repeat(np.arange(images), 5))
    with FeatureStoreWriter.create(path, dataset, attrs=STORE_ATTRS, feature_dim=feature_dim, crops=1,
                                   dtype="float32") as writer:
        for begin in range(0, images, 1024):
            rows = np.arange(begin, min(begin + 1024, images))
            writer.write_rows(rows, rng.standard_normal((len(rows), feature_dim), dtype=np.float32), None)
    return path


def time_steps(trainer: Trainer, batches) -> float:
    """Seconds per step over `batches` (an iterator: its building time counts)."""
    start, count = time.perf_counter(), 0
    for batch in batches:
        trainer.train_step(batch)
        count += 1
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / count


def compare(trainer: Trainer, source, *, steps: int, rounds: int, workers: int) -> list[tuple[float, float]]:
    """[(loop s/step, step s/step)] per round, sides alternating."""
    pin = trainer.device.type == "cuda"
    built = list(itertools.islice(source.epoch_batches(0, workers=0), steps))
    trainer.train_step(built[0])  # warm-up
    results = []
    for number in range(rounds):
        loop = lambda: time_steps(trainer, itertools.islice(  # noqa: E731
            source.epoch_batches(0, workers=workers, pin_memory=pin), steps))
        alone = lambda: time_steps(trainer, iter(built))  # noqa: E731
        if number % 2 == 0:
            looped, alone_s = loop(), alone()
        else:
            alone_s, looped = alone(), loop()
        results.append((looped, alone_s))
    return results


def train_side(args: argparse.Namespace, folder: Path, device: torch.device):
    store = FeatureStore(synthetic_store(folder / "store.h5", images=args.images, feature_dim=args.feature_dim))
    config = TrainConfig(store=str(store.path), out_dir=str(folder / "run"), embed_dim=args.embed_dim,
                         word_dim=args.word_dim, batch_size=args.batch_size, device=device.type)
    vocab = build_vocabulary(store, splits=["train"], min_count=1)
    torch.manual_seed(0)
    model = build_model(config, vocab_size=len(vocab), feature_dim=store.feature_dim)
    source = CaptionBatches(store, splits=["train"], vocab=vocab, feature_mode="1c", batch_size=args.batch_size,
                            seed=0)
    trainer = Trainer(model, build_loss(config), config=config, batches=source, validate=lambda _: {},
                      out_dir=folder / "run", vocab=vocab, model_spec={}, device=device)
    return trainer, source, store


def finetune_side(args: argparse.Namespace, folder: Path, device: torch.device):
    from demo.synthetic import generate_demo_dataset
    from extract.config import ExtractConfig
    from extract.run import run_extract
    from train.finetune.config import FinetuneConfig
    from train.finetune.data import ImageCaptionBatches
    from train.finetune.run import init_model, param_groups, resolve_config
    from train.run import run_train

    dataset = generate_demo_dataset(folder / "data", num_train=args.images // 10, num_val=16, num_test=0,
                                    image_size=256, seed=0)
    run_extract(ExtractConfig(dataset=str(dataset), image_root=str(dataset.parent), out=str(folder / "s.h5"),
                              backbone="resnet18", weights="none", crops=1, workers=0, device="cpu"))
    summary = run_train(TrainConfig(store=str(folder / "s.h5"), out_dir=str(folder / "train"), embed_dim=256,
                                    word_dim=128, batch_size=64, epochs=1, max_steps=1, device="cpu"))
    from train.checkpoint import load_checkpoint

    init = load_checkpoint(summary["last"])
    cfg = resolve_config(FinetuneConfig(checkpoint=summary["last"], out_dir=str(folder / "ft"), unfreeze="1",
                                        batch_size=args.finetune_batch_size, device=device.type), init["config"])
    store = FeatureStore(cfg.store)
    model, cnn, vocab, spec = init_model(cfg, init, store=store)
    loss = build_loss(cfg)
    source = ImageCaptionBatches(store, splits=["train"], vocab=vocab, batch_size=cfg.batch_size, seed=0,
                                 image_root=dataset.parent, rc="paper")
    trainer = Trainer(model, loss, config=cfg, batches=source, validate=lambda _: {}, out_dir=folder / "ft",
                      vocab=vocab, model_spec=spec, kind="finetune", param_groups=param_groups(model, loss, cnn, cfg),
                      device=device)
    return trainer, source, store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("train", "finetune"), default="train")
    parser.add_argument("--images", type=int, default=20000, help="store images (finetune: 10x the JPEGs)")
    parser.add_argument("--feature-dim", type=int, default=2048)
    parser.add_argument("--embed-dim", type=int, default=1024)
    parser.add_argument("--word-dim", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--finetune-batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=24,
                        help="steps per side and round (the loop's include the epoch's start)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers of the loop (0: the prefetch "
                                                                   "thread; default: the stage's own default)")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        side = train_side if args.mode == "train" else finetune_side
        trainer, source, store = side(args, Path(folder), device)
        workers = trainer.config.workers if args.workers is None else args.workers
        load_before = os.getloadavg()[0]
        results = compare(trainer, source, steps=args.steps, rounds=args.rounds, workers=workers)
        store.close()
    ratios = [alone / looped for looped, alone in results]
    print_machine()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch "
          f"threads, device {device}, torch {torch.__version__}; mode {args.mode}, workers {workers}, load "
          f"{load_before:.2f} -> {os.getloadavg()[0]:.2f}")
    for number, (looped, alone) in enumerate(results):
        print(f"round {number}: loop {looped:.3f} s/step ({1 / looped:.2f} steps/s), step alone {alone:.3f} s/step "
              f"({1 / alone:.2f} steps/s), loop / step {alone / looped:.3f}")
    print(f"median loop / step alone: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
