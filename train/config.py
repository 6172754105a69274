"""TrainConfig (stage 2 options, paper defaults named once) and PRESETS of the papers' settings."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

# VSE++ (Faghri et al., BMVC 2018) and its reference code.
EMBED_DIM = 1024  # joint space and GRU hidden size
WORD_DIM = 300  # word embedding size
VOCAB_MIN_COUNT = 4  # words seen fewer times in train captions map to <unk>
MARGIN = 0.2  # hinge margin alpha
ORDER_MARGIN = 0.05  # Order++ margin (paper Table 4, after Vendrov et al.)
EPOCHS = 30  # 15 at lr 2e-4, then 15 at 2e-5
LEARNING_RATE = 2e-4
LR_DECAY_EPOCHS = 15  # lr is multiplied by LR_DECAY_FACTOR every LR_DECAY_EPOCHS epochs
LR_DECAY_FACTOR = 0.1
BATCH_SIZE = 128
GRAD_CLIP = 2.0  # max global gradient norm
# Zhang et al. (EACL 2023) dynamic group of hard negatives, authors' defaults.
GROUP_TEMPERATURE = 0.05
GROUP_GAMMA = 1.25
GROUP_K = 1  # used by group_k_mode "constant"
# LSEH (Gong & Cosma, 2023), the authors' code.
LSEH_ALPHA = 0.185
LSEH_LAMBDA = 0.025

FEATURE_MODES = ("1c", "10c", "10c-random", "10c-set")
IMAGE_POOLS = ("mean", "adaptive")
TEXT_POOLS = ("last", "mean", "adaptive", "gpo")
LOSSES = ("sh", "mh", "order", "group", "lseh", "infonce")
REDUCTIONS = ("sum", "mean")
GROUP_K_MODES = ("adaptive", "constant", "random")
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("none", "bf16", "fp16")
SPLIT_CHOICES = ("train", "val", "test", "restval")


@dataclass
class TrainConfig:
    """Every option of the train stage; saved as config.json in out_dir and inside each checkpoint."""

    # paths
    store: str = field(default="", metadata={"help": "feature store (.h5) written by `extract`"})
    out_dir: str = field(default="runs/train", metadata={"help": "run folder: config.json, vocab.json, "
                                                                 "metrics.jsonl, last.pt, best.pt"})
    resume: str = field(default="", metadata={"help": "checkpoint to resume from (e.g. RUN/last.pt); a missing "
                                                      "file is an error; empty = start fresh"})
    # data
    train_splits: tuple[str, ...] = field(default=("train",), metadata={
        "help": "splits to train on (Karpathy: train)", "choices": SPLIT_CHOICES})
    use_restval: bool = field(default=False, metadata={"help": "add the restval split to training (paper: +rV)"})
    val_split: str = field(default="val", metadata={"help": "split used for validation / best checkpoint",
                                                    "choices": SPLIT_CHOICES})
    # "1c" is the default: it is in every store (10c needs --crops 10), it is the paper's precomputed
    # baseline (Table 1 row 1.6, Table 3 row 3.10), and 10C erases left/right (see NOTES).
    feature_mode: str = field(default="1c", metadata={
        "help": "image features: 1c center crop [paper 1C]; 10c mean of ten crops [paper 10C]; 10c-random one "
                "random crop per caption and step; 10c-set all ten, pooled by --image-pool (paper: 1c)",
        "choices": FEATURE_MODES})
    image_pool: str = field(default="mean", metadata={
        "help": "pooling of a crop set (only with --feature-mode 10c-set): mean or adaptive (Zhang et al.)",
        "choices": IMAGE_POOLS})
    text_pool: str = field(default="last", metadata={
        "help": "caption pooling over GRU states: last (paper), mean, adaptive (Zhang et al.), gpo (VSE-inf)",
        "choices": TEXT_POOLS})
    # model
    embed_dim: int = field(default=EMBED_DIM, metadata={"help": "joint embedding and GRU size (paper: 1024)"})
    word_dim: int = field(default=WORD_DIM, metadata={"help": "word embedding size (paper: 300)"})
    vocab_min_count: int = field(default=VOCAB_MIN_COUNT, metadata={
        "help": "min train-caption count of a word to get its own id (reference: 4)"})
    no_imgnorm: bool = field(default=False, metadata={"help": "do not L2-normalise image embeddings "
                                                              "(paper: normalised)"})
    abs_embeddings: bool = field(default=False, metadata={"help": "absolute value of both embeddings "
                                                                  "(order embeddings, paper Table 4)"})
    caption_head: bool = field(default=False, metadata={"help": "extra linear layer after caption pooling "
                                                                "(paper: none)"})
    # loss
    loss: str = field(default="mh", metadata={
        "help": "sh (sum of hinges), mh (max of hinges, VSE++), order (order sim; use margin 0.05 and "
                "--abs-embeddings as Table 4, or the order++ preset), group (Zhang et al.), lseh, infonce",
        "choices": LOSSES})
    margin: float = field(default=MARGIN, metadata={"help": "hinge margin alpha (paper: 0.2; order: 0.05)"})
    reduction: str = field(default="sum", metadata={"help": "hinge reduction over the batch (paper: sum)",
                                                    "choices": REDUCTIONS})
    warmup_epochs: int = field(default=0, metadata={
        "help": "epochs trained with SH before the configured hinge loss (0 = none)"})
    group_k_mode: str = field(default="adaptive", metadata={
        "help": "number of hard negatives k for --loss group: adaptive (Zhang et al.), constant, random",
        "choices": GROUP_K_MODES})
    group_k: int = field(default=GROUP_K, metadata={"help": "k for --group-k-mode constant"})
    group_temperature: float = field(default=GROUP_TEMPERATURE, metadata={
        "help": "softmax temperature tau of the group loss (authors: 0.05)"})
    group_gamma: float = field(default=GROUP_GAMMA, metadata={"help": "gamma of adaptive k (authors: 1.25)"})
    lseh_alpha: float = field(default=LSEH_ALPHA, metadata={"help": "LSEH base margin (authors' code: 0.185)"})
    lseh_lambda: float = field(default=LSEH_LAMBDA, metadata={"help": "LSEH semantic margin weight "
                                                                      "(authors' code: 0.025)"})
    # optimisation
    epochs: int = field(default=EPOCHS, metadata={"help": "training epochs (paper: 30)"})
    lr: float = field(default=LEARNING_RATE, metadata={"help": "Adam learning rate (paper: 2e-4)"})
    lr_decay_epochs: int = field(default=LR_DECAY_EPOCHS, metadata={
        "help": "multiply the lr by 0.1 every this many epochs (paper: 15)"})
    batch_size: int = field(default=BATCH_SIZE, metadata={"help": "captions per step (paper: 128)"})
    grad_clip: float = field(default=GRAD_CLIP, metadata={"help": "max gradient norm, 0 = off (reference: 2.0)"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many steps in total, 0 = no limit "
                                                        "(smoke tests)"})
    # run
    val_every_steps: int = field(default=0, metadata={"help": "also validate every N steps, 0 = per epoch only"})
    log_every: int = field(default=10, metadata={"help": "append a metrics.jsonl line every N steps"})
    workers: int = field(default=0, metadata={"help": "DataLoader worker processes for batches (0 = main)"})
    seed: int = field(default=0, metadata={"help": "seed of init, caption order and random crops"})
    overwrite: bool = field(default=False, metadata={
        "help": "start afresh in an out-dir that holds another run's checkpoints (they are deleted)"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu or cuda",
                                                  "choices": DEVICES})
    amp: str = field(default="none", metadata={"help": "autocast on cuda: none, bf16 or fp16 (with GradScaler)",
                                               "choices": AMP_MODES})

    def __post_init__(self) -> None:
        self.train_splits = tuple(self.train_splits)  # JSON gives a list

    def all_train_splits(self) -> tuple[str, ...]:
        """Training splits, with restval added when use_restval."""
        if self.use_restval and "restval" not in self.train_splits:
            return self.train_splits + ("restval",)
        return self.train_splits

    def to_dict(self) -> dict:
        """Plain JSON-able dict (tuples become lists)."""
        data = dataclasses.asdict(self)
        data["train_splits"] = list(self.train_splits)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Rebuild from to_dict(); unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; the config was written by another "
                             "version of this code, remove them or rerun with a fresh config")
        return cls(**data)

    def save_json(self, path: str | Path) -> None:
        """Write the config as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def from_json(cls, path: str | Path) -> "TrainConfig":
        """Read a config written by save_json."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no config file at {str(path)!r}")
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


# Named paper settings: field overrides applied on top of the defaults (and below explicit options).
PRESETS: dict[str, dict] = {
    # VSE++ on COCO with precomputed ResNet152 features, 1C (paper Table 1 row 1.6 is VGG19; same recipe).
    "vsepp-coco-1c": {"feature_mode": "1c", "loss": "mh", "use_restval": False},
    # COCO 10C+rV as in Table 4.
    "vsepp-coco-10c-rv": {"feature_mode": "10c", "loss": "mh", "use_restval": True},
    # VSE0 baseline (sum of hinges).
    "vse0": {"loss": "sh"},
    # Order++ (paper Table 4): order similarity, margin 0.05, absolute-value embeddings, 10C+rV.
    "order++": {"loss": "order", "margin": ORDER_MARGIN, "abs_embeddings": True, "feature_mode": "10c",
                "use_restval": True},
    # Zhang et al.: group of hard negatives with adaptive pooling of text and of the ten crops.
    "zhang-group-adaptive": {"loss": "group", "text_pool": "adaptive", "image_pool": "adaptive",
                             "feature_mode": "10c-set"},
    # LSEH (Gong & Cosma): semantically enhanced margins with MH.
    "lseh": {"loss": "lseh"},
}


def apply_preset(config: TrainConfig, name: str) -> TrainConfig:
    """Return a copy of `config` with the overrides of PRESETS[name]."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}")
    return dataclasses.replace(config, **PRESETS[name])


# Stage 3, fine-tuning. The VSE++ paper (Sec. 4): fine-tuned models start from a model trained for 30 epochs
# on a fixed image encoder and train for 15 more epochs at learning rate 2e-5; the reference code
# (fartashf/vsepp, --finetune) uses one Adam lr for the CNN and the rest, with batch 128 and grad clip 2.
FINETUNE_EPOCHS = 15
FINETUNE_LR = 2e-5
FINETUNE_WORKERS = 2
RC_MODES = ("paper", "resized")
# Fields a fine-tune takes from its train-stage checkpoint (model shape, vocabulary splits, loss): left at the
# TrainConfig default they are replaced by the checkpoint's value; any other value must equal it (ValueError).
# The CLI may hide them for `finetune`.
CHECKPOINT_FIELDS = ("train_splits", "use_restval", "val_split", "feature_mode", "image_pool", "text_pool",
                     "embed_dim", "word_dim", "vocab_min_count", "no_imgnorm", "abs_embeddings", "caption_head",
                     "loss", "margin", "reduction", "group_k_mode", "group_k", "group_temperature", "group_gamma",
                     "lseh_alpha", "lseh_lambda")


@dataclass
class FinetuneConfig(TrainConfig):
    """Every option of the finetune stage (CNN unfrozen, random crops of the raw images).

    A TrainConfig, so the Trainer, the loss and the checkpoints are shared with stage 2; the fields in
    CHECKPOINT_FIELDS are resolved from the train-stage checkpoint by train.finetune.resolve_config.
    """

    checkpoint: str = field(default="", metadata={
        "help": "train-stage checkpoint (RUN/best.pt) to initialise from; its model, vocabulary and loss are kept"})
    store: str = field(default="", metadata={
        "help": "feature store whose backbone, weights and images to use (default: the checkpoint's store)"})
    image_root: str = field(default="", metadata={
        "help": "folder of the raw images (default: the store's image_root attribute)"})
    weights: str = field(default="", metadata={
        "help": "CNN weight file; its sha256 must equal the store's weights_sha256 (default: the store's "
                "weights_name in the torch hub cache, or the path in <store>.extract.json; unused for random init)"})
    out_dir: str = field(default="runs/finetune", metadata={
        "help": "run folder: config.json, vocab.json, metrics.jsonl, last.pt, best.pt"})
    unfreeze: str = field(default="all", metadata={
        "help": "CNN stages to train: 'all', or N = the last N stages (resnet: stem, layer1-4; vgg19: 5 conv "
                "blocks, fc6, fc7); 0 = CNN frozen"})
    cnn_lr: float = field(default=FINETUNE_LR, metadata={
        "help": "Adam learning rate of the CNN (paper and reference code: 2e-5, the same as --lr)"})
    lr: float = field(default=FINETUNE_LR, metadata={
        "help": "Adam learning rate of the image head and caption encoder (paper: 2e-5)"})
    epochs: int = field(default=FINETUNE_EPOCHS, metadata={"help": "fine-tuning epochs (paper: 15)"})
    # The paper's text describes RC as one random 224 crop of the 256x256 resize plus a flip; the reference
    # code used RandomResizedCrop(224). "paper" is the default because it is what the paper reports.
    rc: str = field(default="paper", metadata={
        "help": "random crop: paper = resize 256x256, random 224 crop, random flip (paper RC); resized = "
                "RandomResizedCrop(224, scale 0.08-1) + flip (reference code)", "choices": RC_MODES})
    train_bn: bool = field(default=False, metadata={
        "help": "train BatchNorm (running stats and affine) of the unfrozen stages (default: frozen, better for "
                "small batches)"})
    grad_checkpointing: bool = field(default=False, metadata={
        "help": "recompute the activations of the unfrozen CNN stages in backward (less memory, ~30% slower; "
                "fits batch 128 on small GPUs; needs frozen BatchNorm)"})
    channels_last: bool = field(default=True, metadata={
        "help": "run the CNN in channels_last memory format (faster on recent CPUs and GPUs)"})
    workers: int = field(default=FINETUNE_WORKERS, metadata={
        "help": "DataLoader worker processes decoding images (0 = in the main process)"})
