"""Benchmark: joining the shard stores of a distributed extraction, by merging (copy) vs an HDF5 virtual dataset.

    python bench/shard_merge.py                  # 2 shards of a ~2 GB 10C store (float32, 2048-d)

Writes N shard stores (random features; each allocates only its rows) into --dir, then measures, side by side:
  merge:   features.merge.merge_stores -> one contiguous store; time to build, then batch reads of 128 random
           rows with FeatureStore.feature_rows (preadv at the dataset's file offset, what training uses);
  virtual: an HDF5 file whose features/10c is a virtual dataset mapping each shard's rows; time to build, then the
           same batch reads through h5py (sorted fancy indexing): the only way to read it, since a virtual dataset
           has no file offset for preadv or a memmap.
Reads are alternated, --rounds times, after one untimed pass; the page cache is warm for both (the same bytes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.machine import print_machine  # noqa: E402
from features.datasets import DatasetIndex  # noqa: E402
from features.merge import merge_stores  # noqa: E402
from features.reader import FeatureStore  # noqa: E402
from features.store import FeatureStoreWriter  # noqa: E402

STORE_ATTRS = {
    "backbone": "synthetic", "layer": "none", "weights_name": None, "weights_sha256": None, "weights_seed": None,
    "decode": "cpu", "resize": 256, "crop": 224, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
    "torch_version": "bench", "torchvision_version": "bench", "command": "bench/shard_merge.py",
    "image_root": "/nowhere", "dataset_path": "/nowhere/dataset.json",
}


def write_shards(folder: Path, *, images: int, shards: int, feature_dim: int) -> list[Path]:
    dataset = DatasetIndex(image_paths=[f"{row}.jpg" for row in range(images)], image_splits=["train"] * images,
                           caption_texts=["a caption"] * images, caption_tokens=None,
                           caption_image_index=np.arange(images))
    rng, paths = np.random.default_rng(0), []
    for shard in range(shards):
        rows = np.arange(shard * images // shards, (shard + 1) * images // shards)
        path = folder / f"shard{shard}.h5"
        with FeatureStoreWriter.create(path, dataset, attrs={**STORE_ATTRS, "shard": f"{shard}/{shards}"},
                                       feature_dim=feature_dim, crops=10, dtype="float32", rows=rows) as writer:
            for begin in range(0, len(rows), 256):
                block = rows[begin:begin + 256]
                feats = rng.standard_normal((len(block), 10, feature_dim), dtype=np.float32)
                writer.write_rows(block, feats[:, 4], feats)
        paths.append(path)
    return paths


def virtual_store(path: Path, shards: list[Path], *, images: int, feature_dim: int) -> None:
    """features/1c and features/10c of `path` map each shard's rows of its own datasets."""
    with h5py.File(path, "w") as h5file:
        for kind, shape in (("1c", (images, feature_dim)), ("10c", (images, 10, feature_dim))):
            layout = h5py.VirtualLayout(shape=shape, dtype="float32")
            for number, shard in enumerate(shards):
                begin, end = number * images // len(shards), (number + 1) * images // len(shards)
                layout[begin:end] = h5py.VirtualSource(str(shard), f"features/{kind}", shape=shape)[begin:end]
            h5file.create_virtual_dataset(f"features/{kind}", layout)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gigabytes", type=float, default=2.0, help="size of the features/10c of the store")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--feature-dim", type=int, default=2048)
    parser.add_argument("--batches", type=int, default=200, help="batch reads per side and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="", help="folder for the stores (default: a temporary one, removed)")
    args = parser.parse_args()
    print_machine()
    images = int(args.gigabytes * 1e9 / (10 * args.feature_dim * 4))
    folder = Path(args.dir or tempfile.mkdtemp(prefix="shard-merge-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        shards = write_shards(folder, images=images, shards=args.shards, feature_dim=args.feature_dim)
        merge_seconds = timed(lambda: merge_stores(shards, folder / "merged.h5", overwrite=True))
        virtual_seconds = timed(lambda: virtual_store(folder / "virtual.h5", shards, images=images,
                                                      feature_dim=args.feature_dim))
        rng = np.random.default_rng(1)
        batches = [np.unique(rng.integers(0, images, 128)) for _ in range(args.batches)]
        seconds = {}
        with FeatureStore(folder / "merged.h5") as store, h5py.File(folder / "virtual.h5", "r") as virtual:
            for kind in ("1c", "10c"):
                rows_reader, virtual_rows = store.feature_rows(kind), virtual[f"features/{kind}"]
                sides = {f"{kind} merged (preadv)": lambda r=rows_reader: [r[batch] for batch in batches],
                         f"{kind} virtual (h5py)": lambda r=virtual_rows: [r[batch] for batch in batches]}
                assert np.array_equal(rows_reader[batches[0]], virtual_rows[batches[0]])
                for side in sides.values():
                    side()  # warm the page cache for both
                seconds.update({name: [] for name in sides})
                for _ in range(args.rounds):
                    for name, side in sides.items():
                        seconds[name].append(timed(side))
        print(f"{images} images x 10 crops x {args.feature_dim} float32 = {images * 10 * args.feature_dim * 4 / 1e9:.2f} "
              f"GB in {args.shards} shards; load {os.getloadavg()[0]:.2f}")
        print(f"build: merge {merge_seconds:.1f} s ({images * 10 * args.feature_dim * 4 / 1e6 / merge_seconds:.0f} "
              f"MB/s), virtual dataset {virtual_seconds:.3f} s")
        for name, values in seconds.items():
            per_batch = statistics.median(values) / len(batches) * 1e3
            print(f"reads of 128 random rows, {name}: {per_batch:.2f} ms per batch (rounds "
                  f"{' '.join(f'{value:.2f}' for value in values)} s)")
        for kind in ("1c", "10c"):
            ratio = (statistics.median(seconds[f"{kind} virtual (h5py)"])
                     / statistics.median(seconds[f"{kind} merged (preadv)"]))
            print(f"{kind}: virtual / merged read time {ratio:.2f}x")
    finally:
        if not args.dir:
            shutil.rmtree(folder)


if __name__ == "__main__":
    main()
