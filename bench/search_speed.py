"""Benchmark of search: 1,000 text queries, top-10 over 100,000 gallery embeddings (1024-d), exact vs faiss.

Run: python bench/search_speed.py [--rounds 5]   (2 CPU cores: about 6-10 minutes, most of it the HNSW build)
Data: gallery and queries drawn alike, each row a random point of a 64-d subspace plus isotropic noise (0.3 x the
signal's norm), L2-normalised: embeddings of a trained model fill a space of low intrinsic dimension, and their
neighbours form a continuum. (Random unit rows in 1024-d would make every top-10 pure noise, which no approximate
index can be judged on; tight clusters made HNSW's recall a trivial 1.0.)
Sides, timed alternately in one process for --rounds rounds (medians; the machine is shared):
  exact       retrieval.search.exact_topk: eval/topk.py with the model's cosine similarity, as `search` runs it
  faiss-flat  IndexFlatIP through retrieval.index (exact inner product)
  faiss-hnsw  IndexHNSWFlat (M 32, efConstruction 80, efSearch 128: the `search` defaults)
Checks: faiss-flat's ids equal exact's and its scores within 1e-5; faiss-hnsw's recall@10 against exact, also
for the efSearch values EF_SWEEP (alternated, medians).
Build times: each index built --builds times (median). Peak RSS: each side in a fresh child process (VmHWM,
reset with /proc/self/clear_refs after the data is built): exact holds the gallery in memory; "exact-file" streams
it from an embeddings file by blocks (what `search --embeddings` does); a faiss child reads the index the parent
saved (as a second `search --index faiss` does) and searches. Children other than exact free the gallery first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.eval_speed import alternate, load, status_mib  # noqa: E402
from bench.machine import print_machine  # noqa: E402
from eval.blocks import swap_sim  # noqa: E402
from retrieval.embeddings import EmbeddingsFile, EmbeddingsWriter, GroupTable  # noqa: E402
from retrieval.index import IndexSpec, build_index, faiss_module, search_index  # noqa: E402
from retrieval.search import exact_topk  # noqa: E402
from train.losses.similarity import cosine_sim  # noqa: E402

DIM, GALLERY, QUERIES, K = 1024, 100_000, 1000, 10
LATENT, NOISE = 64, 0.3  # rows = a point of a 64-d subspace + isotropic noise of 0.3 x the signal's norm
EF_SWEEP = (32, 64, 128, 256)  # HNSW efSearch values of the recall / time trade-off
SPECS = {"faiss-flat": IndexSpec("flat"), "faiss-hnsw": IndexSpec("hnsw")}
SIM_FN = swap_sim(cosine_sim)  # sentence queries over images, image side first: eval's similarity


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def bench_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(gallery [GALLERY, DIM], queries [QUERIES, DIM]) float32 unit rows near a LATENT-dim subspace, by chunks."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((LATENT, DIM)).astype(np.float32)

    def sample(count: int) -> np.ndarray:
        signal = rng.standard_normal((count, LATENT)).astype(np.float32) @ basis  # |signal| ~ sqrt(LATENT * DIM)
        noise = rng.standard_normal((count, DIM)).astype(np.float32) * (NOISE * np.sqrt(LATENT))
        return unit(signal + noise)

    gallery = np.empty((GALLERY, DIM), dtype=np.float32)
    for start in range(0, GALLERY, 10_000):
        gallery[start:start + 10_000] = sample(min(10_000, GALLERY - start))
    return gallery, sample(QUERIES)


def exact(queries: np.ndarray, blocks) -> tuple[np.ndarray, np.ndarray]:
    scores, rows = exact_topk(torch.from_numpy(queries), blocks, K, sim_fn=SIM_FN)
    return scores.numpy(), rows.numpy()


def write_embeddings(path: Path, gallery: np.ndarray) -> None:
    table = GroupTable(np.arange(GALLERY), [f"{row}.jpg" for row in range(GALLERY)])
    with EmbeddingsWriter.create(path, tables={"images": table}, embed_dim=DIM,
                                 attrs={"source": "images", "embed_dim": DIM}) as writer:
        for start in range(0, GALLERY, 10_000):
            rows = np.arange(start, min(start + 10_000, GALLERY))
            writer.write_rows("images", rows, gallery[rows])
        writer.finish()


def child(job: str, folder: str) -> None:
    """One measured job in this fresh process; prints one JSON line."""
    import_mib = status_mib("VmRSS")
    gallery, queries = bench_data()
    if job != "exact":  # the gallery is read from disk: the embeddings file, or the saved index
        del gallery
    data_mib = status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS (Linux >= 4.0)
    start = time.perf_counter()
    if job == "exact":
        exact(queries, [gallery])
    elif job == "exact-file":
        with EmbeddingsFile(Path(folder) / "gallery.h5") as embeddings:
            exact(queries, embeddings.blocks("images", np.arange(GALLERY)))
    else:
        index = faiss_module().read_index(str(Path(folder) / f"{job}.index"))
        search_index(index, queries, K, spec=SPECS[job])
    print(json.dumps({"job": job, "seconds": time.perf_counter() - start, "vmhwm_mib": status_mib("VmHWM"),
                      "data_mib": data_mib, "import_mib": import_mib}))


def run_child(job: str, folder: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", job, "--folder", folder], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found.tolist(), truth.tolist())]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternated rounds of the three searches")
    parser.add_argument("--builds", type=int, default=2, help="builds of each index (median)")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--folder", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.folder)
        return
    faiss = faiss_module()
    print_machine()
    print(f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), {os.cpu_count()} CPUs")
    print(f"{QUERIES} queries, top-{K} over {GALLERY} x {DIM} unit rows (near a {LATENT}-d subspace); load before "
          f"{load()}")
    gallery, queries = bench_data()
    indexes, build_seconds = {}, {}
    for name, spec in SPECS.items():  # the index of the last build is the one searched
        build_seconds[name] = []
        for _ in range(args.builds):
            start = time.perf_counter()
            indexes[name] = build_index([gallery], dim=DIM, spec=spec)
            build_seconds[name].append(time.perf_counter() - start)
        print(f"  build {name}: median {np.median(build_seconds[name]):.2f} s (builds: "
              f"{' '.join(f'{s:.2f}' for s in build_seconds[name])}); load {load()}")
    sides = {"exact": lambda: exact(queries, [gallery]),
             **{name: lambda name=name: search_index(indexes[name], queries, K, spec=SPECS[name]) for name in SPECS}}
    seconds = alternate(args.rounds, sides)
    for name, values in seconds.items():
        print(f"  search {name}: median {np.median(values):.3f} s = {1000 * np.median(values) / QUERIES:.2f} ms per "
              f"query (rounds: {' '.join(f'{v:.3f}' for v in values)})")
    exact_scores, exact_rows = exact(queries, [gallery])
    flat_scores, flat_rows = search_index(indexes["faiss-flat"], queries, K, spec=SPECS["faiss-flat"])
    _, hnsw_rows = search_index(indexes["faiss-hnsw"], queries, K, spec=SPECS["faiss-hnsw"])
    print(f"  check faiss-flat vs exact: {int((flat_rows != exact_rows).any(axis=1).sum())} of {QUERIES} queries with "
          f"other ids, max score difference {np.abs(flat_scores - exact_scores).max():.2e}")
    print(f"  faiss-hnsw recall@{K} against exact: {recall_at_k(hnsw_rows, exact_rows):.4f}; load after {load()}")
    specs = {ef: IndexSpec("hnsw", ef_search=ef) for ef in EF_SWEEP}
    sweep = alternate(max(3, args.rounds - 2), {ef: lambda ef=ef: search_index(indexes["faiss-hnsw"], queries, K,
                                                                               spec=specs[ef]) for ef in EF_SWEEP})
    for ef in EF_SWEEP:
        _, rows = search_index(indexes["faiss-hnsw"], queries, K, spec=specs[ef])
        print(f"  faiss-hnsw efSearch {ef}: median {np.median(sweep[ef]):.3f} s, recall@{K} "
              f"{recall_at_k(rows, exact_rows):.4f}")
    with tempfile.TemporaryDirectory() as folder:
        write_embeddings(Path(folder) / "gallery.h5", gallery)
        for name, index in indexes.items():
            faiss.write_index(index, str(Path(folder) / f"{name}.index"))
        gallery = indexes = None  # frees them (the lambdas above hold the same cells) before the children run
        for job in ("exact", "exact-file", *SPECS):
            result = run_child(job, folder)
            print(f"  child {job}: search {result['seconds']:.2f} s, peak RSS {result['vmhwm_mib']:.0f} MiB = "
                  f"{result['data_mib']:.0f} MiB before the search + {result['vmhwm_mib'] - result['data_mib']:.0f} "
                  f"MiB (imports alone {result['import_mib']:.0f} MiB)")
    print(f"load at the end {load()}")


if __name__ == "__main__":
    main()
