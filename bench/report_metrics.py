"""Benchmark: `pipeline.py report` on a run whose metrics.jsonl holds 1,000,000 lines (weeks of training).

    python bench/report_metrics.py [--lines 1000000] [--dir DIR]    (2 CPU cores: about 2-3 minutes)

Makes a tiny real run once (demo-data, extract with resnet18 and random weights, train 1 epoch: a checkpoint the
report can load), then times the whole `pipeline.py report RUN` command in a fresh process, twice: with the run's
own short metrics.jsonl (the baseline: loading the model, embedding the split, drawing) and with --lines generated
lines in its place (step lines with the keys a training writes today, a val line every 1,000 steps, and a few odd
lines the report skips and counts). Reported: wall seconds and the report process's peak RSS (ru_maxrss of a
parent whose only child is the report). Goal: under 60 s for 1M lines on 2 cores, memory linear in the lines at
8 bytes a value (report/collect.py's array('d') columns).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.machine import print_machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = [sys.executable, str(ROOT / "pipeline.py"), "--log-level", "WARNING"]
VAL_EVERY = 1000  # a val line every this many step lines
# One process whose only child is the report: its RUSAGE_CHILDREN peak is the report's own.
MEASURE = ("import resource, subprocess, sys, time; start = time.perf_counter(); "
           "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
           "usage = resource.getrusage(resource.RUSAGE_CHILDREN); "
           "print(code, time.perf_counter() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)")


def make_run(folder: Path) -> Path:
    """A tiny trained run (its best.pt, config.json and metrics.jsonl) in folder/run."""
    run = folder / "run"
    if (run / "best.pt").is_file():
        return run
    subprocess.run([*PIPELINE, "demo-data", "--out-dir", str(folder / "data"), "--num-train", "24", "--num-val", "8",
                    "--num-test", "8", "--image-size", "64",
                    "extract", "--out", str(folder / "feats.h5"), "--backbone", "resnet18", "--weights", "none",
                    "--workers", "0", "--batch-size", "16", "--device", "cpu",
                    "train", "--out-dir", str(run), "--embed-dim", "16", "--word-dim", "8", "--batch-size", "8",
                    "--epochs", "1", "--workers", "0", "--device", "cpu"], check=True)
    return run


def write_metrics(path: Path, lines: int) -> int:
    """`lines` step lines (a val line after every VAL_EVERY) and 3 odd ones; returns the file's bytes."""
    with path.open("w", encoding="utf-8") as handle:
        for step in range(1, lines + 1):
            epoch = step // 5000
            handle.write(f'{{"event": "step", "step": {step}, "epoch": {epoch}, "loss": {2.0 + 1 / step:.6f}, '
                         f'"lr": 0.0002, "loss_mean": {2.0 + 1 / step:.6f}, "captions": 1280, "window_steps": 10, '
                         f'"grad_norm": 1.25, "data_s": 0.001, "step_s": 0.05, "steps_per_s": 19.6, '
                         f'"loss_per_caption": {0.02 + 0.01 / step:.6f}}}\n')
            if step % VAL_EVERY == 0:
                handle.write(json.dumps({"event": "val", "step": step, "epoch": epoch, "rsum": 100 + step / 1e4,
                                         "i2t_r1": 10.0, "t2i_r1": 8.0}) + "\n")
        handle.write('[1, 2]\n{"event": "val", "step": null, "rsum": 1}\n{"event": "step", "step": 1, "loss"\n')
    return path.stat().st_size


def time_report(run: Path) -> str:
    """Wall seconds, CPU seconds and peak RSS of `pipeline.py report RUN --device cpu` in a fresh process."""
    out = subprocess.run([sys.executable, "-c", MEASURE, *PIPELINE, "report", str(run), "--device", "cpu",
                          "--workers", "0"], check=True, capture_output=True, text=True).stdout.split()
    code, seconds, cpu_seconds, peak_kib = int(out[0]), float(out[1]), float(out[2]), int(out[3])
    if code != 0:
        raise SystemExit(f"report exited with {code}")
    return f"{seconds:.1f} s ({cpu_seconds:.1f} s of CPU), peak RSS {peak_kib / 1024:.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="step lines of the big metrics.jsonl")
    parser.add_argument("--dir", default="", help="work folder (default: a temporary one); the run is reused")
    args = parser.parse_args()
    print_machine()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.dir or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        run = make_run(folder)
        metrics = run / "metrics.jsonl"
        original = metrics.read_bytes()
        print(f"loadavg before: {Path('/proc/loadavg').read_text().strip()}", flush=True)
        print(f"report, the run's own metrics.jsonl ({len(original.splitlines())} lines): {time_report(run)}",
              flush=True)
        start = time.perf_counter()
        size = write_metrics(metrics, args.lines)
        print(f"wrote {args.lines} step lines + {args.lines // VAL_EVERY} val lines ({size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        try:
            measured = time_report(run)
        finally:
            metrics.write_bytes(original)
        print(f"report, {args.lines}-line metrics.jsonl: {measured} (loadavg after: "
              f"{Path('/proc/loadavg').read_text().strip()})", flush=True)


if __name__ == "__main__":
    main()
