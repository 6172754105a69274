"""Benchmark (b): peak RSS of one training epoch on a ~2 GB 10C store vs a ~200 MB one (goal: ratio <= 1.2).

    python bench/train_memory.py                        # 2000 MB vs 200 MB of features/10c, then delete both
    python bench/train_memory.py --big-mb 1000 --small-mb 100 --keep --readers shipped
    python bench/train_memory.py --regions 36 --image-pool gpo --region-drop 0.2   # region stores [N, 36, D]

Two synthetic stores (random float32 10C features, 5 captions of 12 words per image, `--val-images` of
them in the val split) are written with FeatureStoreWriter under --dir. Each measurement is one fresh
child process (`--child`) running the real `run_train` for one epoch (feature mode 10c, so every train
image row is read, ~5 times; validation reads the val rows): same model, same batch size, same
vocabulary size, only the number of images (and so of captions and steps) differs. The child checks that
it read every image row and reports, from /proc/self/status: VmHWM (the kernel's exact peak RSS), and the
peaks of RssAnon (anonymous memory: Python objects, arrays, torch) and RssFile (file-backed pages mapped
in the process, i.e. the memmap's page-cache pages) sampled every 10 ms by a thread.

`--readers` chooses how the child reads feature rows: "shipped" is the code as it is (FeatureStore.feature_rows:
a FeatureRows that os.preadv-s each batch's rows into a fresh array), only wrapped to count the rows read;
"memmap" is the previous behaviour, for reference: feature_rows patched (in the child only) to hand out the
np.memmap of FeatureStore.features, whose touched pages stay mapped and count in RSS.

`--regions K` makes both stores region stores (features/regions [N, K, D], the size options then count those) and
trains the children in feature mode regions, pooled by --image-pool, with --region-drop.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.machine import print_machine  # noqa: E402
from features.datasets import DatasetIndex  # noqa: E402
from features.store import FeatureStoreWriter  # noqa: E402

CROPS = 10
WORDS_PER_CAPTION = 12
STORE_ATTRS = {
    "backbone": "synthetic", "layer": "none", "weights_name": None, "weights_sha256": None, "weights_seed": None, "decode": "cpu",
    "resize": 256, "crop": 224, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
    "torch_version": "bench", "torchvision_version": "bench", "command": "bench/train_memory.py",
    "image_root": "/nowhere", "dataset_path": "/nowhere/dataset.json",
}
READERS = ("shipped", "memmap")
MIB = 2 ** 20


# -- stores ------------------------------------------------------------------------------------------
def images_for_megabytes(megabytes: float, feature_dim: int, vectors: int = CROPS) -> int:
    """Number of images whose features/10c (or regions, `vectors` per image) float32 array is `megabytes`
    (1e6 bytes) large."""
    return max(2, round(megabytes * 1e6 / (vectors * feature_dim * 4)))


def synthetic_dataset(num_images: int, *, val_images: int, captions_per_image: int, vocab_words: int,
                      seed: int) -> DatasetIndex:
    """Images img/000000.jpg.. (the last `val_images` in val), captions of random words w0..w{vocab_words-1}."""
    rng = np.random.default_rng(seed)
    num_captions = num_images * captions_per_image
    word_ids = rng.integers(0, vocab_words, (num_captions, WORDS_PER_CAPTION))
    return DatasetIndex(
        image_paths=[f"img/{row:06d}.jpg" for row in range(num_images)],
        image_splits=["train"] * (num_images - val_images) + ["val"] * val_images,
        caption_texts=[" ".join(f"w{word}" for word in row) for row in word_ids.tolist()],
        caption_tokens=None,
        caption_image_index=np.repeat(np.arange(num_images, dtype=np.int64), captions_per_image))


def write_store(path: Path, num_images: int, *, feature_dim: int, args: argparse.Namespace) -> None:
    """A complete float32 10C (or, with --regions K, region) store of random features, in chunks of 512 rows."""
    dataset = synthetic_dataset(num_images, val_images=args.val_images, captions_per_image=args.captions_per_image,
                                vocab_words=args.vocab_words, seed=0)
    rng = np.random.default_rng(1)
    with FeatureStoreWriter.create(path, dataset, attrs=STORE_ATTRS, feature_dim=feature_dim,
                                   crops=0 if args.regions else CROPS, regions=args.regions,
                                   dtype="float32") as writer:
        for begin in range(0, num_images, 512):
            rows = np.arange(begin, min(begin + 512, num_images))
            feats = rng.standard_normal((len(rows), args.regions or CROPS, feature_dim), dtype=np.float32)
            if args.regions:
                writer.write_rows(rows, None, None, regions=feats)
            else:
                writer.write_rows(rows, feats[:, 4], feats)


def store_is_complete(path: Path, num_images: int, feature_dim: int, regions: int) -> bool:
    from features.reader import FeatureStore

    try:
        with FeatureStore(path) as store:
            return (store.num_images == num_images and store.feature_dim == feature_dim and store.regions == regions
                    and store.crops == (0 if regions else CROPS) and store.summary()["done"] == num_images)
    except (OSError, ValueError):
        return False


# -- child: one epoch, measured ------------------------------------------------------------------------
def proc_status_kib() -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon, RssFile, RssShmem of this process in KiB."""
    values = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                values[key] = int(rest.split()[0])
    return values


class PeakSampler(threading.Thread):
    """Samples RssAnon and RssFile every `interval` s; their peaks (VmHWM is the exact total peak)."""

    def __init__(self, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.interval, self.stopped = interval, threading.Event()
        self.peak = {"RssAnon": 0, "RssFile": 0}

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            status = proc_status_kib()
            for key in self.peak:
                self.peak[key] = max(self.peak[key], status[key])


class CountingRows:
    """Delegates row reads to `reader` and marks the rows read in `read` (shared by all readers of a store)."""

    def __init__(self, reader: object, read: np.ndarray) -> None:
        self.reader, self.read, self.shape = reader, read, reader.shape

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        self.read[rows] = True
        return self.reader[rows]


def install_reader(name: str) -> list[np.ndarray]:
    """Patch FeatureStore.feature_rows (in this child only) to count rows; "memmap" also swaps in the memmap.

    Returns the row masks, one per (store, kind) in the order first asked for; the first is training's.
    """
    from features.reader import FeatureStore

    original, masks = FeatureStore.feature_rows, []

    def feature_rows(store: FeatureStore, kind: str) -> CountingRows:
        reader = original(store, kind) if name == "shipped" else store.features(kind)
        assert name == "shipped" or isinstance(reader, np.memmap), "the benchmark stores are contiguous"
        read = store.__dict__.setdefault("_bench_read", {})
        if kind not in read:
            read[kind] = np.zeros(len(reader), dtype=bool)
            masks.append(read[kind])
        return CountingRows(reader, read[kind])

    FeatureStore.feature_rows = feature_rows
    return masks


def run_child(args: argparse.Namespace) -> None:
    sampler = PeakSampler()
    sampler.start()
    import torch

    from train.config import TrainConfig
    from train.run import run_train

    torch.set_num_threads(args.threads)
    masks = install_reader(args.reader)
    sets = {"feature_mode": "regions", "image_pool": args.image_pool, "region_drop": args.region_drop}
    cfg = TrainConfig(store=args.store, out_dir=args.out_dir, embed_dim=args.embed_dim,
                      word_dim=args.word_dim, batch_size=args.batch_size, epochs=1, device="cpu",
                      log_every=1000, seed=0, overwrite=True,  # the run folder is this script's own
                      **(sets if args.regions else {"feature_mode": "10c"}))
    start = time.perf_counter()
    summary = run_train(cfg)
    seconds = time.perf_counter() - start
    sampler.stopped.set()
    sampler.join()
    status = proc_status_kib()
    read = masks[0] if masks else np.zeros(0, dtype=bool)
    print(json.dumps({
        "vmhwm_kib": status["VmHWM"], "end_kib": status, "peak_anon_kib": max(sampler.peak["RssAnon"],
                                                                               status["RssAnon"]),
        "peak_file_kib": max(sampler.peak["RssFile"], status["RssFile"]), "rows_read": int(read.sum()),
        "rows_total": int(read.size), "steps": summary["step"], "seconds": seconds,
        "torch_threads": torch.get_num_threads()}))


# -- parent -------------------------------------------------------------------------------------------
def measure(store: Path, *, reader: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--store", str(store), "--reader", reader,
               "--out-dir", str(Path(args.dir) / f"run-{store.stem}-{reader}"), "--embed-dim", str(args.embed_dim),
               "--word-dim", str(args.word_dim), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
               "--regions", str(args.regions), "--image-pool", args.image_pool, "--region-drop", str(args.region_drop)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"child failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["rows_read"] != result["rows_total"]:
        sys.exit(f"{store}: the epoch read {result['rows_read']} of {result['rows_total']} image rows")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big-mb", type=float, default=2000, help="size of the big store's features/10c (1e6 B)")
    parser.add_argument("--small-mb", type=float, default=200, help="size of the small store's features/10c")
    parser.add_argument("--feature-dim", type=int, default=2048)
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--val-images", type=int, default=100, help="images in the val split of each store")
    parser.add_argument("--vocab-words", type=int, default=1000, help="distinct caption words (same in both)")
    parser.add_argument("--embed-dim", type=int, default=256)
    parser.add_argument("--word-dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the children (memory does not "
                        "depend on it; 1 avoids oversubscribing a shared machine)")
    parser.add_argument("--readers", default="shipped,memmap", help=f"comma list of {READERS}")
    parser.add_argument("--regions", type=int, default=0, help="K > 0: region stores of K vectors per image")
    parser.add_argument("--image-pool", default="mean", help="with --regions: mean, adaptive or gpo")
    parser.add_argument("--region-drop", type=float, default=0.0, help="with --regions: training's region drop")
    parser.add_argument("--dir", default="/tmp/vsepp-bench", help="stores and run folders (not the repo)")
    parser.add_argument("--keep", action="store_true", help="keep the stores and runs (reused when they match)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--reader", default="shipped", choices=READERS, help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return
    readers = args.readers.split(",")
    if not set(readers) <= set(READERS):
        parser.error(f"--readers {args.readers!r}: choose from {', '.join(READERS)}")
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    vectors = args.regions or CROPS
    sizes = {"small": images_for_megabytes(args.small_mb, args.feature_dim, vectors),
             "big": images_for_megabytes(args.big_mb, args.feature_dim, vectors)}
    needed = sum(sizes.values()) * (args.regions or CROPS + 1) * args.feature_dim * 4
    free = shutil.disk_usage(folder).free
    kind = f"{args.regions}r" if args.regions else "10"
    stores = {name: folder / f"{name}-{count}x{kind}x{args.feature_dim}.h5" for name, count in sizes.items()}
    if free < 1.2 * needed and not all(path.exists() for path in stores.values()):
        sys.exit(f"{folder}: {free / 1e9:.1f} GB free, the stores need {needed / 1e9:.1f} GB; "
                 "pass smaller --big-mb/--small-mb or another --dir")
    print_machine()
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {folder} ({free / 1e9:.0f} GB free)")
    for name, path in stores.items():
        start = time.perf_counter()
        if args.keep and store_is_complete(path, sizes[name], args.feature_dim, args.regions):
            note = "reused"
        else:
            write_store(path, sizes[name], feature_dim=args.feature_dim, args=args)
            note = f"written in {time.perf_counter() - start:.0f} s"
        print(f"{name:5s} store {path.name}: {sizes[name]} images x {args.captions_per_image} captions, "
              f"{'regions' if args.regions else '10c'} {sizes[name] * vectors * args.feature_dim * 4 / MIB:.0f} MiB, file "
              f"{path.stat().st_size / MIB:.0f} MiB ({note})")
    mode = f"regions ({args.image_pool}, drop {args.region_drop})" if args.regions else "10c"
    print(f"one epoch of run_train per child: feature mode {mode}, embed {args.embed_dim}, word {args.word_dim}, "
          f"batch {args.batch_size}, {args.threads} torch thread(s); MiB; peaks of RssAnon/RssFile sampled every 10 ms, VmHWM exact")
    print(f"{'reader':8s} {'store':5s} {'steps':>6s} {'rows read':>10s} {'s':>5s} {'VmHWM':>7s} "
          f"{'peak anon':>9s} {'peak file':>9s} {'end anon':>8s} {'end file':>8s}")
    results = {}
    try:
        for reader in readers:
            for name in ("small", "big"):
                result = results[reader, name] = measure(stores[name], reader=reader, args=args)
                print(f"{reader:8s} {name:5s} {result['steps']:6d} {result['rows_read']:10d} "
                      f"{result['seconds']:5.0f} {result['vmhwm_kib'] / 1024:7.0f} "
                      f"{result['peak_anon_kib'] / 1024:9.0f} {result['peak_file_kib'] / 1024:9.0f} "
                      f"{result['end_kib']['RssAnon'] / 1024:8.0f} {result['end_kib']['RssFile'] / 1024:8.0f}",
                      flush=True)
            big, small = results[reader, "big"], results[reader, "small"]
            print(f"{reader:8s} big/small: VmHWM {big['vmhwm_kib'] / small['vmhwm_kib']:.2f} (goal <= 1.2), "
                  f"peak RssAnon {big['peak_anon_kib'] / small['peak_anon_kib']:.2f}", flush=True)
    finally:
        if not args.keep:  # only what this script made: --dir may hold other files
            for path in stores.values():
                path.unlink(missing_ok=True)
            for reader in readers:
                for path in stores.values():
                    shutil.rmtree(folder / f"run-{path.stem}-{reader}", ignore_errors=True)


if __name__ == "__main__":
    main()
