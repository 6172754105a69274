"""EvalConfig: options of the eval stage (which checkpoint, which split, which protocol)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from eval.protocols import PROTOCOLS

# "all" = every protocol whose image count fits the split (coco-1k and coco-5k need 5000 images, f30k-1k
# needs 1000), plus all-images, which fits any split.
PROTOCOL_CHOICES = ("all",) + PROTOCOLS


@dataclass
class EvalConfig:
    """Every option of the eval stage; saved as JSON beside the results."""

    checkpoint: str = field(default="", metadata={"help": "train or finetune checkpoint (best.pt / last.pt)"})
    store: str = field(default="", metadata={
        "help": "feature store to evaluate on (default: the store the checkpoint was trained on)"})
    split: str = field(default="test", metadata={"help": "split to evaluate (Karpathy: test)",
                                                  "choices": ("train", "val", "test", "restval")})
    protocol: str = field(default="all", metadata={
        "help": "coco-1k (mean of 5 folds of 1000 images), coco-5k, f30k-1k, all-images (any size), or all "
                "(every protocol that fits the split)", "choices": PROTOCOL_CHOICES})
    out: str = field(default="", metadata={
        "help": "results JSON (default: eval-<split>.json beside the checkpoint)"})
    image_root: str = field(default="", metadata={
        "help": "raw images, for fine-tuned checkpoints (default: the store's image_root attribute)"})
    batch_size: int = field(default=256, metadata={"help": "images or captions encoded per forward pass"})
    workers: int = field(default=2, metadata={"help": "image decoding workers (fine-tuned checkpoints only)"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu or cuda",
                                                  "choices": ("auto", "cpu", "cuda")})

    def results_path(self) -> Path:
        """Where the results JSON goes."""
        if self.out:
            return Path(self.out)
        return Path(self.checkpoint).with_name(f"eval-{self.split}.json")

    def to_dict(self) -> dict:
        """Plain JSON-able dict."""
        return dataclasses.asdict(self)

    def save_json(self, path: str | Path) -> None:
        """Write the config as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
