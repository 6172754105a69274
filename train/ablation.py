"""`ablate` stage: a grid of losses x image features x text pooling, one seed and budget, one results table."""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from eval.config import EvalConfig
from eval.run import run_eval
from features.reader import FeatureStore
from train.config import (
    DEVICES, LEARNING_RATE, MARGIN, SPLIT_CHOICES, TEXT_POOLS, TrainConfig,
)
from train.run import CONFIG_FILE, check_store, run_train, validate_options

logger = logging.getLogger(__name__)

# Grid axes. "mh-warmup" is MH after --warmup-epochs epochs of SH (the guard against MH's slow start).
ABLATION_LOSSES = ("sh", "mh", "mh-warmup", "group", "lseh", "infonce")
# Image feature setting -> (TrainConfig.feature_mode, TrainConfig.image_pool).
IMAGE_FEATURES = {"1c": ("1c", "mean"), "10c": ("10c", "mean"), "10c-adaptive": ("10c-set", "adaptive")}
# Demo-sized budget (the paper: 30 epochs, 1024-d GRU, 300-d words); documented on each field.
ABLATION_EPOCHS = 10
ABLATION_EMBED_DIM = 256
ABLATION_WORD_DIM = 128
ABLATION_BATCH_SIZE = 128
WARMUP_EPOCHS = 2
PROTOCOL = "all-images"  # any test split size; the COCO/F30K protocols need their exact image counts
RESULT_FILE = "ablation-result.json"  # per run folder; its presence marks the run complete
SECONDS_FILE = "ablation-seconds.json"  # per run folder; wall-clock summed over sessions (resumes)
METRIC_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum", "i2t_medr", "t2i_medr")


@dataclass
class AblationConfig:
    """Options of the ablation grid; every run gets the same seed, epochs, batch size and model size."""

    store: str = field(default="", metadata={"help": "feature store (.h5) written by `extract`; 10c cells need "
                                                     "one extracted with --crops 10"})
    out_dir: str = field(default="runs/ablation", metadata={
        "help": "grid folder: one run folder per cell, ablation.md and ablation.json"})
    losses: tuple[str, ...] = field(default=ABLATION_LOSSES, metadata={
        "help": "losses: sh (VSE0), mh (VSE++), mh-warmup (SH for --warmup-epochs, then MH), group "
                "(Zhang et al., adaptive k), lseh (Gong & Cosma), infonce", "choices": ABLATION_LOSSES})
    image_features: tuple[str, ...] = field(default=tuple(IMAGE_FEATURES), metadata={
        "help": "image features: 1c center crop; 10c mean of the ten crops; 10c-adaptive the ten crops "
                "pooled by adaptive pooling (10c* need a --crops 10 store)", "choices": tuple(IMAGE_FEATURES)})
    text_pools: tuple[str, ...] = field(default=("last",), metadata={
        "help": "caption pooling over GRU states: last (paper), mean, adaptive, gpo", "choices": TEXT_POOLS})
    warmup_epochs: int = field(default=WARMUP_EPOCHS, metadata={
        "help": "SH epochs before MH in the mh-warmup cells (must be < --epochs)"})
    epochs: int = field(default=ABLATION_EPOCHS, metadata={
        "help": "training epochs per run (paper: 30; 10 sized for the demo data)"})
    lr: float = field(default=LEARNING_RATE, metadata={"help": "Adam learning rate (paper: 2e-4)"})
    lr_decay_epochs: int = field(default=0, metadata={
        "help": "multiply the lr by 0.1 every this many epochs; 0 = half of --epochs, rounded up "
                "(paper: 15 of 30)"})
    batch_size: int = field(default=ABLATION_BATCH_SIZE, metadata={"help": "captions per step (paper: 128)"})
    embed_dim: int = field(default=ABLATION_EMBED_DIM, metadata={
        "help": "joint embedding and GRU size (paper: 1024; 256 sized for CPU demo runs)"})
    word_dim: int = field(default=ABLATION_WORD_DIM, metadata={
        "help": "word embedding size (paper: 300; 128 sized for CPU demo runs)"})
    margin: float = field(default=MARGIN, metadata={"help": "hinge margin alpha of sh / mh (paper: 0.2)"})
    seed: int = field(default=0, metadata={"help": "seed of every run (init, caption order, crops)"})
    split: str = field(default="test", metadata={"help": "split each best.pt is evaluated on (all-images "
                                                         "protocol)", "choices": SPLIT_CHOICES})
    val_split: str = field(default="val", metadata={"help": "split that selects each run's best.pt",
                                                    "choices": SPLIT_CHOICES})
    use_restval: bool = field(default=False, metadata={"help": "add the restval split to training (paper: +rV)"})
    max_steps: int = field(default=0, metadata={"help": "stop each run after this many steps, 0 = no limit "
                                                        "(smoke tests)"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu or cuda",
                                                  "choices": DEVICES})

    def __post_init__(self) -> None:
        self.losses, self.image_features, self.text_pools = (
            tuple(self.losses), tuple(self.image_features), tuple(self.text_pools))  # JSON gives lists

    def validate(self) -> None:
        """Check the grid axes and the budget without touching the disk (ValueError naming the option)."""
        axes = {"losses": (self.losses, ABLATION_LOSSES), "image_features": (self.image_features, IMAGE_FEATURES),
                "text_pools": (self.text_pools, TEXT_POOLS)}
        for name, (values, valid) in axes.items():
            flag = "--" + name.replace("_", "-")
            if not values:
                raise ValueError(f"{flag} is empty; give at least one of {', '.join(valid)}")
            bad = [value for value in values if value not in valid]
            if bad:
                raise ValueError(f"{flag}: {bad} not among {', '.join(valid)}")
            if len(set(values)) != len(values):
                raise ValueError(f"{flag} {','.join(values)} repeats a value; list each once")
        for name in ("epochs", "batch_size", "embed_dim", "word_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_epochs", "lr_decay_epochs", "max_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if "mh-warmup" in self.losses and not 0 < self.warmup_epochs < self.epochs:
            raise ValueError(f"mh-warmup needs 0 < --warmup-epochs ({self.warmup_epochs}) < --epochs "
                             f"({self.epochs}); otherwise it is plain mh or plain sh")
        if self.split == self.val_split or self.split == "train" or (self.use_restval and self.split == "restval"):
            raise ValueError(f"--split {self.split!r} is used for training or model selection; evaluate on a "
                             "held-out split (Karpathy: test)")

    def to_dict(self) -> dict:
        """Plain JSON-able dict (tuples become lists)."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its axis values, folder name and training config."""

    loss: str
    image_features: str
    text_pool: str
    train_config: TrainConfig

    @property
    def name(self) -> str:
        return cell_name(self.loss, self.image_features, self.text_pool)

    @property
    def out_dir(self) -> Path:
        return Path(self.train_config.out_dir)


def cell_name(loss: str, image_features: str, text_pool: str) -> str:
    """Run folder name of a cell, e.g. "mh-warmup_10c-adaptive_last"."""
    return f"{loss}_{image_features}_{text_pool}"


def plan_grid(cfg: AblationConfig) -> list[Cell]:
    """The cells in grid order (loss, then image features, then text pooling, each in the order given)."""
    decay = cfg.lr_decay_epochs or -(-cfg.epochs // 2)
    cells = []
    for loss in cfg.losses:
        for image_features in cfg.image_features:
            for text_pool in cfg.text_pools:
                feature_mode, image_pool = IMAGE_FEATURES[image_features]
                name = cell_name(loss, image_features, text_pool)
                train_config = TrainConfig(
                    store=cfg.store, out_dir=str(Path(cfg.out_dir) / name), val_split=cfg.val_split,
                    use_restval=cfg.use_restval, feature_mode=feature_mode, image_pool=image_pool,
                    text_pool=text_pool, embed_dim=cfg.embed_dim, word_dim=cfg.word_dim,
                    loss="mh" if loss == "mh-warmup" else loss, margin=cfg.margin,
                    warmup_epochs=cfg.warmup_epochs if loss == "mh-warmup" else 0, epochs=cfg.epochs, lr=cfg.lr,
                    lr_decay_epochs=decay, batch_size=cfg.batch_size, max_steps=cfg.max_steps, seed=cfg.seed,
                    device=cfg.device)
                cells.append(Cell(loss, image_features, text_pool, train_config))
    return cells


def _comparable(config: dict) -> dict:
    """A saved TrainConfig dict with the fields that may differ between sessions of one run blanked."""
    return {**config, "resume": ""}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def check_cells(cfg: AblationConfig, cells: list[Cell]) -> dict:
    """Fail before any run on a cell the store or earlier results cannot serve; return the store's attrs."""
    if "lseh" in cfg.losses:
        try:
            importlib.import_module("train.semantic")  # scikit-learn and snowballstemmer
        except ImportError as err:
            raise ValueError(f"cells lseh_*: LSEH needs {err.name}; install it or drop lseh from --losses") from err
    with FeatureStore(cfg.store) as store:  # FileNotFoundError names the path
        for cell in cells:
            if cell.image_features != "1c" and store.crops != 10:
                raise ValueError(f"cell {cell.name}: image features {cell.image_features} need ten-crop features, "
                                 f"but {cfg.store} was extracted with crops={store.crops}; use --image-features 1c "
                                 "or re-extract with --crops 10")
            try:
                validate_options(cell.train_config)
                check_store(cell.train_config, store)
            except ValueError as err:
                raise ValueError(f"cell {cell.name}: {err}") from err
        store.require_complete([cfg.split])
        if len(store.image_indices([cfg.split])) == 0:
            raise ValueError(f"{cfg.store} has no extracted images in split {cfg.split!r}; pick another --split")
        attrs = dict(store.attrs)
    for cell in cells:
        _check_previous_session(cell, split=cfg.split)
    return attrs


def _check_previous_session(cell: Cell, *, split: str) -> None:
    """A run folder left by an earlier session must hold a run of exactly this cell's config (and test split)."""
    planned = _comparable(cell.train_config.to_dict())
    result_path, config_path = cell.out_dir / RESULT_FILE, cell.out_dir / CONFIG_FILE
    saved = None
    if result_path.is_file():
        result = _read_json(result_path)
        if result["split"] != split:
            raise ValueError(f"cell {cell.name}: {result_path} was tested on split {result['split']!r}, not "
                             f"{split!r}; use a new --out-dir, or delete that file to re-test the cell")
        saved = result["config"]
    elif config_path.is_file():
        saved = _read_json(config_path)
    if saved is None or _comparable(saved) == planned:
        return
    changed = ", ".join(f"{key}: {saved.get(key)!r} -> {planned.get(key)!r}" for key in sorted(planned)
                        if saved.get(key) != planned.get(key))
    raise ValueError(f"cell {cell.name}: {cell.out_dir} holds a run with other options ({changed}); use a new "
                     "--out-dir, or delete that folder to redo the cell")


def run_cell(cell: Cell, *, split: str) -> dict:
    """Train one cell (resuming from its last.pt if an earlier session stopped), test its best.pt; a result row."""
    train_config = cell.train_config
    last = cell.out_dir / "last.pt"
    if last.is_file():
        logger.info("cell %s: resuming the interrupted run from %s", cell.name, last)
        train_config = dataclasses.replace(train_config, resume=str(last))
    elif (cell.out_dir / CONFIG_FILE).is_file():
        logger.warning("cell %s: an earlier session stopped before its first checkpoint; starting again (its "
                       "metrics.jsonl keeps the lines of that attempt)", cell.name)
    seconds_path = cell.out_dir / SECONDS_FILE
    spent = _read_json(seconds_path) if seconds_path.is_file() else {"seconds": 0.0, "sessions": 0}
    start = time.perf_counter()
    try:
        summary = run_train(train_config)
        results = run_eval(EvalConfig(checkpoint=summary["best"], store=train_config.store, split=split,
                                      protocol=PROTOCOL, out=str(cell.out_dir / f"eval-{split}.json"),
                                      device=train_config.device))
    finally:  # an interrupted session's time still counts towards the run
        cell.out_dir.mkdir(parents=True, exist_ok=True)
        spent = {"seconds": spent["seconds"] + time.perf_counter() - start, "sessions": spent["sessions"] + 1}
        _write_json_atomic(seconds_path, spent)
    scores = results["protocols"][PROTOCOL]
    row = {"name": cell.name, "loss": cell.loss, "image_features": cell.image_features, "text_pool": cell.text_pool,
           "split": split, **{key: scores[key] for key in METRIC_KEYS}, "num_test_images": scores["num_images"],
           "best_val_rsum": summary["best_rsum"], "steps": summary["step"], "seconds": spent["seconds"],
           "sessions": spent["sessions"], "out_dir": str(cell.out_dir), "config": cell.train_config.to_dict()}
    _write_json_atomic(cell.out_dir / RESULT_FILE, row)
    return row


def machine_header(cfg: AblationConfig, store_attrs: dict) -> dict:
    """What the table's numbers depend on besides the cells: store, budget, machine, versions."""
    return {"store": cfg.store, "backbone": store_attrs.get("backbone"), "crops": store_attrs.get("crops"),
            "seed": cfg.seed, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "max_steps": cfg.max_steps,
            "embed_dim": cfg.embed_dim, "word_dim": cfg.word_dim, "lr": cfg.lr, "split": cfg.split,
            "protocol": PROTOCOL, "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def format_markdown(header: dict, rows: list[dict]) -> str:
    """The ablation report: a header list, then one table row per run in grid order."""
    lines = ["# Ablation", "",
             f"- store: `{header['store']}` (backbone {header['backbone']}, crops {header['crops']})",
             f"- budget: seed {header['seed']}, {header['epochs']} epochs, batch size {header['batch_size']}, "
             f"max steps {header['max_steps'] or 'none'}, embed dim {header['embed_dim']}, word dim "
             f"{header['word_dim']}, lr {header['lr']:g}",
             f"- test: split {header['split']}, protocol {header['protocol']}; val rsum selects best.pt",
             f"- machine: {header['processor']}, {header['cpu_count']} CPUs ({header['torch_threads']} torch "
             f"threads), torch {header['torch_version']}, Python {header['python_version']}",
             f"- written: {header['written']}", "",
             "| run | loss | image | text | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | rsum "
             "| val rsum | seconds |",
             "|---|---|---|---|" + "---:|" * 9]
    for row in rows:
        numbers = " | ".join(f"{row[key]:.1f}" for key in METRIC_KEYS[:7])
        lines.append(f"| {row['name']} | {row['loss']} | {row['image_features']} | {row['text_pool']} | {numbers} "
                     f"| {row['best_val_rsum']:.1f} | {row['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def write_report(cfg: AblationConfig, header: dict, rows: list[dict]) -> str:
    """Write ablation.md and ablation.json (atomically) into out_dir; return the Markdown."""
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = format_markdown(header, rows)
    tmp = out_dir / "ablation.md.tmp"
    tmp.write_text(markdown, encoding="utf-8")
    os.replace(tmp, out_dir / "ablation.md")
    _write_json_atomic(out_dir / "ablation.json", {"header": header, "ablation_config": cfg.to_dict(),
                                                   "runs": rows})
    return markdown


def run_ablation(cfg: AblationConfig) -> dict:
    """Run every cell of the grid (skipping cells finished by an earlier session), write and print the table."""
    cfg.validate()
    cells = plan_grid(cfg)
    store_attrs = check_cells(cfg, cells)  # every check before the first run
    header = machine_header(cfg, store_attrs)
    logger.info("ablation grid of %d runs into %s: %s", len(cells), cfg.out_dir, ", ".join(c.name for c in cells))
    rows, reused = [], []
    for number, cell in enumerate(cells, start=1):
        result_path = cell.out_dir / RESULT_FILE
        if result_path.is_file():  # its config was checked to match in check_cells
            logger.info("run %d/%d %s: skipped, result of an earlier session found in %s", number, len(cells),
                        cell.name, result_path)
            rows.append(_read_json(result_path))
            reused.append(cell.name)
        else:
            logger.info("run %d/%d %s", number, len(cells), cell.name)
            rows.append(run_cell(cell, split=cfg.split))
        write_report(cfg, header, rows)  # a table of the finished runs survives an interrupt
    if reused:
        logger.info("resumed the grid: %d of %d runs reused from an earlier session (%s)", len(reused), len(cells),
                    ", ".join(reused))
    markdown = write_report(cfg, header, rows)
    print(markdown, flush=True)
    out_dir = Path(cfg.out_dir)
    return {"runs": rows, "reused": reused, "markdown": str(out_dir / "ablation.md"),
            "json": str(out_dir / "ablation.json")}
