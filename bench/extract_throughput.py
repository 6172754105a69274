"""Benchmark: images/s of run_extract (whole stage) vs the bare backbone forward on pre-made crops, per --amp.

    python -m bench.extract_throughput --backbones resnet18 --images 128 --batch-size 8   (from the repo root)
    python -m bench.extract_throughput --backbones resnet152 --images 16 --batch-size 4
    python -m bench.extract_throughput --backbones resnet152 --images 8 --batch-size 4 --amps none,bf16

Random-init weights (speed does not depend on the values). Both measurements run in this process on
the same generated JPEGs (500x375, COCO-like size) with the same crops, batch size, device and
channels_last. The bare forward gets normalised float crops made before timing, so the ratio charges
run_extract with all the rest: decode, resize, crop, normalise, copies and HDF5 writes ("ratio"), plus
model build and store creation ("ratio wall"). The bare forward is timed before and after the
extraction; a gap between the two shows that the machine's load changed during the run. Goal: ratio >= 0.95 (resnet18).

With several --amps (e.g. none,bf16 on a CPU with native bf16) each backbone is measured under each autocast
in turn (bare forward and whole stage under the same amp), then the whole stage's speed-up over the first amp
and the relative error of the stored features, ||f_amp - f_first|| / ||f_first|| over all crops, are printed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.choices import DEVICES
from bench.machine import print_machine
from common.device import autocast_context, resolve_device
from extract.backbones import build_backbone
from extract.config import ExtractConfig
from extract.loader import load_crops
from extract.run import run_extract
from extract.transforms import normalize
from features.reader import FeatureStore


def write_images(folder: Path, count: int, size: tuple[int, int] = (500, 375)) -> Path:
    """Write `count` smooth random JPEGs and a Karpathy JSON over them; return the JSON path."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for number in range(count):
        coarse = rng.integers(0, 256, (size[1] // 25, size[0] // 25, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)  # photo-like, compresses like one
        image.save(folder / "images" / f"{number:05d}.jpg", quality=90)
        entries.append({"filepath": "images", "filename": f"{number:05d}.jpg", "split": "train",
                        "sentences": [{"raw": f"image {number}"}]})
    dataset = folder / "dataset.json"
    dataset.write_text(json.dumps({"images": entries}))
    return dataset


def bare_forward_images_per_s(backbone: torch.nn.Module, crops: torch.Tensor, *, batch_size: int,
                              device: torch.device, channels_last: bool, amp: str = "none") -> float:
    """Images/s of the CNN alone on pre-made, normalised crops (uint8 [N, C, 3, 224, 224] in), under `amp`."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    batches = [normalize(crops[begin:begin + batch_size].flatten(0, 1)).to(device, memory_format=memory_format)
               for begin in range(0, len(crops), batch_size)]  # [B*C, 3, 224, 224] each, made before timing
    start = time.perf_counter()
    with torch.inference_mode(), autocast_context(device, amp):
        for images in batches:
            backbone(images).float().cpu()
    return len(crops) / (time.perf_counter() - start)


def bench_backbone(name: str, dataset: Path, image_root: Path, out_dir: Path, args: argparse.Namespace, *,
                   amp: str = "none") -> dict:
    """Measure one backbone under `amp`: bare forward, whole run_extract, bare forward again."""
    device = resolve_device(args.device)
    paths = sorted((image_root / "images").glob("*.jpg"))
    crops = torch.stack([load_crops(path, args.crops) for path in paths])  # [N, C, 3, 224, 224] uint8
    backbone = build_backbone(name, None, seed=0)
    backbone = backbone.to(device, memory_format=torch.channels_last if args.channels_last else torch.preserve_format)
    options = dict(batch_size=args.batch_size, device=device, channels_last=args.channels_last, amp=amp)
    bare_forward_images_per_s(backbone, crops[:args.batch_size], **options)  # warm-up (oneDNN kernels, caches)
    bare_before = bare_forward_images_per_s(backbone, crops, **options)
    store = out_dir / f"{name}-{amp}.h5"
    config = ExtractConfig(dataset=str(dataset), image_root=str(image_root), out=str(store),
                           backbone=name, weights="none", crops=args.crops, device=args.device,
                           batch_size=args.batch_size, workers=args.workers, overwrite=True,
                           channels_last=args.channels_last, amp=amp)
    wall_start = time.perf_counter()
    summary = run_extract(config)
    wall = time.perf_counter() - wall_start
    bare_after = bare_forward_images_per_s(backbone, crops, **options)
    bare = (bare_before + bare_after) / 2
    return {"backbone": name, "amp": amp, "store": store, "images": len(paths), "bare_before": bare_before,
            "bare_after": bare_after,
            "extract_loop": summary["images_per_s"], "extract_wall": len(paths) / wall,
            "ratio_loop": summary["images_per_s"] / bare, "ratio_wall": len(paths) / wall / bare}


def relative_error(store: Path, reference: Path, crops: int) -> float:
    """||f - f_ref|| / ||f_ref|| over every stored feature of the two stores (10c with 10 crops, else 1c)."""
    kind = "10c" if crops == 10 else "1c"
    with FeatureStore(store) as first, FeatureStore(reference) as second:
        feats, ref = (np.asarray(item.features(kind), dtype=np.float64) for item in (first, second))
    return float(np.linalg.norm(feats - ref) / np.linalg.norm(ref))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="number of generated 500x375 JPEGs")
    parser.add_argument("--backbones", default="resnet18,resnet152", help="comma-separated backbone names")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch (x crops per CNN batch)")
    parser.add_argument("--crops", type=int, default=10, choices=(1, 10))
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of run_extract")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--amps", default="none", help="comma-separated --amp values measured in turn (none,bf16)")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print_machine()
    amps = [amp.strip() for amp in args.amps.split(",")]
    print(f"run: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch threads "
          f"{torch.get_num_threads()}, load avg {os.getloadavg()[0]:.1f}, torch {torch.__version__}, "
          f"device {resolve_device(args.device)}, crops {args.crops}, batch {args.batch_size}, "
          f"workers {args.workers}, channels_last {args.channels_last}, amps {', '.join(amps)}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        dataset = write_images(folder, args.images)
        rows = [bench_backbone(name.strip(), dataset, folder, folder, args, amp=amp)
                for name in args.backbones.split(",") for amp in amps]
        for row in rows:
            first = next(other for other in rows if other["backbone"] == row["backbone"])
            row["speedup"] = row["extract_loop"] / first["extract_loop"]
            row["error"] = relative_error(row["store"], first["store"], args.crops)
    print(f"load avg after: {os.getloadavg()[0]:.1f}")
    print(f"{'backbone':<10} {'amp':<5} {'images':>6} {'bare img/s':>16} {'extract img/s':>14} {'wall img/s':>10} "
          f"{'ratio':>6} {'ratio wall':>10} {'speed-up':>8} {'rel err':>8}")
    for row in rows:
        print(f"{row['backbone']:<10} {row['amp']:<5} {row['images']:>6} {row['bare_before']:>7.2f} /"
              f"{row['bare_after']:>7.2f} {row['extract_loop']:>14.2f} {row['extract_wall']:>10.2f} "
              f"{row['ratio_loop']:>6.2f} {row['ratio_wall']:>10.2f} {row['speedup']:>7.2f}x {row['error']:>8.1e}")


if __name__ == "__main__":
    main()
