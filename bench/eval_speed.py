"""Benchmark of the rank engine: eval time against the bare similarity matmul, eval and search peak memory.

Run: python bench/eval_speed.py [--rounds 5]   (2 CPU cores: about 5-10 minutes, longer on a busy machine)
(a) 5,000 images x 25,000 captions, 1024-d random unit vectors, coco-5k: evaluate_protocol (the rank engine,
    from embeddings, never holding the [N, M] matrix) and one bare torch.mm(image_emb, caption_emb.T) of the
    same FLOPs, alternated in one process for --rounds rounds; per-round ratios and medians. Peak RSS of each
    side in a fresh child process: VmHWM (the kernel's exact peak), reset after the data is built
    (/proc/self/clear_refs), so it is the job's own peak; a "data-5k" child only builds the data.
    Checks: the engine's ranks equal those of recall_metrics on the bare matmul's matrix (the trainer's path),
    and on a subset of queries a reference-style argsort of that matrix (the reference VSE++ evaluation).
(b) 20,000 images x 100,000 captions (captions shuffled), all-images: wall time and VmHWM in a child (the
    matrix alone would take 8 GB).
(c) 1,000 caption queries, top-10 over a 100,000 x 1024 gallery: topk against a bare matmul of the same FLOPs,
    alternated in one process; VmHWM of topk in a child; topk's indices checked against torch.topk of the matrix.
A per-query argsort loop (the reference code's evaluation) is not timed: its time is set by its memory-bound
per-query dot products (19x one matmul on 2 cores), which says nothing about the engine; its ranks are checked.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.machine import print_machine  # noqa: E402
from eval.metrics import ranks_i2t, ranks_t2i  # noqa: E402
from common.choices import DEVICES  # noqa: E402
from common.device import resolve_device  # noqa: E402
from eval.protocols import evaluate_protocol  # noqa: E402
from eval.rank import retrieval_ranks  # noqa: E402
from eval.topk import topk  # noqa: E402

DIM = 1024
DEVICE = torch.device("cpu")  # --device: the embeddings live there, and so does the engine's work


def random_unit_rows(generator: torch.Generator, count: int, dim: int = DIM) -> torch.Tensor:
    rows = torch.randn(count, dim, generator=generator)
    return rows.div_(torch.linalg.vector_norm(rows, dim=1, keepdim=True)).to(DEVICE)


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def eval_data(num_images: int, captions_per_image: int, *, shuffled: bool, seed: int = 0):
    """(image_emb [N, D], caption_emb [M, D], caption_image_index [M]), captions near their image's, built by
    chunks so that the data's own temporaries stay small."""
    generator = torch.Generator().manual_seed(seed)
    image_emb = random_unit_rows(generator, num_images)
    index = np.arange(num_images * captions_per_image) // captions_per_image
    if shuffled:
        index = np.random.default_rng(seed).permutation(index)
    caption_emb = torch.empty(len(index), DIM, device=DEVICE)
    for start in range(0, len(index), 10_000):
        # Noise 12x the image's norm: the positive's cosine (~0.08) stands ~2.7 sigma above a random pair's
        # (~0.03), which gives coco-5k-like recall (rsum ~260 at 5K images): ranks spread like a trained model's.
        rows = random_unit_rows(generator, min(10_000, len(index) - start)).mul_(12.0)
        rows.add_(image_emb[torch.from_numpy(index[start:start + 10_000]).to(DEVICE)])
        caption_emb[start:start + len(rows)] = rows.div_(torch.linalg.vector_norm(rows, dim=1, keepdim=True))
    return image_emb, caption_emb, index


def status_mib(field: str) -> float:
    """VmHWM (the kernel's exact peak RSS) or VmRSS of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(job: str) -> None:
    """One measured job in this fresh process; prints one JSON line {seconds, vmhwm_mib, ...}."""
    import_mib = status_mib("VmRSS")  # python + torch + numpy, before any data
    big = job.startswith("eval-20k")
    if job.startswith("search"):
        generator = torch.Generator().manual_seed(1)
        gallery, queries = random_unit_rows(generator, 100_000), random_unit_rows(generator, 1000)
    else:
        image_emb, caption_emb, index = eval_data(20_000 if big else 5000, 5, shuffled=big)
    data_peak_mib, data_mib = status_mib("VmHWM"), status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    start = time.perf_counter()
    extra = {}
    if job == "search":
        scores, _ = topk(queries, gallery, 10)
        extra["top1_mean"] = float(scores[:, 0].mean())
    elif job == "matmul-5k":
        sims = image_emb @ caption_emb.T
        extra["sims_mib"] = sims.numel() * 4 / 2**20
    elif job in ("eval-5k", "eval-20k"):
        results = evaluate_protocol(image_emb, caption_emb, index, protocol="coco-5k" if job == "eval-5k"
                                    else "all-images")
        extra.update(rsum=results["rsum"], i2t_r1=results["i2t_r1"], t2i_r1=results["t2i_r1"])
    seconds = time.perf_counter() - start
    print(json.dumps({"job": job, "seconds": seconds, "vmhwm_mib": status_mib("VmHWM"), "data_mib": data_mib,
                      "data_peak_mib": data_peak_mib, "import_mib": import_mib, **extra}))


def describe_memory(result: dict) -> str:
    return (f"peak RSS during the job {result['vmhwm_mib']:.0f} MiB = RSS with the data {result['data_mib']:.0f} "
            f"MiB + {result['vmhwm_mib'] - result['data_mib']:.0f} MiB (imports alone {result['import_mib']:.0f} MiB; "
            f"building the data peaked at {result['data_peak_mib']:.0f} MiB)")


def run_child(job: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", job, "--device", DEVICE.type], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def alternate(rounds: int, sides: dict) -> dict[str, list[float]]:
    """seconds[name] over rounds, the sides called in turn within each round (noise hits both alike)."""
    seconds = {name: [] for name in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            synchronize()
            start = time.perf_counter()
            fn()
            synchronize()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def report_ratio(seconds: dict[str, list[float]], ours: str, bare: str) -> None:
    ratios = np.array(seconds[ours]) / np.array(seconds[bare])
    for name, values in seconds.items():
        print(f"  {name}: median {np.median(values):.2f} s (rounds: {' '.join(f'{v:.2f}' for v in values)})")
    print(f"  ratio {ours} / {bare}: median of rounds {np.median(ratios):.3f} (rounds: "
          f"{' '.join(f'{r:.3f}' for r in ratios)}); ratio of medians "
          f"{np.median(seconds[ours]) / np.median(seconds[bare]):.3f}")


def bench_eval_5k(rounds: int) -> None:
    print(f"(a) 5000 images x 25000 captions, {DIM}-d, coco-5k; load before {load()}")
    image_emb, caption_emb, index = eval_data(5000, 5, shuffled=False)
    seconds = alternate(rounds, {
        "evaluate_protocol": lambda: evaluate_protocol(image_emb, caption_emb, index, protocol="coco-5k"),
        "bare matmul": lambda: image_emb @ caption_emb.T,
    })
    report_ratio(seconds, "evaluate_protocol", "bare matmul")
    print(f"  load after {load()}")

    sims = (image_emb @ caption_emb.T).cpu().numpy()
    engine_i2t, engine_t2i = (ranks.cpu().numpy() for ranks in retrieval_ranks(image_emb, caption_emb, index))
    matrix_i2t, matrix_t2i = ranks_i2t(sims, index), ranks_t2i(sims, index)
    print(f"  check vs recall_metrics' ranks on the bare matrix: {np.sum(engine_i2t != matrix_i2t)} i2t and "
          f"{np.sum(engine_t2i != matrix_t2i)} t2i mismatches of {len(engine_i2t)} + {len(engine_t2i)}")
    rng = np.random.default_rng(0)
    images, captions = rng.choice(5000, size=500, replace=False), rng.choice(len(index), size=2500, replace=False)
    argsort_i2t = [min(np.flatnonzero(np.argsort(-sims[i], kind="stable") // 5 == i)) + 1 for i in images]
    argsort_t2i = [np.flatnonzero(np.argsort(-sims[:, c], kind="stable") == index[c])[0] + 1 for c in captions]
    print(f"  check vs argsort on 500 image + 2500 caption queries: {np.sum(engine_i2t[images] != argsort_i2t)} "
          f"i2t and {np.sum(engine_t2i[captions] != argsort_t2i)} t2i mismatches")
    del sims
    for job in ("data-5k", "eval-5k", "matmul-5k"):
        result = run_child(job)
        print(f"  child {job}: {result['seconds']:.2f} s, {describe_memory(result)}"
              + (f", rsum {result['rsum']:.2f}" if "rsum" in result else ""))


def bench_eval_20k() -> None:
    print(f"(b) 20000 images x 100000 captions (shuffled), {DIM}-d, all-images, in a child; load before {load()}")
    result = run_child("eval-20k")
    flops = 2 * 20_000 * 100_000 * DIM
    print(f"  {result['seconds']:.1f} s ({flops / result['seconds'] / 1e9:.0f} GFLOP/s of similarities), "
          f"{describe_memory(result)}; rsum {result['rsum']:.2f} (i2t R@1 {result['i2t_r1']:.2f}, t2i R@1 "
          f"{result['t2i_r1']:.2f}); load after {load()}")


def bench_search(rounds: int) -> None:
    print(f"(c) 1000 queries, top-10 over a 100000 x {DIM} gallery; load before {load()}")
    generator = torch.Generator().manual_seed(1)
    gallery, queries = random_unit_rows(generator, 100_000), random_unit_rows(generator, 1000)
    seconds = alternate(rounds, {"topk": lambda: topk(queries, gallery, 10),
                                 "bare matmul": lambda: queries @ gallery.T})
    report_ratio(seconds, "topk", "bare matmul")
    _, indices = topk(queries, gallery, 10)
    expected = torch.topk(queries @ gallery.T, 10, dim=1).indices
    print(f"  check vs torch.topk of the whole matrix: {int((indices != expected).any(dim=1).sum())} of 1000 "
          f"queries differ; load after {load()}")
    result = run_child("search")
    print(f"  child search: {result['seconds']:.2f} s, {describe_memory(result)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternated rounds of each timed pair")
    parser.add_argument("--parts", default="a,b,c", help="which benchmarks to run: a, b, c")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="auto", choices=DEVICES, help="where embeddings and the engine run")
    args = parser.parse_args()
    global DEVICE
    DEVICE = resolve_device(args.device)
    if args.child:
        child(args.child)
        return
    print_machine()
    print(f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"numpy {np.__version__}, {os.cpu_count()} CPUs, device {DEVICE}")
    parts = set(args.parts.split(","))
    if "a" in parts:
        bench_eval_5k(args.rounds)
    if "b" in parts:
        bench_eval_20k()
    if "c" in parts:
        bench_search(max(3, args.rounds - 2))


if __name__ == "__main__":
    main()
