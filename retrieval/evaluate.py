"""The eval stage: embed a split with a trained or fine-tuned checkpoint and score it under the test protocols."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.choices import DEVICES, SPLITS
from common.config import StageConfig
from common.device import resolve_device
from common.files import atomic_write_json
from eval.protocols import COCO_TEST_IMAGES, F30K_TEST_IMAGES, PROTOCOLS, evaluate_protocol, format_table
from features.reader import FeatureStore
from retrieval.model import LoadedModel, encode_store_split, load_model
from train.losses.similarity import similarity_function

logger = logging.getLogger(__name__)

# "all" = every protocol whose image count fits the split (coco-1k and coco-5k need 5000 images, f30k-1k
# needs 1000), plus all-images, which fits any split.
PROTOCOL_CHOICES = ("all",) + PROTOCOLS


@dataclass
class EvalConfig(StageConfig):
    """Every option of the eval stage; saved as JSON beside the results."""

    checkpoint: str = field(default="", metadata={"help": "train or finetune checkpoint (best.pt / last.pt)",
                                                  "required": True})
    store: str = field(default="", metadata={
        "help": "feature store to evaluate on (default: the store the checkpoint was trained on)"})
    split: str = field(default="test", metadata={"help": "split to evaluate (Karpathy: test)", "choices": SPLITS})
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
                                                  "choices": DEVICES})

    def validate(self) -> None:
        """Choices, plus positive batch size and non-negative workers (ValueError)."""
        super().validate()
        self.check_at_least(1, "batch_size")
        self.check_at_least(0, "workers")

    def results_path(self) -> Path:
        """Where the results JSON goes."""
        if self.out:
            return Path(self.out)
        return Path(self.checkpoint).with_name(f"eval-{self.split}.json")


def protocols_for(protocol: str, num_images: int) -> list[str]:
    """The protocols to run: the one asked for, or for "all" every protocol whose image count fits."""
    if protocol != "all":
        return [protocol]
    fits = {"coco-1k": num_images == COCO_TEST_IMAGES, "coco-5k": num_images == COCO_TEST_IMAGES,
            "f30k-1k": num_images == F30K_TEST_IMAGES, "all-images": True}
    return [name for name in PROTOCOLS if fits[name]]


def embed_split(cfg: EvalConfig, loaded: LoadedModel, store: FeatureStore,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, object]:
    """(image_emb, caption_emb, caption_image_index) of cfg.split, as the checkpoint's model sees it
    (retrieval.model.encode_store_split: stored features, or the raw images for a fine-tuned CNN)."""
    image_emb, caption_emb, caption_image_index, _ = encode_store_split(
        loaded, store, split=cfg.split, image_root=cfg.image_root, batch_size=cfg.batch_size, workers=cfg.workers,
        device=device)
    return image_emb, caption_emb, caption_image_index


def run_eval(cfg: EvalConfig) -> dict:
    """Evaluate cfg.checkpoint on cfg.split; print a table per protocol; write results JSON and config JSON."""
    cfg.validate()
    device = resolve_device(cfg.device)
    loaded = load_model(cfg.checkpoint, device=device)
    store_path = cfg.store or loaded.config.store
    logger.info("evaluating %s (%s checkpoint) on split %r of %s", cfg.checkpoint, loaded.kind, cfg.split,
                store_path)
    with FeatureStore(store_path) as store:
        image_emb, caption_emb, caption_image_index = embed_split(cfg, loaded, store, device)
    sim_fn = similarity_function(loaded.config.similarity)
    results = {"checkpoint": str(cfg.checkpoint), "kind": loaded.kind, "store": str(store_path),
               "split": cfg.split, "protocols": {}}
    for protocol in protocols_for(cfg.protocol, len(image_emb)):
        scores = evaluate_protocol(image_emb, caption_emb, caption_image_index, protocol=protocol, sim_fn=sim_fn)
        results["protocols"][protocol] = scores
        print(format_table(scores), flush=True)
    out = cfg.results_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, results)
    cfg.save_json(out.with_name(out.stem + ".config.json"))
    logger.info("results written to %s", out)
    return results
