"""One GPU check: every CUDA path of the pipeline run and timed once, into one results file (JSON + text).

    python bench/gpu_check.py                  # one CUDA GPU, <= 8 minutes: $OUT/gpu_check.{json,txt} (or --out)
    python bench/gpu_check.py --dry-run        # the same code paths on the CPU at tiny sizes, in seconds

Sections, each within its own time budget; a failing one records its error and the next one runs:
  cuda_tests  the tests that skip without CUDA (found by their skipif reason), in a pytest subprocess
  extract     ResNet152, 10 crops, channels_last: whole run_extract vs the bare forward under bf16 and fp16
              autocast (img/s and the ratio; goal >= 0.9) and the features' relative error against the first amp
  decode      run_extract --decode gpu (nvJPEG) vs --decode cpu (DataLoader workers): img/s, feature difference
  train_step  the reference model's training step (batch 128, GRU 1024, cuDNN's GRU) in float32, bf16, fp16
  finetune    a fine-tuning step (ResNet152 + head + GRU, all stages trained) under bf16 and fp16 (GradScaler)
  eval        the coco-5k protocol over 5K x 25K embeddings on the GPU vs the bare similarity product
  nccl        torchrun --standalone --nproc-per-node 1: the process group (gloo + NCCL), its collectives, the
              all-gather with gradient and a DistributedDataParallel step, which must equal the plain step
Nothing here needs the network (random-init weights, JPEGs generated on the spot) or imports faiss / fastapi.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from bench.workload import synthetic_batch  # noqa: E402
from bench.extract_throughput import bench_backbone, relative_error, write_images  # noqa: E402
from bench.machine import gpu_names, machine_line  # noqa: E402
from bench.workload import step_gflop  # noqa: E402
from common.device import AMP_DTYPES, available_cpus, native_cpu_bf16  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.data import Batch  # noqa: E402
from train.losses import build_loss  # noqa: E402
from train.model import build_model  # noqa: E402
from train.step import TrainingStep  # noqa: E402

TOTAL_BUDGET_S = 480  # the whole check on one H100, section budgets included
BUDGETS_S = {"cuda_tests": 120, "extract": 110, "decode": 50, "train_step": 40, "finetune": 50, "eval": 30,
             "nccl": 60}
SECTIONS = tuple(BUDGETS_S)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each section runs on: the GPU check's sizes, or the dry run's tiny ones."""

    backbone: str = "resnet152"
    crops: int = 10  # crops per image in extract and decode
    crop: int = 224  # the side of a fine-tuning crop
    images: int = 640  # generated JPEGs of 500x375; enough that DataLoader start-up is a small part of a run
    batch_size: int = 32  # images per CNN batch (x 10 crops)
    decode_backbone: str = "resnet18"  # a light CNN, so that decoding sets the pace
    train_batch: int = 128
    embed_dim: int = 1024
    word_dim: int = 300
    feature_dim: int = 2048
    vocab_size: int = 10000
    steps: int = 10  # timed steps per setting
    warmup: int = 2  # untimed steps before them
    finetune_batch: int = 32
    eval_images: int = 5000
    rounds: int = 3  # eval: rounds alternating engine and bare product


DRY_SIZES = Sizes(backbone="resnet18", crops=1, crop=64, images=2, batch_size=2, train_batch=8, embed_dim=32,
                  word_dim=16, feature_dim=64, vocab_size=100, steps=1, warmup=0, finetune_batch=2, eval_images=40,
                  rounds=1)


class SectionTimeout(Exception):
    """A section ran past its budget."""


@contextlib.contextmanager
def time_budget(seconds: float):
    """Raise SectionTimeout in this thread after `seconds` (between Python operations; subprocesses get their
    own timeout)."""
    def on_alarm(signum, frame):
        raise SectionTimeout(f"over its budget of {seconds:.0f} s")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def cuda_only_tests(root: Path = ROOT) -> list[str]:
    """pytest node ids of the test functions marked skipif with a reason that names CUDA (AST scan of tests/)."""
    found = []
    for path in sorted((root / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                    isinstance(mark, ast.Call) and getattr(mark.func, "attr", "") == "skipif"
                    and any(k.arg == "reason" and "CUDA" in str(getattr(k.value, "value", "")) for k in mark.keywords)
                    for mark in node.decorator_list):
                found.append(f"{path.relative_to(root)}::{node.name}")
    return found


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def section_cuda_tests(ctx: dict) -> dict:
    tests = cuda_only_tests()
    # the dry run skips them all: without the suite's conftest (fixtures, imports) that takes seconds, not tens
    command = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *tests,
               *(["--noconftest"] if ctx["dry_run"] else [])]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=max(ctx["budget"] - 5, 1))
    outcomes = {}
    for line in done.stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "FAILED", "SKIPPED", "ERROR", "XFAIL", "XPASS"):
            outcomes[rest.split(" - ")[0]] = word
    if done.returncode not in (0, 5):  # 5: nothing collected
        tail = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(f"pytest exit {done.returncode}, outcomes {outcomes}:\n{tail}")
    return {"tests": tests, "outcomes": outcomes, "summary": (done.stdout.strip().splitlines() or [""])[-1]}


def images_folder(ctx: dict) -> tuple[Path, Path]:
    """(dataset JSON, image root) of the generated JPEGs, made once per check."""
    if "dataset" not in ctx:
        ctx["dataset"] = write_images(ctx["folder"], ctx["sizes"].images)
    return ctx["dataset"], ctx["folder"]


def section_extract(ctx: dict) -> dict:
    sizes, device = ctx["sizes"], ctx["device"]
    dataset, root = images_folder(ctx)
    args = argparse.Namespace(device=device.type, crops=sizes.crops, batch_size=sizes.batch_size,
                              workers=ctx["workers"], channels_last=True)
    rows = {}
    for amp in ctx["amps"]:
        row = bench_backbone(sizes.backbone, dataset, root, ctx["folder"], args, amp=amp)
        if rows:
            first = next(iter(rows.values()))
            row["relative_error_vs_" + first["amp"]] = relative_error(row["store"], first["store"], sizes.crops)
        row["store"] = str(row["store"])
        rows[amp] = row
    return {"backbone": sizes.backbone, "crops": sizes.crops, "channels_last": True, "goal_ratio": 0.9, "by_amp": rows}


def section_decode(ctx: dict) -> dict:
    from extract.config import ExtractConfig
    from extract.run import run_extract

    sizes, device = ctx["sizes"], ctx["device"]
    dataset, root = images_folder(ctx)
    amp = ctx["amps"][0]
    result, stores = {"backbone": sizes.decode_backbone, "crops": sizes.crops, "amp": amp}, {}
    for decode in ("cpu", "gpu"):
        stores[decode] = ctx["folder"] / f"decode-{decode}.h5"
        config = ExtractConfig(dataset=str(dataset), image_root=str(root), out=str(stores[decode]),
                               backbone=sizes.decode_backbone, weights="none", crops=sizes.crops, device=device.type,
                               amp=amp, decode=decode, batch_size=sizes.batch_size, workers=ctx["workers"],
                               overwrite=True)
        if decode == "gpu" and device.type != "cuda":  # the dry run: only the refusal's path
            try:
                run_extract(config)
            except ValueError as err:
                result["gpu"] = f"refused without CUDA, as it must be: {err}"
                return result
            raise RuntimeError("run_extract --decode gpu ran without CUDA instead of refusing")
        summary = run_extract(config)
        result[decode] = {"images_per_s": summary["images_per_s"], "seconds": summary["seconds"]}
    result["gpu_over_cpu"] = result["gpu"]["images_per_s"] / result["cpu"]["images_per_s"]
    result["relative_difference"] = relative_error(stores["gpu"], stores["cpu"], sizes.crops)
    return result


def timed_training(step: TrainingStep, params: list, batches: list[Batch], *, amp: str, sizes: Sizes,
                   device: torch.device) -> dict:
    """Seconds per step (forward, loss, backward, clip, Adam; fp16 with a GradScaler) after the warm-up steps."""
    optimizer = torch.optim.Adam(params, lr=2e-4)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    step.autocast_dtype = AMP_DTYPES.get(amp)  # "none": None, autocast off
    losses, start = [], 0.0
    for number in range(sizes.warmup + sizes.steps):
        if number == sizes.warmup:
            synchronize(device)
            start = time.perf_counter()
        value, _ = step(batches[number % len(batches)], epoch=1, step=number)
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(value) if scaler else value).backward()
        if scaler:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 2.0)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        losses.append(value.item())
    synchronize(device)
    return {"s_per_step": (time.perf_counter() - start) / sizes.steps, "losses_finite": bool(np.isfinite(losses).all()),
            "last_loss": losses[-1]}


def reference_parts(sizes: Sizes, batch_size: int, feature_dim: int) -> tuple[TrainConfig, list[Batch]]:
    config = TrainConfig(store="synthetic", embed_dim=sizes.embed_dim, word_dim=sizes.word_dim, batch_size=batch_size)
    batches = [synthetic_batch(np.random.default_rng(seed), batch_size=batch_size, words=12,
                               vocab_size=sizes.vocab_size, feature_dim=feature_dim) for seed in range(3)]
    return config, batches


def section_train_step(ctx: dict) -> dict:
    sizes, device = ctx["sizes"], ctx["device"]
    config, batches = reference_parts(sizes, sizes.train_batch, sizes.feature_dim)
    batches = [batch.to(device) for batch in batches]
    torch.manual_seed(0)
    model, loss = build_model(config, vocab_size=sizes.vocab_size, feature_dim=sizes.feature_dim), build_loss(config)
    step = TrainingStep(model.to(device), loss.to(device), autocast_dtype=None)
    params = [*model.parameters(), *loss.parameters()]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        step(batches[0], epoch=1, step=0)[0].backward()
    gflop = sum(step_gflop(batches[0].lengths, word_dim=sizes.word_dim, embed_dim=sizes.embed_dim,
                           feature_dim=sizes.feature_dim).values())
    result = {"batch": sizes.train_batch, "gflop_per_step": gflop,
              "cudnn_gru": any("cudnn_rnn" in event.key for event in profiler.key_averages()),
              "cudnn_version": torch.backends.cudnn.version() if device.type == "cuda" else None}
    for amp in ("none", *ctx["amps"]):
        timing = timed_training(step, params, batches, amp=amp, sizes=sizes, device=device)
        result[amp] = dict(timing, gflop_per_s=gflop / timing["s_per_step"])
    return result


def section_finetune(ctx: dict) -> dict:
    from extract.backbones import build_backbone
    from train.finetune.config import FinetuneConfig
    from train.finetune.cnn import attach_cnn

    sizes, device = ctx["sizes"], ctx["device"]
    config = FinetuneConfig(checkpoint="none", embed_dim=sizes.embed_dim, word_dim=sizes.word_dim,
                            batch_size=sizes.finetune_batch, unfreeze="all")
    torch.manual_seed(0)
    backbone = build_backbone(sizes.backbone, None, seed=0)
    model = build_model(config, vocab_size=sizes.vocab_size, feature_dim=backbone.feature_dim)
    attach_cnn(model, config, backbone=backbone)
    loss = build_loss(config)
    step = TrainingStep(model.to(device), loss.to(device), autocast_dtype=None)
    params = [p for module in (model, loss) for p in module.parameters() if p.requires_grad]
    _, batches = reference_parts(sizes, sizes.finetune_batch, 1)
    generator = torch.Generator().manual_seed(0)
    batches = [dataclasses.replace(batch, images=torch.randint(
        0, 256, (sizes.finetune_batch, 3, sizes.crop, sizes.crop), dtype=torch.uint8, generator=generator)).to(device)
        for batch in batches]
    result = {"backbone": sizes.backbone, "batch": sizes.finetune_batch, "unfreeze": "all"}
    for amp in ctx["amps"]:
        result[amp] = timed_training(step, params, batches, amp=amp, sizes=sizes, device=device)
    return result


def section_eval(ctx: dict) -> dict:
    from eval.protocols import evaluate_protocol

    sizes, device = ctx["sizes"], ctx["device"]
    generator = torch.Generator().manual_seed(0)
    image_emb = torch.nn.functional.normalize(torch.randn(sizes.eval_images, 1024, generator=generator), dim=1)
    index = np.repeat(np.arange(sizes.eval_images), 5)
    captions = image_emb[index] + 12.0 * torch.nn.functional.normalize(torch.randn(len(index), 1024,
                                                                                   generator=generator), dim=1)
    image_emb, caption_emb = image_emb.to(device), torch.nn.functional.normalize(captions, dim=1).to(device)
    protocol = "coco-5k" if sizes.eval_images == 5000 else "all-images"
    seconds: dict[str, list[float]] = {"engine": [], "bare": []}
    metrics = {}
    for _ in range(sizes.rounds + 1):  # the first round warms up
        for name in seconds:
            synchronize(device)
            start = time.perf_counter()
            if name == "engine":
                metrics = evaluate_protocol(image_emb, caption_emb, index, protocol=protocol)
            else:
                image_emb @ caption_emb.T
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    engine, bare = (float(np.median(values[1:])) for values in seconds.values())
    return {"images": sizes.eval_images, "captions": len(index), "protocol": protocol, "engine_s": engine,
            "bare_s": bare, "ratio": engine / bare, "rsum": metrics.get("rsum")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def section_nccl(ctx: dict) -> dict:
    out = ctx["folder"] / "group.json"
    child = [str(Path(__file__).resolve().parent / "gpu_group.py"), str(out)]
    environment = dict(os.environ)
    if ctx["dry_run"]:  # torchrun's environment for one rank, without its agent process (seconds on a busy CPU)
        environment.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(
            free_port()))
        command = [sys.executable, *child, "--dry-run"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", *child]
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=max(ctx["budget"] - 5, 1))
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"torchrun exit {done.returncode}: {(done.stdout + done.stderr)[-3000:]}")
    result = json.loads(out.read_text())
    if result["max_grad_difference"] > 1e-5 or abs(result["loss_plain"] - result["loss_group"]) > 1e-5 * abs(
            result["loss_plain"]):
        raise RuntimeError(f"the group's step differs from the plain step: {result}")
    return result


def render_text(results: dict) -> str:
    """The results as plain lines: a header, then each section's status and its values, one per line."""
    lines = [results["machine"], f"dry run: {results['dry_run']}; started {results['started']}; "
             f"{results['seconds']:.0f} s of {TOTAL_BUDGET_S} s"]
    for name, section in results["sections"].items():
        lines.append(f"\n== {name}: {section['status']} ({section['seconds']:.1f} s of {section['budget_s']} s)")
        for key, value in section.get("result", {}).items():
            lines.append(f"  {key}: {json.dumps(value, default=str)}")
        if "error" in section:
            lines.append("  error: " + section["error"].replace("\n", "\n    "))
    return "\n".join(lines) + "\n"


def run_check(out_dir: Path, *, dry_run: bool, only: tuple[str, ...] = SECTIONS) -> dict:
    """Run the sections (each within its budget, errors recorded) and write out_dir/gpu_check.{json,txt} after
    each; return the results."""
    if not dry_run and not torch.cuda.is_available():
        raise SystemExit("error: torch sees no CUDA GPU; run with --dry-run on the CPU")
    device = torch.device("cpu" if dry_run else "cuda")
    amps = ("bf16", "fp16") if device.type == "cuda" else (("bf16",) if native_cpu_bf16() else ("none",))
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = {"machine": machine_line(), "gpus": gpu_names(), "torch": torch.__version__, "dry_run": dry_run,
               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": 0.0, "sections": {}}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
        ctx = {"sizes": DRY_SIZES if dry_run else Sizes(), "device": device, "amps": amps, "dry_run": dry_run,
               "folder": Path(folder), "workers": 0 if dry_run else min(8, available_cpus())}
        for name in only:
            left = TOTAL_BUDGET_S - (time.perf_counter() - started)
            ctx["budget"] = budget = min(BUDGETS_S[name], left)
            entry = results["sections"][name] = {"status": "running", "budget_s": BUDGETS_S[name], "seconds": 0.0}
            start = time.perf_counter()
            try:
                if left <= 0:
                    raise SectionTimeout(f"not started: {left:.0f} s of the check's {TOTAL_BUDGET_S} s were left")
                with time_budget(budget):
                    entry["result"] = globals()[f"section_{name}"](ctx)
                entry["status"] = "ok"
            except Exception as err:  # noqa: BLE001  (a failing section is recorded, the next one runs)
                entry["status"] = "timeout" if isinstance(err, (SectionTimeout, subprocess.TimeoutExpired)) else "error"
                entry["error"] = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=6)}"
            entry["seconds"] = time.perf_counter() - start
            results["seconds"] = time.perf_counter() - started
            (out_dir / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
            (out_dir / "gpu_check.txt").write_text(render_text(results))
            print(f"{name}: {entry['status']} ({entry['seconds']:.1f} s)", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "bench/out"), help="folder of the results files")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: every section's code path")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset to run")
    args = parser.parse_args()
    only = tuple(name.strip() for name in args.sections.split(","))
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    print(machine_line(), flush=True)
    results = run_check(Path(args.out), dry_run=args.dry_run, only=only)
    print(f"results: {Path(args.out) / 'gpu_check.txt'} and .json; {results['seconds']:.0f} s")


if __name__ == "__main__":
    main()
