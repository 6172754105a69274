"""FinetuneConfig: stage 3 options (a TrainConfig: same trainer, loss and checkpoints) and the paper's defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.choices import RC_MODES
from common.device import default_workers
from train.config import TrainConfig

# The VSE++ paper (Sec. 4): fine-tuned models start from a model trained for 30 epochs on a fixed image
# encoder and train for 15 more epochs at learning rate 2e-5; the reference code (fartashf/vsepp,
# --finetune) uses one Adam lr for the CNN and the rest, with batch 128 and grad clip 2.
FINETUNE_EPOCHS = 15
FINETUNE_LR = 2e-5
# Fields a fine-tune takes from its train-stage checkpoint (model shape, vocabulary splits, loss): left at the
# TrainConfig default they are replaced by the checkpoint's value; any other value must equal it (ValueError).
# The CLI does not offer them for `finetune`.
CHECKPOINT_FIELDS = ("train_splits", "use_restval", "val_split", "feature_mode", "image_pool", "text_pool",
                     "embed_dim", "word_dim", "vocab_min_count", "tokenizer", "image_norm", "feature_norm",
                     "abs_embeddings", "caption_head",
                     "loss", "similarity", "margin", "margin_source", "lseh_lambda", "reduction", "group_k_mode",
                     "group_k", "group_temperature", "group_gamma")
# Paths a resume may point elsewhere (moved files), besides train's; everything else must equal the checkpoint's.
FINETUNE_RESUME_MUTABLE_EXTRA = ("checkpoint", "image_root", "weights")


@dataclass
class FinetuneConfig(TrainConfig):
    """Every option of the finetune stage (CNN unfrozen, random crops of the raw images).

    The fields in CHECKPOINT_FIELDS are resolved from the train-stage checkpoint by
    train.finetune.run.resolve_config.
    """

    checkpoint: str = field(default="", metadata={
        "help": "train-stage checkpoint (RUN/best.pt) to initialise from; its model, vocabulary and loss are kept",
        "required": True})
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
    # decoding in worker processes keeps up with the CNN where a thread in this process does not (BENCHMARKS.md)
    workers: int = field(default_factory=default_workers, metadata={
        "help": "DataLoader worker processes decoding images (0 = in the main process; default: min(4, the CPU "
                "cores this process may use))"})

    def validate(self) -> None:
        """TrainConfig's checks plus the finetune-only options, without touching the disk (ValueError)."""
        super().validate()
        parse_unfreeze(self.unfreeze)
        if self.feature_mode == "regions":
            raise ValueError("the checkpoint was trained on region features (--feature-mode regions): a region store "
                             "holds a detector's vectors, with no CNN this project can fine-tune and no raw images to "
                             "feed one; fine-tune a model trained on a store from `pipeline.py extract` instead")
        if not self.cnn_lr > 0:
            raise ValueError(f"--cnn-lr must be > 0, got {self.cnn_lr}")
        if self.grad_checkpointing and self.train_bn:
            raise ValueError("--grad-checkpointing recomputes forward passes, which would update BatchNorm running "
                             "statistics twice; use it with frozen BatchNorm (drop --train-bn)")


def parse_unfreeze(value: str | int) -> int | None:
    """--unfreeze value -> number of last stages to train, None for "all"."""
    text = str(value).strip().lower()
    if text == "all":
        return None
    if text.isdigit():
        return int(text)
    raise ValueError(f"--unfreeze {value!r} must be 'all' or a number of last CNN stages >= 0 (e.g. 1)")
