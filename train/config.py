"""TrainConfig (stage 2 options, paper defaults named once) and PRESETS of the papers' settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.choices import (
    AMP_MODES, FEATURE_MODES, GROUP_K_MODES, IMAGE_POOLS, LOSSES, MARGIN_SOURCES, REDUCTIONS,
    SET_FEATURE_MODES, SIMILARITIES, SPLITS, TEXT_POOLS, TOKENIZERS,
)
from common.config import StageConfig, option_name
from common.fields import device_field
from train.losses import unused_loss_options
from train.losses.group import GROUP_GAMMA, GROUP_K, GROUP_TEMPERATURE
from train.losses.hinge import MARGIN, ORDER_MARGIN
from train.losses.lseh import LSEH_ALPHA, LSEH_LAMBDA
from train.tensorboard import check_tensorboard_installed

# VSE++ (Faghri et al., BMVC 2018) and its reference code.
EMBED_DIM = 1024  # joint space and GRU hidden size
WORD_DIM = 300  # word embedding size
VOCAB_MIN_COUNT = 4  # words seen fewer times in train captions map to <unk>
EPOCHS = 30  # 15 at lr 2e-4, then 15 at 2e-5
LEARNING_RATE = 2e-4
LR_DECAY_EPOCHS = 15  # lr is multiplied by LR_DECAY_FACTOR every LR_DECAY_EPOCHS epochs
LR_DECAY_FACTOR = 0.1
BATCH_SIZE = 128
GRAD_CLIP = 2.0  # max global gradient norm


@dataclass
class TrainConfig(StageConfig):
    """Every option of the train stage; saved as config.json in out_dir and inside each checkpoint."""

    # paths
    store: str = field(default="", metadata={"help": "feature store (.h5) written by `extract`", "required": True})
    out_dir: str = field(default="runs/train", metadata={"help": "run folder: config.json, vocab.json, "
                                                                 "metrics.jsonl, last.pt, best.pt"})
    resume: str = field(default="", metadata={"help": "checkpoint to resume from (e.g. RUN/last.pt); a missing "
                                                      "file is an error; empty = start fresh"})
    # data
    train_splits: tuple[str, ...] = field(default=("train",), metadata={
        "help": "splits to train on (Karpathy: train)", "choices": SPLITS})
    use_restval: bool = field(default=False, metadata={"help": "add the restval split to training (paper: +rV)"})
    val_split: str = field(default="val", metadata={"help": "split used for validation / best checkpoint",
                                                    "choices": SPLITS})
    # "1c" is the default: it is in every store (10c needs --crops 10), it is the paper's precomputed
    # baseline (Table 1 row 1.6, Table 3 row 3.10), and the 10-crop mean erases left/right.
    feature_mode: str = field(default="1c", metadata={
        "help": "image features: 1c center crop [paper 1C]; 10c mean of ten crops [paper 10C]; 10c-random one "
                "random crop per caption and step; 10c-set all ten, pooled by --image-pool; regions the K "
                "vectors of a region store (import-features), pooled by --image-pool (paper: 1c)",
        "choices": FEATURE_MODES})
    image_pool: str = field(default="mean", metadata={
        "help": "pooling of an image's set (--feature-mode 10c-set or regions): mean, adaptive (Zhang et al.) "
                "or gpo (VSE-inf)", "choices": IMAGE_POOLS})
    region_drop: float = field(default=0.0, metadata={
        "help": "in training, drop each vector of an image's set (regions or 10c-set crops) with this "
                "probability, keeping at least one (VSE-inf: 0.2; 0 = off); never in validation or eval"})
    text_pool: str = field(default="last", metadata={
        "help": "caption pooling over GRU states: last (paper), mean, adaptive (Zhang et al.), gpo (VSE-inf)",
        "choices": TEXT_POOLS})
    # model
    embed_dim: int = field(default=EMBED_DIM, metadata={"help": "joint embedding and GRU size (paper: 1024)"})
    word_dim: int = field(default=WORD_DIM, metadata={"help": "word embedding size (paper: 300)"})
    vocab_min_count: int = field(default=VOCAB_MIN_COUNT, metadata={
        "help": "min train-caption count of a word to get its own id (reference: 4)"})
    tokenizer: str = field(default="basic", metadata={
        "help": "how captions become words: basic (this project's) or nltk (the reference code's word_tokenize, "
                "as its released models read text); recorded in vocab.json", "choices": TOKENIZERS})
    image_norm: bool = field(default=True, metadata={"help": "L2-normalise image embeddings (paper: yes)"})
    feature_norm: bool = field(default=False, metadata={
        "help": "L2-normalise each image feature vector before the projection (the reference code's full-image "
                "encoder does; its precomputed-feature one does not)"})
    abs_embeddings: bool = field(default=False, metadata={"help": "absolute value of both embeddings "
                                                                  "(order embeddings, paper Table 4)"})
    caption_head: bool = field(default=False, metadata={"help": "extra linear layer after caption pooling "
                                                                "(paper: none)"})
    # loss: how negatives combine, the similarity, the margin
    loss: str = field(default="mh", metadata={
        "help": "sh (sum of hinges, VSE0), mh (max of hinges, VSE++), group (group of hard negatives, Zhang et "
                "al.), infonce (symmetric InfoNCE, learned temperature)", "choices": LOSSES})
    similarity: str = field(default="cosine", metadata={
        "help": "cosine (paper) or order (order embeddings -||max(0, c - i)||; with --margin 0.05 and "
                "--abs-embeddings as Table 4's Order++, or the order++ preset)", "choices": SIMILARITIES})
    margin: float = field(default=MARGIN, metadata={
        "help": "hinge margin alpha of sh/mh (paper: 0.2; Order++: 0.05; LSEH: 0.185), also the group loss's "
                "margin (authors: 0.2)"})
    margin_source: str = field(default="constant", metadata={
        "help": "sh/mh margin: constant (alpha, the paper) or lseh (alpha + lambda x semantic similarity of the "
                "captions, Gong & Cosma)", "choices": MARGIN_SOURCES})
    lseh_lambda: float = field(default=LSEH_LAMBDA, metadata={
        "help": "weight lambda of LSEH's semantic margin (authors' code: 0.025)"})
    reduction: str = field(default="sum", metadata={"help": "sh/mh reduction over the batch (paper: sum)",
                                                    "choices": REDUCTIONS})
    warmup_epochs: int = field(default=0, metadata={
        "help": "epochs of SH before mh takes over (0 = none; guards MH's slow start on small data)"})
    group_k_mode: str = field(default="adaptive", metadata={
        "help": "number of hard negatives k of the group loss: adaptive (Zhang et al.), constant, random",
        "choices": GROUP_K_MODES})
    group_k: int = field(default=GROUP_K, metadata={"help": "k of --group-k-mode constant (authors: 3)"})
    group_temperature: float = field(default=GROUP_TEMPERATURE, metadata={
        "help": "softmax temperature tau of the group loss (authors: 0.05)"})
    group_gamma: float = field(default=GROUP_GAMMA, metadata={
        "help": "gamma of the group loss's adaptive k (authors: 1.25)"})
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
    tensorboard: bool = field(default=False, metadata={
        "help": "also write metrics.jsonl's scalars for TensorBoard into RUN/tensorboard (pip install tensorboard)"})
    workers: int = field(default=0, metadata={"help": "DataLoader worker processes for batches (0 = main)"})
    seed: int = field(default=0, metadata={"help": "seed of init, caption order and random crops"})
    overwrite: bool = field(default=False, metadata={
        "help": "start afresh in an out-dir that holds another run's checkpoints (they are deleted)"})
    device: str = device_field()
    amp: str = field(default="none", metadata={"help": "autocast: none, bf16 or fp16 (with GradScaler) on cuda, "
                                                       "bf16 on a CPU with native bf16 (AMX, AVX512-BF16)",
                                               "choices": AMP_MODES})

    def all_train_splits(self) -> tuple[str, ...]:
        """Training splits, with restval added when use_restval."""
        if self.use_restval and "restval" not in self.train_splits:
            return self.train_splits + ("restval",)
        return self.train_splits

    def validate(self) -> None:
        """Check choices, numbers and option combinations without touching the disk (ValueError)."""
        super().validate()
        if not self.train_splits:
            raise ValueError("--train-splits is empty; give at least one split, e.g. train")
        if self.val_split in self.all_train_splits():
            raise ValueError(f"--val-split {self.val_split!r} is also a training split; validate on held-out data")
        self.check_at_least(1, "embed_dim", "word_dim", "vocab_min_count", "epochs", "batch_size", "lr_decay_epochs",
                            "group_k")
        self.check_at_least(0, "max_steps", "val_every_steps", "workers", "warmup_epochs", "grad_clip", "margin",
                            "lseh_lambda", "log_every")
        if not self.lr > 0 or not self.group_temperature > 0:
            raise ValueError(f"--lr ({self.lr}) and --group-temperature ({self.group_temperature}) must be > 0")
        if self.feature_mode not in SET_FEATURE_MODES and (self.image_pool != "mean" or self.region_drop):
            flag = f"--image-pool {self.image_pool}" if self.image_pool != "mean" else f"--region-drop {self.region_drop}"
            raise ValueError(f"{flag} works on an image's set, but --feature-mode is {self.feature_mode!r}; use "
                             f"--feature-mode 10c-set (a --crops 10 store) or regions (a region store)")
        if not 0 <= self.region_drop < 1:
            raise ValueError(f"--region-drop {self.region_drop} must be a probability in [0, 1)")
        if self.tensorboard:
            check_tensorboard_installed()
        unused = unused_loss_options(self)
        if unused:
            flags = ", ".join(f"{option_name(name)} {getattr(self, name)}" for name in unused)
            raise ValueError(f"--loss {self.loss} (margin source {self.margin_source}, group k mode "
                             f"{self.group_k_mode}) does not use {flags}; drop it or pick a loss that does")


# Named paper settings: field overrides applied on top of the defaults (and below explicit options).
PRESETS: dict[str, dict] = {
    # VSE++ on COCO with precomputed features, 1C (paper Table 1 row 1.6 is VGG19; same recipe).
    "vsepp-coco-1c": {"feature_mode": "1c", "loss": "mh", "use_restval": False},
    # COCO 10C+rV as in Table 4.
    "vsepp-coco-10c-rv": {"feature_mode": "10c", "loss": "mh", "use_restval": True},
    # VSE0 baseline (sum of hinges).
    "vse0": {"loss": "sh"},
    # Order++ (paper Table 4): order similarity, margin 0.05, absolute-value embeddings, 10C+rV.
    "order++": {"loss": "mh", "similarity": "order", "margin": ORDER_MARGIN, "abs_embeddings": True,
                "feature_mode": "10c", "use_restval": True},
    # Zhang et al.: group of hard negatives with adaptive pooling of text and of the ten crops.
    "zhang-group-adaptive": {"loss": "group", "text_pool": "adaptive", "image_pool": "adaptive",
                             "feature_mode": "10c-set"},
    # LSEH (Gong & Cosma): MH with semantically enhanced margins, the authors' alpha and lambda.
    "lseh": {"loss": "mh", "margin_source": "lseh", "margin": LSEH_ALPHA, "lseh_lambda": LSEH_LAMBDA},
}
