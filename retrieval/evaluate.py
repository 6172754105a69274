"""The eval stage: embed a split with a trained or fine-tuned checkpoint and score it under the test protocols."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.choices import SPLITS
from common.config import StageConfig
from common.device import resolve_device
from common.fields import device_field
from common.files import atomic_write_json
from eval.protocols import COCO_TEST_IMAGES, F30K_TEST_IMAGES, PROTOCOLS, evaluate_protocol, format_table
from features.identity import store_fingerprint
from features.reader import FeatureStore
from retrieval.model import LoadedModel, encode_store_split, load_model
from train.checkpoint import saved_identity, training_data_report
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
    cross_dataset: bool = field(default=False, metadata={
        "help": "evaluate on a store of other data than the model was trained on (other images, splits or "
                "captions), on purpose; its results go to eval-<store>-<fingerprint>-<split>.json"})
    out: str = field(default="", metadata={
        "help": "results JSON (default: eval-<split>.json beside the checkpoint, eval-<store>-<fingerprint 8>-"
                "<split>.json for a store of other data)"})
    image_root: str = field(default="", metadata={
        "help": "raw images, for fine-tuned checkpoints (default: the store's image_root attribute)"})
    batch_size: int = field(default=256, metadata={"help": "images or captions encoded per forward pass"})
    workers: int = field(default=2, metadata={"help": "image decoding workers (fine-tuned checkpoints only)"})
    device: str = device_field()

    def validate(self) -> None:
        """Choices, plus positive batch size and non-negative workers (ValueError)."""
        super().validate()
        self.check_at_least(1, "batch_size")
        self.check_at_least(0, "workers")

    def results_path(self, store_tag: str = "") -> Path:
        """Where the results JSON goes; `store_tag` names a store of other data than the training data (its
        results never overwrite the run's own)."""
        if self.out:
            return Path(self.out)
        return Path(self.checkpoint).with_name(f"eval-{store_tag + '-' if store_tag else ''}{self.split}.json")


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


def check_data(cfg: EvalConfig, loaded: LoadedModel, store: FeatureStore) -> tuple[dict, str]:
    """The store's data against the checkpoint's training data: (report, store tag of the results file name).

    Another store's data (fingerprint) needs --cross-dataset (ValueError otherwise); a checkpoint without a data
    identity is compared by store path (and not at all without one: an imported model that names no store). The
    tag is "" for the training data, else "<store stem>-<fingerprint 8>".
    """
    fingerprint, identity = store_fingerprint(store), saved_identity(loaded.checkpoint)
    if identity is not None:
        same, trained_on = identity["fingerprint"] == fingerprint, identity["store"]
    else:  # no identity: the trained-on store is known by its path only, if at all
        trained_on = loaded.config.store
        same = store.path.resolve() == Path(trained_on).resolve() if trained_on else None
    if same is False and not cfg.cross_dataset:
        raise ValueError(f"{cfg.checkpoint} was trained on {trained_on}, --store {store.path} holds other data "
                         f"(data {fingerprint[:8]}); pass --cross-dataset to evaluate on it on purpose, or leave out "
                         "--store to evaluate on the training store")
    report = training_data_report(loaded.checkpoint, store, splits=[cfg.split], source=cfg.checkpoint,
                                  fingerprint=fingerprint)
    report["cross_dataset"] = None if same is None else not same  # None: the training data is not known at all
    return report, "" if same else f"{store.path.stem}-{fingerprint[:8]}"


def describe_data(report: dict) -> str:
    """One line for the results table: which store was scored and how much of it the model was trained on."""
    kind = {True: "another dataset", False: "the training data", None: "training data unknown"}
    line = f"store {report['store']} (data {report['fingerprint'][:8]}, {kind[report['cross_dataset']]})"
    overlap = report["training_overlap"]
    if overlap is None:
        return line + "; training images among the scored ones: unknown (the checkpoint has no data identity)"
    return (line + f"; in the model's training data: {overlap['images_by_path']} of {overlap['images']} images by "
            f"path, {overlap['images_by_content']} by content, {overlap['captions_by_text']} caption texts"
            + (" -- NOT HELD OUT" if overlap["any"] else ""))


def run_eval(cfg: EvalConfig) -> dict:
    """Evaluate cfg.checkpoint on cfg.split; print a table per protocol; write results JSON and config JSON."""
    cfg.validate()
    device = resolve_device(cfg.device)
    loaded = load_model(cfg.checkpoint, device=device)
    store_path = cfg.store or loaded.config.store
    logger.info("evaluating %s (%s checkpoint) on split %r of %s", cfg.checkpoint, loaded.kind, cfg.split,
                store_path)
    with FeatureStore(store_path) as store:
        data, store_tag = check_data(cfg, loaded, store)
        image_emb, caption_emb, caption_image_index = embed_split(cfg, loaded, store, device)
    sim_fn = similarity_function(loaded.config.similarity)
    results = {"checkpoint": str(cfg.checkpoint), "kind": loaded.kind, "store": str(store_path),
               "store_fingerprint": data["fingerprint"], "cross_dataset": data["cross_dataset"],
               "data_identity": data["identity"], "trained_on": data["trained_on"],
               "training_overlap": data["training_overlap"], "split": cfg.split, "protocols": {}}
    print(describe_data(data), flush=True)
    for protocol in protocols_for(cfg.protocol, len(image_emb)):
        scores = evaluate_protocol(image_emb, caption_emb, caption_image_index, protocol=protocol, sim_fn=sim_fn)
        results["protocols"][protocol] = scores
        print(format_table(scores), flush=True)
    out = cfg.results_path(store_tag)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, results)
    cfg.save_json(out.with_name(out.stem + ".config.json"))
    logger.info("results written to %s", out)
    return results
