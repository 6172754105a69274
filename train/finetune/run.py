"""Stage 3 entry point: run_finetune(cfg) trains the CNN end to end on random crops, from a train checkpoint.

The model is the train-stage model rebuilt from its checkpoint with the store's CNN put in front of the
same ImageHead, so fine-tuning starts from exactly the checkpoint's weights. The loop, the loss, the
checkpoints and the exact resume are the Trainer's (kind "finetune").
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from common import distributed
from eval.metrics import recall_metrics
from features.datasets import validate_image_root
from features.attrs import store_origin
from features.reader import FeatureStore
from features.schema import ORIGIN_IMPORT
from train.checkpoint import check_same_data, check_store_provenance, load_checkpoint, load_model_state, saved_identity
from train.config import TrainConfig
from train.encode import similarity_matrix
from train.finetune.cnn import CNNBackbone, attach_cnn, backbone_from_store
from train.finetune.config import CHECKPOINT_FIELDS, FINETUNE_RESUME_MUTABLE_EXTRA, FinetuneConfig
from train.finetune.data import ImageCaptionBatches, encode_split_from_images
from train.losses import VSELoss, build_loss
from train.model import VSEModel, build_model
from train.preflight import check_device, open_run_dir, run_summary, warn_about_small_data
from train.data import RankShare
from train.run_dir import RESUME_MUTABLE_FIELDS, check_resume_config, check_run_dir
from train.text import Vocabulary
from train.trainer import Trainer

logger = logging.getLogger(__name__)

def resolve_config(cfg: FinetuneConfig, train_config: dict) -> FinetuneConfig:
    """`cfg` with CHECKPOINT_FIELDS (and an empty store) taken from the train checkpoint's config.

    A field left at its TrainConfig default takes the checkpoint's value; a field set to anything else must
    equal it, since the model, vocabulary and loss are the checkpoint's (ValueError naming the fields).
    """
    saved = TrainConfig.from_dict(train_config, source=f"the config inside {cfg.checkpoint}")
    defaults = TrainConfig()
    conflicts = [name for name in CHECKPOINT_FIELDS if getattr(cfg, name) != getattr(defaults, name)
                 and getattr(cfg, name) != getattr(saved, name)]
    if conflicts:
        details = ", ".join(f"{name}: checkpoint {getattr(saved, name)!r}, given {getattr(cfg, name)!r}"
                            for name in conflicts)
        raise ValueError(f"--checkpoint {cfg.checkpoint} fixes the model, vocabulary and loss ({details}); drop "
                         "these options or train a new stage-two model with them")
    resolved = dataclasses.replace(cfg, **{name: getattr(saved, name) for name in CHECKPOINT_FIELDS})
    return dataclasses.replace(resolved, store=cfg.store or saved.store)


def param_groups(model: VSEModel, loss: VSELoss, cnn: CNNBackbone, cfg: FinetuneConfig) -> list[dict]:
    """Adam groups of trainable parameters only: {head, text, loss state: lr} and {CNN: cnn_lr}."""
    cnn_ids = {id(parameter) for parameter in cnn.parameters()}
    rest = [p for module in (model, loss) for p in module.parameters() if p.requires_grad and id(p) not in cnn_ids]
    cnn_params = [p for p in cnn.parameters() if p.requires_grad]
    return [group for group in ({"params": rest, "lr": cfg.lr}, {"params": cnn_params, "lr": cfg.cnn_lr})
            if group["params"]]


def init_model(cfg: FinetuneConfig, init: dict, *, store: FeatureStore) -> tuple[VSEModel, CNNBackbone,
                                                                                Vocabulary, dict]:
    """The train-stage model of the checkpoint dict `init` with the store's CNN in front of its ImageHead.

    Returns (model, cnn, vocab, model_spec); every weight but the CNN's is the checkpoint's, the CNN's are
    the store's (so CNN + head on a center crop = head on the stored 1c feature).
    """
    spec = init["model_spec"]
    if spec["feature_dim"] != store.feature_dim:
        raise ValueError(f"--checkpoint {cfg.checkpoint} has a head for {spec['feature_dim']}-d features, "
                         f"{store.path} holds {store.feature_dim}-d ones; use the store it was trained on")
    vocab = Vocabulary.from_dict(init["vocab"])
    model = build_model(cfg, vocab_size=spec["vocab_size"], feature_dim=spec["feature_dim"])
    load_model_state(model, init["model"], source=f"--checkpoint {cfg.checkpoint}")
    backbone = backbone_from_store(store.attrs, store_path=store.path, feature_dim=store.feature_dim,
                                   weights=cfg.weights)
    cnn = attach_cnn(model, cfg, backbone=backbone)
    model_spec = dict(spec, backbone=cnn.name,
                      **{key: store.attrs.get(key) for key in ("weights_name", "weights_sha256", "weights_seed")})
    logger.info("CNN %s: training stages %s of %s (BatchNorm %s), %d trainable CNN parameters", cnn.name,
                cnn.stage_names[len(cnn.stage_names) - cnn.num_trainable_stages:], cnn.stage_names,
                "trained" if cfg.train_bn else "frozen", sum(p.numel() for p in cnn.parameters() if p.requires_grad))
    return model, cnn, vocab, model_spec


def _check_images(batches: ImageCaptionBatches, store: FeatureStore, image_root: Path, val_split: str) -> None:
    """Every image a batch or the validation can read must exist under image_root (fail before training)."""
    rows = np.union1d(batches.image_rows(), store.image_indices([val_split]))
    missing = [str(image_root / store.image_paths[row]) for row in rows
               if not (image_root / store.image_paths[row]).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(rows)} images are missing under --image-root {image_root} "
                                f"(first: {missing[0]!r}); pass the folder the store was extracted from")


def run_finetune(cfg: FinetuneConfig) -> dict:
    """Fine-tune the CNN, head and caption encoder of cfg.checkpoint; return best rsum, steps and artifact paths."""
    init = load_checkpoint(cfg.checkpoint, expected_kind="train")  # FileNotFoundError when missing
    logger.info("initialising from %s (epoch %d, step %d, best rsum %.2f)", cfg.checkpoint, init["epoch"],
                init["step"], init["best_rsum"])
    cfg = resolve_config(cfg, init["config"])
    cfg.validate()
    cfg = dataclasses.replace(cfg, checkpoint=str(Path(cfg.checkpoint).resolve()), store=str(Path(cfg.store).resolve()))
    device = check_device(cfg)
    resume_from = load_checkpoint(cfg.resume, expected_kind="finetune") if cfg.resume else None
    if resume_from is not None:
        check_resume_config(cfg, resume_from["config"], cfg.resume,
                            mutable=RESUME_MUTABLE_FIELDS + FINETUNE_RESUME_MUTABLE_EXTRA)
    out_dir = Path(cfg.out_dir)
    context = distributed.current()
    with FeatureStore(cfg.store) as store:
        if store_origin(store.attrs) == ORIGIN_IMPORT:
            raise ValueError(f"{store.path} holds imported features (pipeline.py import-features), made by no CNN "
                             "this project can rebuild, so there is no CNN to fine-tune; extract a store from the "
                             "images (pipeline.py extract) and train on it first")
        if store.regions:
            raise ValueError(f"{store.path} is a region store ({store.regions} vectors per image from a detector): "
                             "no CNN to fine-tune and no raw images to feed one; fine-tune on a store from "
                             "`pipeline.py extract`")
        check_store_provenance(init["model_spec"], store, source=f"--checkpoint {cfg.checkpoint}")
        fingerprint = None  # the store's, computed once
        for source, checkpoint in ((f"--checkpoint {cfg.checkpoint}", init), (f"--resume {cfg.resume}", resume_from)):
            if checkpoint is not None:  # fine-tuning continues on the data the model was trained on
                fingerprint = check_same_data(checkpoint, store, source=source, fingerprint=fingerprint,
                                              fix="fine-tune on the store it was trained on (leave out --store: it "
                                                  "defaults to it)")
        check_run_dir(out_dir, resume=cfg.resume, overwrite=cfg.overwrite)
        for splits in (cfg.all_train_splits(), (cfg.val_split,)):
            store.require_complete(splits)
        image_root = validate_image_root(cfg.image_root or store.attrs["image_root"]).resolve()
        cfg = dataclasses.replace(cfg, image_root=str(image_root))
        model, cnn, vocab, model_spec = init_model(cfg, init, store=store)
        with context.main_first():  # rank 0 fits and caches LSEH's vectors, the others read the cache
            loss = build_loss(cfg, store=store)
        load_model_state(loss, init["loss"], source=f"the loss state of --checkpoint {cfg.checkpoint}")
        batches = ImageCaptionBatches(store, splits=cfg.all_train_splits(), vocab=vocab, batch_size=cfg.batch_size,
                                      seed=cfg.seed, image_root=image_root, rc=cfg.rc,
                                      share=RankShare(context.rank, context.world_size))
        _check_images(batches, store, image_root, cfg.val_split)
        warn_about_small_data(cfg, num_captions=batches.num_captions,
                              val_images=len(store.image_indices((cfg.val_split,))))
        if cfg.feature_mode != "1c":
            logger.info("the head was trained on %s features; the fine-tuned CNN gives one crop per caption (a set "
                        "of one: mean and adaptive pooling of one vector are that vector)", cfg.feature_mode)
        open_run_dir(out_dir, cfg, vocab)
        logger.info("fine-tuning on %d captions (%d steps/epoch), rc %s, lr %g, cnn lr %g, device %s, %d rank(s)",
                    batches.num_captions, batches.steps_per_epoch, cfg.rc, cfg.lr, cfg.cnn_lr, device,
                    context.world_size)
        torch.manual_seed(cfg.seed)  # dropout (vgg19); crops and order are seeded from (seed, epoch, step)
        trainer = Trainer(model, loss, config=cfg, batches=batches, validate=_validator(cfg, store, vocab, device),
                          out_dir=out_dir, vocab=vocab, model_spec=model_spec, kind="finetune",
                          param_groups=param_groups(model, loss, cnn, cfg), device=device, data=saved_identity(init))
        if resume_from is not None:
            trainer.resume(cfg.resume, checkpoint=resume_from)
        summary = trainer.fit()
    return run_summary(summary, out_dir)


def _validator(cfg: FinetuneConfig, store: FeatureStore, vocab: Vocabulary, device: torch.device):
    """Validation re-encodes the val images with the current CNN (center crop), as stored features no longer fit."""
    def validate(model: VSEModel) -> dict[str, float]:
        image_emb, caption_emb, caption_image_index, _ = encode_split_from_images(
            model, store, splits=[cfg.val_split], vocab=vocab, image_root=cfg.image_root, batch_size=cfg.batch_size,
            workers=cfg.workers, device=device)
        return recall_metrics(similarity_matrix(image_emb, caption_emb, similarity=cfg.similarity),
                              caption_image_index)
    return validate
