"""The import-checkpoint stage: a released model of the reference VSE++ code -> a model file of this project.

The reference's precomputed-feature model is this project's train-stage model exactly: Linear(img_dim, E) then
optional L2 norm (EncoderImagePrecomp), Embedding + 1-layer GRU whose state at each caption's last token is
L2-normalised (EncoderText), optional absolute value of both (use_abs), cosine or order similarity. Its
weights are renamed onto VSEModel, its options mapped onto a TrainConfig, its vocabulary kept as it is (with
the reference's nltk tokenizer), and the result is written as an exported model file (retrieval/export.py's
format), so eval, encode, search, serve and VSE.load read it unchanged. Its full-image model (EncoderImageFull,
CNN weights in the file) becomes a fine-tuned model of this project instead (retrieval/reference_cnn.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common.config import StageConfig
from common.files import atomic_write
from extract.weights import sha256_of_file
from features.attrs import store_origin
from features.reader import FeatureStore
from features.schema import CNN_ATTRS, ORIGIN_IMPORT
from retrieval.model import MODEL_FILE_FORMAT, MODEL_FILE_VERSION, model_from_checkpoint
from retrieval.reference_cnn import (IMAGE_RESIZE, cnn_state_of, cnn_type_of, feature_dim_of, is_full_encoder,
                                     reference_image_embeddings)
from retrieval.reference_files import ReferenceCheckpoint, read_reference_checkpoint, read_reference_vocabulary
from train.config import TrainConfig
from train.finetune.config import FinetuneConfig
from train.losses import build_loss
from train.model import VSEModel
from train.text import NLTK, Vocabulary

logger = logging.getLogger(__name__)

# Options every reference checkpoint's 'opt' holds that decide the model (train.py's argparse names).
MODEL_OPTIONS = ("data_name", "embed_size", "word_dim", "num_layers", "img_dim", "measure", "use_abs", "no_imgnorm",
                 "max_violation", "margin")
# Reference training options -> TrainConfig fields, recorded when present (they do not change the model).
TRAINING_OPTIONS = {"num_epochs": "epochs", "learning_rate": "lr", "lr_update": "lr_decay_epochs",
                    "batch_size": "batch_size", "grad_clip": "grad_clip", "use_restval": "use_restval"}
# Reference parameter name -> this project's (VSEModel.state_dict()).
IMAGE_KEYS = {"fc.weight": "image_encoder.head.fc.weight", "fc.bias": "image_encoder.head.fc.bias"}
TEXT_KEYS = {"embed.weight": "text_encoder.embed.weight",
             **{f"rnn.{name}_l0": f"text_encoder.gru.{name}_l0"
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}}
CHECK_TOLERANCE = 1e-4  # max |difference| of float32 embeddings between the two computations of the import check


@dataclass
class ImportCheckpointConfig(StageConfig):
    """Options of the import-checkpoint stage."""

    checkpoint: str = field(default="", metadata={
        "help": "the reference code's model_best.pth.tar (the authors' runs.tar: runs/<run>/model_best.pth.tar)",
        "required": True})
    vocab: str = field(default="", metadata={
        "help": "its vocabulary pickle (the authors' vocab.tar: vocab/<data_name>_vocab.pkl)", "required": True})
    out: str = field(default="", metadata={"help": "the model file to write (e.g. models/coco_vse++.pt)",
                                           "required": True})
    store: str = field(default="", metadata={
        "help": "feature store of the reference's features (`import-features` of its data.tar): recorded as the "
                "model's store, so eval, encode and serve default to it and refuse stores of another CNN; for a "
                "full-image model (*_resnet, *_vgg, finetuned runs) a store `extract` wrote from the raw images",
        "required": True})

    def validate(self) -> None:
        """Required fields, and an output that is none of the inputs (ValueError)."""
        super().validate()
        inputs = [Path(path).resolve() for path in (self.checkpoint, self.vocab, self.store) if path]
        if Path(self.out).resolve() in inputs:
            raise ValueError(f"--out {self.out} is one of the input files; write the model file elsewhere")


def train_config_of(opt: dict, *, store: str, full: bool = False, checkpoint: str = "") -> TrainConfig:
    """The TrainConfig of a reference 'opt' (ValueError naming what is missing or cannot be expressed here); for
    a full-image model (`full`) the FinetuneConfig of a fine-tuned model, initialised from `checkpoint`."""
    missing = [name for name in MODEL_OPTIONS if name not in opt]
    if missing:
        raise ValueError(f"the checkpoint's options lack {missing}; it was not written by the reference's train.py")
    if opt["num_layers"] != 1:
        raise ValueError(f"num_layers {opt['num_layers']}: this project's caption encoder is a 1-layer GRU (the "
                         "paper's); a deeper reference model cannot be imported")
    if opt["measure"] not in ("cosine", "order"):
        raise ValueError(f"measure {opt['measure']!r} is neither 'cosine' nor 'order'; the reference knows only these")
    values = {"store": store, "embed_dim": opt["embed_size"], "word_dim": opt["word_dim"],
              "similarity": opt["measure"], "abs_embeddings": bool(opt["use_abs"]),
              "image_norm": not opt["no_imgnorm"], "loss": "mh" if opt["max_violation"] else "sh",
              "margin": float(opt["margin"]), "feature_mode": "1c", "tokenizer": NLTK}
    values.update({ours: opt[theirs] for theirs, ours in TRAINING_OPTIONS.items() if opt.get(theirs) is not None})
    if full:  # its CNN trained (--finetune) with the rest at one lr, from RandomResizedCrop(224) + flip
        values.update(feature_norm=True, checkpoint=checkpoint, rc="resized",
                      unfreeze="all" if opt.get("finetune") else "0", cnn_lr=values.get("lr", FinetuneConfig.lr))
    config_cls = FinetuneConfig if full else TrainConfig
    config = config_cls.from_dict(values, source="the reference checkpoint's options")
    config.validate()
    return config


def model_state_of(reference: ReferenceCheckpoint, *, vocab_size: int, full: bool = False) -> dict[str, torch.Tensor]:
    """The reference's two state dicts renamed onto VSEModel, every key and shape checked (ValueError); for a
    full-image model (`full`) its CNN's weights too (reference_cnn.cnn_state_of)."""
    opt = reference.opt
    image_state, cnn_state, model_name = reference.image_state, {}, "precomputed-feature model"
    embed, word, img, img_name = opt["embed_size"], opt["word_dim"], opt["img_dim"], "img_dim"
    if full:
        img_name = cnn_type_of(opt, path=reference.path)
        img, model_name = feature_dim_of(img_name), f"full-image model ({img_name})"
        cnn_state = cnn_state_of(image_state, cnn_type=img_name, path=reference.path)
        image_state = {key: value for key, value in image_state.items() if not key.startswith("cnn.")}
    shapes = {"fc.weight": (embed, img), "fc.bias": (embed,), "embed.weight": (vocab_size, word),
              "rnn.weight_ih_l0": (3 * embed, word), "rnn.weight_hh_l0": (3 * embed, embed),
              "rnn.bias_ih_l0": (3 * embed,), "rnn.bias_hh_l0": (3 * embed,)}
    state = {}
    for part, names, given in (("image", IMAGE_KEYS, image_state), ("text", TEXT_KEYS, reference.text_state)):
        missing, unexpected = sorted(set(names) - set(given)), sorted(set(given) - set(names))
        if missing or unexpected:
            raise ValueError(f"{reference.path}: the {part} encoder's weights do not fit the reference's "
                             f"{model_name}: missing {missing}, unexpected {unexpected[:8]}")
        for name, ours in names.items():
            if tuple(given[name].shape) != shapes[name]:
                raise ValueError(f"{reference.path}: {name} has shape {tuple(given[name].shape)}, the options "
                                 f"(embed_size {embed}, word_dim {word}, {img_name} {img}, {vocab_size} words) "
                                 f"give {shapes[name]}; the checkpoint and the vocabulary do not belong together")
            state[ours] = given[name].detach().to(torch.float32).contiguous()
    return {**state, **cnn_state}


def reference_embeddings(model: VSEModel, tokens: torch.Tensor, lengths: torch.Tensor,
                         features: torch.Tensor, *, use_abs: bool, image_norm: bool) -> tuple[torch.Tensor, ...]:
    """(image_emb, caption_emb) computed as the reference does, with nn.GRU over a packed batch.

        image_emb   = [abs] [l2norm] (fc(features))
        caption_emb = [abs] l2norm(h_last), h = GRU(Embedding(tokens)) over each caption's true length
    Only the weights come from `model`, so this is a second computation to compare the model's against.
    """
    head, text = model.image_encoder.head, model.text_encoder
    image_emb = head.fc(features)
    image_emb = F.normalize(image_emb, dim=-1) if image_norm else image_emb
    gru = nn.GRU(text.gru.input_size, text.gru.hidden_size, 1, batch_first=True)
    gru.load_state_dict(text.gru.state_dict())
    packed = nn.utils.rnn.pack_padded_sequence(text.embed(tokens), lengths, batch_first=True, enforce_sorted=False)
    _, last = gru(packed)  # [1, B, E]: each sequence's state at its own last token
    caption_emb = F.normalize(last[0], dim=-1)
    return (image_emb.abs(), caption_emb.abs()) if use_abs else (image_emb, caption_emb)


@torch.no_grad()
def check_embeddings(model: VSEModel, config: TrainConfig, *, vocab_size: int, feature_dim: int,
                     cnn_type: str | None = None) -> float:
    """Max |difference| between the model's embeddings and reference_embeddings on seeded random captions and
    features (with `cnn_type`, a full-image model: random images through reference_cnn's second computation);
    ValueError above CHECK_TOLERANCE (the import would not rank as the reference does)."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([2, 7, 12, 18, 5, 9])
    tokens = torch.randint(1, vocab_size, (len(lengths), int(lengths.max())), generator=generator)
    tokens[torch.arange(tokens.shape[1]) >= lengths[:, None]] = 0
    features = torch.randn(len(lengths), feature_dim, generator=generator)
    image_emb, caption_emb = reference_embeddings(model, tokens, lengths, features, use_abs=config.abs_embeddings,
                                                  image_norm=config.image_norm)
    found, expected = [model.encode_captions(tokens, lengths)], [caption_emb]
    if cnn_type is None:
        found.append(model.encode_images(features))
        expected.append(image_emb)
    else:  # two images: a CNN pass on the CPU costs seconds
        crops = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8, generator=generator)
        found.append(model.encode_images(crops))
        expected.append(reference_image_embeddings(model, crops, cnn_type=cnn_type, use_abs=config.abs_embeddings,
                                                   image_norm=config.image_norm))
    difference = max(float((a - b).abs().max()) for a, b in zip(found, expected))
    if not difference <= CHECK_TOLERANCE:
        raise ValueError(f"the imported model's embeddings differ from the reference's computation by {difference:.3g} "
                         f"(> {CHECK_TOLERANCE}); the import is wrong: please report it")
    return difference


def store_spec(store: str, *, feature_dim: int, full: bool = False) -> dict:
    """The CNN attributes of `store`, whose features must have the model's size (ValueError otherwise); a
    full-image model (`full`) reads the store's raw images instead, so it must be a store `extract` wrote."""
    with FeatureStore(store) as opened:
        if full and store_origin(opened.attrs) == ORIGIN_IMPORT:
            raise ValueError(f"--store {store} holds imported features without their images, and the checkpoint's "
                             "model embeds raw images with its own CNN; pass a store `pipeline.py extract` wrote "
                             "from the data set's images (any backbone)")
        if not full and opened.feature_dim != feature_dim:
            raise ValueError(f"--store {store} holds {opened.feature_dim}-d features, the checkpoint's image encoder "
                             f"reads {feature_dim}-d ones (img_dim); pass the store of the features it was trained on")
        return {key: opened.attrs.get(key) for key in CNN_ATTRS}


def imported_model_file(reference: ReferenceCheckpoint, words: list[str], *, vocab_path: str | Path,
                        vocab_sha256: str, store: str) -> dict:
    """The exported-model dict (retrieval/export.py's format) of a reference checkpoint and its vocabulary."""
    opt = reference.opt
    if opt.get("vocab_size") not in (None, len(words)):
        raise ValueError(f"the checkpoint was trained with {opt['vocab_size']} words, {vocab_path} holds "
                         f"{len(words)}; pass the vocabulary of its data_name {opt['data_name']!r}")
    full = is_full_encoder(opt, reference.image_state)
    config = train_config_of(opt, store=str(Path(store).resolve()), full=full, checkpoint=reference.path)
    vocab = Vocabulary(words, tokenizer=NLTK)
    state = model_state_of(reference, vocab_size=len(vocab), full=full)
    feature_dim = feature_dim_of(cnn_type_of(opt, path=reference.path)) if full else int(opt["img_dim"])
    spec = {"vocab_size": len(vocab), "feature_dim": feature_dim,
            "store_cnn": store_spec(store, feature_dim=feature_dim, full=full)}
    if full:  # model_from_checkpoint rebuilds this CNN; images are read as the reference's eval reads them
        spec.update(backbone=cnn_type_of(opt, path=reference.path), image_resize=IMAGE_RESIZE)
    counters = {"epoch": reference.epoch, "best_rsum": reference.best_rsum}  # as an export keeps its checkpoint's
    source = {"checkpoint": reference.path, "sha256": reference.sha256, "imported_from": "fartashf/vsepp",
              **{key: value for key, value in counters.items() if value is not None},
              "reference": {"opt": opt, "iterations": reference.iterations, "vocab": str(vocab_path),
                            "vocab_sha256": vocab_sha256}}
    return {"format": MODEL_FILE_FORMAT, "format_version": MODEL_FILE_VERSION, "kind": "finetune" if full else "train",
            "model": state,
            "loss": build_loss(config).state_dict(), "vocab": vocab.to_dict(), "config": config.to_dict(),
            "model_spec": spec, "source": source, "data": None}


def run_import_checkpoint(cfg: ImportCheckpointConfig) -> dict:
    """Read, check and convert cfg.checkpoint + cfg.vocab, then write cfg.out atomically (nothing is written when
    any check fails). Returns {out, bytes, vocab_size, embed_dim, feature_dim, similarity, epoch, best_rsum,
    check_max_difference}."""
    cfg.validate()
    out = Path(cfg.out)
    if not out.resolve().parent.is_dir():
        raise FileNotFoundError(f"output folder of {cfg.out!r} does not exist; create it first")
    words = read_reference_vocabulary(cfg.vocab)
    reference = read_reference_checkpoint(cfg.checkpoint)
    payload = imported_model_file(reference, words, vocab_path=cfg.vocab, vocab_sha256=sha256_of_file(cfg.vocab),
                                  store=cfg.store)
    loaded = model_from_checkpoint(payload)  # strict: the file loads exactly as every later command will load it
    config = loaded.config
    difference = check_embeddings(loaded.model, config, vocab_size=len(words),
                                  feature_dim=payload["model_spec"]["feature_dim"],
                                  cnn_type=payload["model_spec"].get("backbone"))
    atomic_write(out, lambda handle: torch.save(payload, handle), durable=True)
    summary = {"out": str(out), "bytes": out.stat().st_size, "vocab_size": len(words), "embed_dim": config.embed_dim,
               "feature_dim": payload["model_spec"]["feature_dim"], "similarity": config.similarity,
               "epoch": reference.epoch, "best_rsum": reference.best_rsum, "check_max_difference": difference}
    logger.info("imported %s (%s, epoch %s, best rsum %s) with %d words into %s; its embeddings match the reference's "
                "computation within %.2g", cfg.checkpoint, reference.opt["data_name"], reference.epoch,
                reference.best_rsum, len(words), out, difference)
    return summary


def import_reference_model(checkpoint: str | Path, vocab: str | Path, out: str | Path, *,
                           store: str | Path) -> dict:
    """Python API of `pipeline.py import-checkpoint`: write `out` from a reference model_best.pth.tar, its
    vocabulary pickle and the store of its features; load it afterwards with retrieval.api.VSE.load(out).
    Returns run_import_checkpoint's summary."""
    return run_import_checkpoint(ImportCheckpointConfig(checkpoint=str(checkpoint), vocab=str(vocab), out=str(out),
                                                        store=str(store)))
