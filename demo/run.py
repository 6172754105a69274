"""`pipeline.py demo`: generate the synthetic dataset and run extract -> train -> finetune -> eval on it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.choices import CROP_COUNTS, FEATURE_MODES
from common.config import StageConfig
from common.files import atomic_write_json, atomic_write_text
from demo.pretrain import PretrainConfig, pretrain_demo_backbone
from demo.synthetic import generate_demo_dataset
from extract.config import ExtractConfig
from extract.run import run_extract
from report.config import ReportConfig
from report.run import run_report
from retrieval.evaluate import EvalConfig, run_eval
from train.config import TrainConfig
from train.finetune.config import FinetuneConfig
from train.finetune.run import run_finetune
from train.run import run_train

logger = logging.getLogger(__name__)

# Sized so the whole demo runs in a few minutes on 2 CPU cores (see README, "The demo").
DEMO_TRAIN_IMAGES = 400
DEMO_VAL_IMAGES = 50
DEMO_TEST_IMAGES = 50
DEMO_EMBED_DIM = 256  # the paper's 1024 works too, at ~4x the training time
DEMO_WORD_DIM = 128
DEMO_BATCH_SIZE = 64  # 2,000 train captions: ~31 steps per epoch
DEMO_TRAIN_EPOCHS = 20
DEMO_LR_DECAY_EPOCHS = 15
# On a small training set MH starts slowly (paper Fig. 2); the demo warms up with SH.
DEMO_WARMUP_EPOCHS = 5
DEMO_THREADS = 2  # the demo's torch threads: this project's machines have 2 cores
DEMO_FINETUNE_STEPS = 30  # half an epoch: the CNN forward at 224 px dominates the demo's time on a CPU


@dataclass
class DemoDataConfig(StageConfig):
    """Options of `pipeline.py demo-data`: only render the synthetic dataset (Karpathy JSON + images)."""

    out_dir: str = field(default="demo_out/data", metadata={"help": "folder for dataset_demo.json and images/"})
    num_train: int = field(default=DEMO_TRAIN_IMAGES, metadata={"help": "train images (5 captions each)"})
    num_val: int = field(default=DEMO_VAL_IMAGES, metadata={"help": "val images"})
    num_test: int = field(default=DEMO_TEST_IMAGES, metadata={"help": "test images"})
    num_restval: int = field(default=0, metadata={"help": "restval images (the paper's rV split)"})
    image_size: int = field(default=256, metadata={"help": "image side in pixels"})
    seed: int = field(default=0, metadata={"help": "seed of the scenes and captions"})
    overwrite: bool = field(default=False, metadata={"help": "replace a dataset generated with other options"})


def run_generate(cfg: DemoDataConfig) -> Path:
    """Render the dataset; return the path of its Karpathy JSON."""
    path = generate_demo_dataset(cfg.out_dir, num_train=cfg.num_train, num_val=cfg.num_val, num_test=cfg.num_test,
                                 num_restval=cfg.num_restval, image_size=cfg.image_size, seed=cfg.seed,
                                 overwrite=cfg.overwrite)
    logger.info("demo dataset: %s (images under %s)", path, path.parent)
    return path


@dataclass
class DemoConfig(StageConfig):
    """Options of `pipeline.py demo`; everything lands in out_dir."""

    out_dir: str = field(default="demo_out", metadata={"help": "folder of every artifact of the demo"})
    num_train: int = field(default=DEMO_TRAIN_IMAGES, metadata={"help": "train images (5 captions each)"})
    num_val: int = field(default=DEMO_VAL_IMAGES, metadata={"help": "val images"})
    num_test: int = field(default=DEMO_TEST_IMAGES, metadata={"help": "test images"})
    pretrain: bool = field(default=True, metadata={
        "help": "first train the demo's resnet18 on the generated attribute labels (no ImageNet weights can be "
                "assumed); --no-pretrain extracts with random init"})
    pretrain_epochs: int = field(default=6, metadata={"help": "epochs of the demo CNN pretraining"})
    # 1C by default: on 2 CPU cores resnet18 runs at ~17 crops/s, so 10 crops make extraction 5 min, not 30 s.
    crops: int = field(default=1, metadata={
        "help": "extract crops: 1 (1C) or 10 (10C, also writes 1C; ~10x the extraction time; pair it with "
                "--feature-mode 10c)", "choices": CROP_COUNTS})
    feature_mode: str = field(default="1c", metadata={
        "help": "features the train stage reads (1c, 10c, 10c-random, 10c-set)",
        "choices": FEATURE_MODES})
    loss: str = field(default="mh", metadata={"help": "train loss", "choices": ("sh", "mh", "group", "infonce")})
    warmup_epochs: int = field(default=DEMO_WARMUP_EPOCHS, metadata={"help": "SH epochs before MH"})
    train_epochs: int = field(default=DEMO_TRAIN_EPOCHS, metadata={"help": "train-stage epochs"})
    embed_dim: int = field(default=DEMO_EMBED_DIM, metadata={"help": "joint space and GRU size (paper: 1024)"})
    word_dim: int = field(default=DEMO_WORD_DIM, metadata={"help": "word embedding size (paper: 300)"})
    batch_size: int = field(default=DEMO_BATCH_SIZE, metadata={"help": "captions per step"})
    finetune: bool = field(default=True, metadata={"help": "run the finetune stage (--no-finetune skips it)"})
    finetune_steps: int = field(default=DEMO_FINETUNE_STEPS, metadata={
        "help": "finetune steps (~3 s each on 2 CPU cores at batch 32; 63 steps = one epoch)"})
    finetune_unfreeze: str = field(default="1", metadata={"help": "CNN stages to unfreeze ('all' or last N)"})
    finetune_batch_size: int = field(default=32, metadata={"help": "captions per finetune step"})
    workers: int = field(default=2, metadata={"help": "image decoding workers"})
    seed: int = field(default=0, metadata={"help": "seed of data, init, order and crops"})
    # Float sums split over threads round differently, so a fixed count gives the same numbers on any machine
    # with the same CPU instruction set, whatever its number of cores.
    threads: int = field(default=DEMO_THREADS, metadata={
        "help": "torch threads of every stage (fixed for numbers that do not depend on the machine's core count)"})


def _stage_configs(cfg: DemoConfig, dataset_json: Path, weights: str) -> dict:
    """The four stage configs the demo runs, as a user would write them."""
    out = Path(cfg.out_dir)
    store = str(out / "features.h5")
    extract = ExtractConfig(dataset=str(dataset_json), image_root=str(dataset_json.parent), out=store,
                            backbone="resnet18", weights=weights, crops=cfg.crops, batch_size=16,
                            workers=cfg.workers, seed=cfg.seed)
    train = TrainConfig(store=store, out_dir=str(out / "train"), feature_mode=cfg.feature_mode, loss=cfg.loss,
                        warmup_epochs=cfg.warmup_epochs, epochs=cfg.train_epochs, embed_dim=cfg.embed_dim,
                        word_dim=cfg.word_dim, batch_size=cfg.batch_size, lr_decay_epochs=DEMO_LR_DECAY_EPOCHS,
                        seed=cfg.seed, device="cpu", overwrite=True)
    finetune = FinetuneConfig(checkpoint=str(out / "train" / "best.pt"), out_dir=str(out / "finetune"),
                              epochs=1, max_steps=cfg.finetune_steps, unfreeze=cfg.finetune_unfreeze,
                              batch_size=cfg.finetune_batch_size, workers=cfg.workers, seed=cfg.seed,
                              device="cpu", weights=weights if weights != "none" else "", overwrite=True)
    evals = {stage: EvalConfig(checkpoint=str(out / stage / "best.pt"), split="test", protocol="all-images",
                               out=str(out / f"eval-{stage}.json"), workers=cfg.workers, device="cpu")
             for stage in ("train", "finetune")}
    return {"extract": extract, "train": train, "finetune": finetune, "eval": evals}


def _recall_table(rows: dict[str, dict]) -> str:
    """Markdown table of R@K after each stage, with the chance level of the same test split (eval's) for reference."""
    keys = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"]
    chance = next(iter(rows.values()))["chance"]
    lines = ["| after | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, scores in {**rows, "chance": chance}.items():
        lines.append(f"| {name} | " + " | ".join(f"{scores[key]:.1f}" for key in keys) + " |")
    return "\n".join(lines)


def run_demo(cfg: DemoConfig) -> dict:
    """Generate -> (pretrain) -> extract -> train -> (finetune) -> eval; print and save the recall table."""
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save_json(out / "demo.config.json")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    dataset_json = run_generate(DemoDataConfig(out_dir=str(out / "data"), num_train=cfg.num_train,
                                               num_val=cfg.num_val, num_test=cfg.num_test, seed=cfg.seed))
    timings["generate"] = time.perf_counter() - start
    weights = "none"
    if cfg.pretrain:
        start = time.perf_counter()
        weights_path = out / "demo_resnet18.pth"
        if not weights_path.is_file():  # a rerun of the demo reuses its CNN
            pretrain_demo_backbone(PretrainConfig(dataset_json=str(dataset_json), image_root=str(dataset_json.parent),
                                                  out_weights=str(weights_path), epochs=cfg.pretrain_epochs,
                                                  seed=cfg.seed))
        weights = str(weights_path)
        timings["pretrain"] = time.perf_counter() - start
    stages = _stage_configs(cfg, dataset_json, weights)
    results: dict[str, dict] = {}
    for name, run in (("extract", run_extract), ("train", run_train), ("finetune", run_finetune)):
        if name == "finetune" and not cfg.finetune:
            continue
        start = time.perf_counter()
        run(stages[name])
        timings[name] = time.perf_counter() - start
        if name != "extract":
            scores = run_eval(stages["eval"][name])["protocols"]["all-images"]
            results[name] = {key: value for key, value in scores.items() if key != "folds"}
    table = _recall_table(results)
    summary = {"recall": results, "seconds": {k: round(v, 1) for k, v in timings.items()}, "table": table}
    atomic_write_json(out / "demo_results.json", summary)
    atomic_write_text(out / "demo_results.md", table + "\n")
    print(f"\nRecall@K on the {cfg.num_test} test images ({cfg.num_test * 5} captions), all-images protocol:\n")
    print(table)
    print("\nseconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print(f"artifacts in {out}/ (features.h5, train/, finetune/, eval-*.json, demo_results.md)")
    summary["reports"] = [run_report(ReportConfig(run_dir=str(out / name), workers=cfg.workers, device="cpu"))["index"]
                          for name in results]  # train, finetune: each run's HTML report, its path printed
    return summary
