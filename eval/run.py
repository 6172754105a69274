"""run_eval: embed a split with a trained or fine-tuned checkpoint and score it under the test protocols."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from eval.config import EvalConfig
from eval.protocols import COCO_TEST_IMAGES, F30K_TEST_IMAGES, PROTOCOLS, evaluate_protocol, format_table

logger = logging.getLogger(__name__)


def protocols_for(protocol: str, num_images: int) -> list[str]:
    """The protocols to run: the one asked for, or for "all" every protocol whose image count fits."""
    if protocol != "all":
        return [protocol]
    fits = {"coco-1k": num_images == COCO_TEST_IMAGES, "coco-5k": num_images == COCO_TEST_IMAGES,
            "f30k-1k": num_images == F30K_TEST_IMAGES, "all-images": True}
    return [name for name in PROTOCOLS if fits[name]]


def embed_split(cfg: EvalConfig, checkpoint: dict, store_path: str, device: torch.device) -> tuple:
    """(image_emb, caption_emb, caption_image_index, loss name) of cfg.split, as the checkpoint's model sees it.

    Train-stage checkpoints read the stored CNN features; fine-tuned ones re-encode the raw images with their
    own CNN (center crop), since the stored features no longer describe that CNN.
    """
    # Imported here: eval's metrics stay free of our other packages; only this stage function needs train/.
    from features.reader import FeatureStore
    from train.encode import encode_split, model_from_checkpoint

    with FeatureStore(store_path) as store:
        if checkpoint["kind"] == "train":
            model, vocab, train_cfg = model_from_checkpoint(checkpoint, device=device)
            image_emb, caption_emb, caption_image_index, _ = encode_split(
                model, store, splits=[cfg.split], feature_mode=train_cfg.feature_mode, vocab=vocab,
                batch_size=cfg.batch_size, device=device)
            return image_emb, caption_emb, caption_image_index, train_cfg.loss
        from train.finetune import encode_split_from_images, model_from_finetune_checkpoint

        model, vocab, finetune_cfg = model_from_finetune_checkpoint(checkpoint, device=device)
        image_root = cfg.image_root or finetune_cfg.image_root or store.attrs["image_root"]
        image_emb, caption_emb, caption_image_index, _ = encode_split_from_images(
            model, store, splits=[cfg.split], vocab=vocab, image_root=image_root, batch_size=cfg.batch_size,
            workers=cfg.workers, device=device)
        return image_emb, caption_emb, caption_image_index, finetune_cfg.loss


def run_eval(cfg: EvalConfig) -> dict:
    """Evaluate cfg.checkpoint on cfg.split; print a table per protocol; write results JSON and config JSON."""
    from extract.device import resolve_device
    from train.checkpoint import load_checkpoint
    from train.losses import order_sim

    device = resolve_device(cfg.device)
    checkpoint = load_checkpoint(cfg.checkpoint, map_location="cpu")
    store_path = cfg.store or checkpoint["config"]["store"]
    if not Path(store_path).is_file():
        raise FileNotFoundError(f"feature store {store_path} not found; pass --store")
    logger.info("evaluating %s (%s checkpoint, epoch %d) on split %r of %s", cfg.checkpoint, checkpoint["kind"],
                checkpoint["epoch"], cfg.split, store_path)
    image_emb, caption_emb, caption_image_index, loss = embed_split(cfg, checkpoint, store_path, device)
    sim_fn = order_sim if loss == "order" else None
    results = {"checkpoint": str(cfg.checkpoint), "kind": checkpoint["kind"], "store": str(store_path),
               "split": cfg.split, "protocols": {}}
    for protocol in protocols_for(cfg.protocol, len(image_emb)):
        scores = evaluate_protocol(image_emb, caption_emb, caption_image_index, protocol=protocol, sim_fn=sim_fn)
        results["protocols"][protocol] = scores
        print(format_table(scores), flush=True)
    out = cfg.results_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    cfg.save_json(out.with_name(out.stem + ".config.json"))
    logger.info("results written to %s", out)
    return results
