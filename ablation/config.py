"""AblationConfig and the grid it spans: losses x image features x text pooling, one seed and budget."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.choices import SPLITS, TEXT_POOLS
from common.config import StageConfig, option_name
from common.fields import device_field
from train.config import LEARNING_RATE, TrainConfig
from train.losses.hinge import MARGIN
from train.losses.lseh import LSEH_ALPHA

# Grid axes. "mh-warmup" is MH after --warmup-epochs epochs of SH (the guard against MH's slow start).
# Each loss of the grid -> the TrainConfig loss options of its cells.
LOSS_SETTINGS: dict[str, Callable[["AblationConfig"], dict]] = {
    "sh": lambda cfg: {"loss": "sh", "margin": cfg.margin},
    "mh": lambda cfg: {"loss": "mh", "margin": cfg.margin},
    "mh-warmup": lambda cfg: {"loss": "mh", "margin": cfg.margin, "warmup_epochs": cfg.warmup_epochs},
    "group": lambda cfg: {"loss": "group"},
    "lseh": lambda cfg: {"loss": "mh", "margin_source": "lseh", "margin": LSEH_ALPHA},
    "infonce": lambda cfg: {"loss": "infonce"},
}
ABLATION_LOSSES = tuple(LOSS_SETTINGS)
# Image feature setting -> (TrainConfig.feature_mode, TrainConfig.image_pool).
IMAGE_FEATURES = {"1c": ("1c", "mean"), "10c": ("10c", "mean"), "10c-adaptive": ("10c-set", "adaptive"),
                  "10c-gpo": ("10c-set", "gpo"), "regions": ("regions", "mean"),
                  "regions-adaptive": ("regions", "adaptive"), "regions-gpo": ("regions", "gpo")}
CNN_IMAGE_FEATURES = ("1c", "10c", "10c-adaptive")  # the default grid: a --crops 10 store's paper settings
# Demo-sized budget (the paper: 30 epochs, 1024-d GRU, 300-d words); documented on each field.
ABLATION_EPOCHS = 10
ABLATION_EMBED_DIM = 256
ABLATION_WORD_DIM = 128
ABLATION_BATCH_SIZE = 128
WARMUP_EPOCHS = 2


@dataclass
class AblationConfig(StageConfig):
    """Options of the ablation grid; every run gets the same seed, epochs, batch size and model size."""

    store: str = field(default="", metadata={"help": "feature store (.h5) written by `extract`; 10c cells need "
                                                     "one extracted with --crops 10", "required": True})
    out_dir: str = field(default="runs/ablation", metadata={
        "help": "grid folder: one run folder per cell, ablation.md and ablation.json"})
    losses: tuple[str, ...] = field(default=ABLATION_LOSSES, metadata={
        "help": "losses: sh (VSE0), mh (VSE++), mh-warmup (SH for --warmup-epochs, then MH), group "
                "(Zhang et al., adaptive k), lseh (Gong & Cosma), infonce", "choices": ABLATION_LOSSES})
    image_features: tuple[str, ...] = field(default=CNN_IMAGE_FEATURES, metadata={
        "help": "image features: 1c center crop; 10c mean of the ten crops; 10c-adaptive / 10c-gpo the ten crops "
                "pooled by adaptive pooling / GPO (10c* need a --crops 10 store); regions, regions-adaptive, "
                "regions-gpo a region store's vectors pooled by mean, adaptive pooling, GPO",
        "choices": tuple(IMAGE_FEATURES)})
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
                                                         "protocol)", "choices": SPLITS})
    val_split: str = field(default="val", metadata={"help": "split that selects each run's best.pt",
                                                    "choices": SPLITS})
    use_restval: bool = field(default=False, metadata={"help": "add the restval split to training (paper: +rV)"})
    max_steps: int = field(default=0, metadata={"help": "stop each run after this many steps, 0 = no limit "
                                                        "(smoke tests)"})
    device: str = device_field()

    def validate(self) -> None:
        """Check the grid axes and the budget without touching the disk (ValueError naming the option)."""
        super().validate()
        axes = {"losses": (self.losses, ABLATION_LOSSES), "image_features": (self.image_features, IMAGE_FEATURES),
                "text_pools": (self.text_pools, TEXT_POOLS)}
        for name, (values, valid) in axes.items():
            flag = option_name(name)
            if not values:
                raise ValueError(f"{flag} is empty; give at least one of {', '.join(valid)}")
            if len(set(values)) != len(values):
                raise ValueError(f"{flag} {','.join(values)} repeats a value; list each once")
        self.check_at_least(1, "epochs", "batch_size", "embed_dim", "word_dim")
        self.check_at_least(0, "warmup_epochs", "lr_decay_epochs", "max_steps")
        if "mh-warmup" in self.losses and not 0 < self.warmup_epochs < self.epochs:
            raise ValueError(f"mh-warmup needs 0 < --warmup-epochs ({self.warmup_epochs}) < --epochs "
                             f"({self.epochs}); otherwise it is plain mh or plain sh")
        if self.split == self.val_split or self.split == "train" or (self.use_restval and self.split == "restval"):
            raise ValueError(f"--split {self.split!r} is used for training or model selection; evaluate on a "
                             "held-out split (Karpathy: test)")


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
                    **LOSS_SETTINGS[loss](cfg), epochs=cfg.epochs, lr=cfg.lr, lr_decay_epochs=decay,
                    batch_size=cfg.batch_size, max_steps=cfg.max_steps, seed=cfg.seed, device=cfg.device)
                cells.append(Cell(loss, image_features, text_pool, train_config))
    return cells
