"""The reference VSE++ code (fartashf/vsepp) as a test oracle: its file structure, encoders, encode_data and i2t/t2i.

Written for these tests from the reference's behaviour (model.py, vocab.py, data.py, evaluation.py, train.py):
the full-image encoder EncoderImageFull (a torchvision CNN under DataParallel's 'module.' names, l2norm before
fc) and its eval transform (Resize(256), CenterCrop(224), ToTensor, Normalize),
the checkpoint {'opt': Namespace, 'model': [image state, text state], 'epoch', 'best_rsum', 'Eiters'}, the
vocabulary pickled as an object of a class `vocab.Vocabulary`, captions as <start> + word_tokenize(lower) + <end>,
batches sorted by caption length, embeddings gathered per caption (each image row repeated for its 5 captions),
and ranks from a descending argsort with 5 captions per image.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from nltk.tokenize import NLTKWordTokenizer
from PIL import Image
from torch import nn
from torchvision import models, transforms

CAPTIONS_PER_IMAGE = 5  # the reference's evaluation assumes it


def word_tokenize(text: str) -> list[str]:
    """nltk.word_tokenize for one-sentence text (its punkt split is then the identity; punkt is not installed)."""
    return NLTKWordTokenizer().tokenize(text)


class Vocabulary:
    """The reference's vocabulary wrapper (its fields and behaviour), registered below as `vocab.Vocabulary`."""

    def __init__(self) -> None:
        self.word2idx: dict[str, int] = {}
        self.idx2word: dict[int, str] = {}
        self.idx = 0

    def add_word(self, word: str) -> None:
        if word not in self.word2idx:
            self.word2idx[word] = self.idx
            self.idx2word[self.idx] = word
            self.idx += 1

    def __call__(self, word: str) -> int:
        return self.word2idx.get(word, self.word2idx["<unk>"])

    def __len__(self) -> int:
        return len(self.word2idx)


def build_vocab(captions: list[str], *, threshold: int) -> Vocabulary:
    """Specials first, then words seen >= threshold times in first-seen order (the reference's build_vocab)."""
    counter = Counter()
    for caption in captions:
        counter.update(word_tokenize(caption.lower()))
    vocab = Vocabulary()
    for word in ("<pad>", "<start>", "<end>", "<unk>"):
        vocab.add_word(word)
    for word, count in counter.items():
        if count >= threshold:
            vocab.add_word(word)
    return vocab


def pickle_vocab(vocab: Vocabulary, path: Path, *, module: str = "vocab", protocol: int = 2) -> None:
    """Pickle `vocab` as an object of `<module>.Vocabulary` (a module made for it unless it exists, e.g.
    __main__), the class reachable there only while pickling."""
    created = module not in sys.modules
    target = sys.modules.setdefault(module, types.ModuleType(module))
    saved_module, had_attribute = Vocabulary.__module__, hasattr(target, "Vocabulary")
    previous = getattr(target, "Vocabulary", None)
    Vocabulary.__module__ = module
    target.Vocabulary = Vocabulary
    try:
        path.write_bytes(pickle.dumps(vocab, protocol=protocol))
    finally:
        Vocabulary.__module__ = saved_module
        if created:
            del sys.modules[module]
        elif had_attribute:
            target.Vocabulary = previous
        else:
            del target.Vocabulary


def l2norm(x: torch.Tensor) -> torch.Tensor:
    return x / x.pow(2).sum(dim=1, keepdim=True).sqrt()


class EncoderImagePrecomp(nn.Module):
    def __init__(self, img_dim: int, embed_size: int, *, use_abs: bool, no_imgnorm: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(img_dim, embed_size)
        self.use_abs, self.no_imgnorm = use_abs, no_imgnorm

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.fc(images)
        features = features if self.no_imgnorm else l2norm(features)
        return features.abs() if self.use_abs else features


class DataParallelNames(nn.Module):
    """nn.DataParallel's state-dict layout ('module.' + the wrapped module's names) without its device handling
    (the reference wraps on the GPU; these tests run anywhere)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images)


def get_cnn(arch: str) -> nn.Module:
    """The reference's get_cnn without pretrained weights: VGG's features, or the whole ResNet, wrapped."""
    model = models.__dict__[arch]()
    if arch.startswith("alexnet") or arch.startswith("vgg"):
        model.features = DataParallelNames(model.features)
        return model
    return DataParallelNames(model)


class EncoderImageFull(nn.Module):
    """The reference's full-image encoder: CNN cut below its last layer, l2norm, fc, l2norm, abs."""

    def __init__(self, embed_size: int, *, cnn_type: str, use_abs: bool, no_imgnorm: bool) -> None:
        super().__init__()
        self.no_imgnorm, self.use_abs = no_imgnorm, use_abs
        self.cnn = get_cnn(cnn_type)
        if cnn_type.startswith("vgg"):
            self.fc = nn.Linear(self.cnn.classifier._modules["6"].in_features, embed_size)
            self.cnn.classifier = nn.Sequential(*list(self.cnn.classifier.children())[:-1])
        else:
            self.fc = nn.Linear(self.cnn.module.fc.in_features, embed_size)
            self.cnn.module.fc = nn.Sequential()
        bound = np.sqrt(6.0) / np.sqrt(self.fc.in_features + self.fc.out_features)
        self.fc.weight.data.uniform_(-bound, bound)
        self.fc.bias.data.fill_(0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.fc(l2norm(self.cnn(images)))
        features = features if self.no_imgnorm else l2norm(features)
        return features.abs() if self.use_abs else features


EVAL_TRANSFORM = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                     transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])


def load_images(paths: list[Path]) -> np.ndarray:
    """The reference's val/test images: Image.open(path).convert('RGB') through get_transform -> [N, 3, 224, 224]."""
    return np.stack([EVAL_TRANSFORM(Image.open(path).convert("RGB")).numpy() for path in paths])


class EncoderText(nn.Module):
    def __init__(self, vocab_size: int, word_dim: int, embed_size: int, num_layers: int, *, use_abs: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)
        self.rnn = nn.GRU(word_dim, embed_size, num_layers, batch_first=True)
        self.use_abs, self.embed_size = use_abs, embed_size
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)

    def forward(self, tokens: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """tokens [B, T] sorted by length, longest first; the GRU output at each caption's last token."""
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(tokens), lengths, batch_first=True)
        padded, _ = nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True)
        index = (torch.tensor(lengths) - 1).view(-1, 1, 1).expand(len(lengths), 1, self.embed_size)
        out = l2norm(torch.gather(padded, 1, index).squeeze(1))
        return out.abs() if self.use_abs else out


def reference_options(**overrides: object) -> argparse.Namespace:
    """train.py's options (its defaults, precomputed COCO features) with `overrides` (vocab_size: train.py sets it)."""
    options = dict(data_path="/data", data_name="coco_precomp", vocab_path="./vocab/", margin=0.2, num_epochs=30,
                   batch_size=128, word_dim=300, embed_size=1024, grad_clip=2.0, crop_size=224, num_layers=1,
                   learning_rate=0.0002, lr_update=15, workers=10, log_step=10, val_step=500, logger_name="runs/x",
                   resume="", max_violation=True, img_dim=4096, finetune=False, cnn_type="vgg19", use_restval=False,
                   measure="cosine", use_abs=False, no_imgnorm=False, reset_train=False)
    options.update(overrides)
    return argparse.Namespace(**options)


def build_encoders(opt: argparse.Namespace, *, seed: int) -> tuple[nn.Module, EncoderText]:
    """The reference's EncoderImage choice (precomputed features for a *_precomp data_name, else the full CNN)."""
    torch.manual_seed(seed)
    if opt.data_name.endswith("_precomp"):
        image = EncoderImagePrecomp(opt.img_dim, opt.embed_size, use_abs=opt.use_abs, no_imgnorm=opt.no_imgnorm)
    else:
        image = EncoderImageFull(opt.embed_size, cnn_type=opt.cnn_type, use_abs=opt.use_abs, no_imgnorm=opt.no_imgnorm)
    text = EncoderText(opt.vocab_size, opt.word_dim, opt.embed_size, opt.num_layers, use_abs=opt.use_abs)
    return image.eval(), text.eval()


def save_checkpoint(path: Path, opt: argparse.Namespace, image: nn.Module, text: nn.Module, *,
                    legacy: bool = False) -> None:
    """model_best.pth.tar as train.py saves it (legacy: torch's pre-1.6 format, as the released files are)."""
    state = {"epoch": 7, "model": [image.state_dict(), text.state_dict()], "best_rsum": 321.5, "opt": opt,
             "Eiters": 4321}
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)


@torch.no_grad()
def encode_data(image: nn.Module, text: nn.Module, vocab: Vocabulary, features: np.ndarray, captions: list[str], *,
                batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Per-caption image and caption embeddings (float64), caption i of image i // 5, batches sorted by length."""
    img_embs = np.zeros((len(captions), image.fc.out_features))
    cap_embs = np.zeros((len(captions), image.fc.out_features))
    for start in range(0, len(captions), batch_size):
        ids = list(range(start, min(start + batch_size, len(captions))))
        targets = {i: [vocab("<start>")] + [vocab(t) for t in word_tokenize(captions[i].lower())] + [vocab("<end>")]
                   for i in ids}
        ids.sort(key=lambda i: len(targets[i]), reverse=True)
        lengths = [len(targets[i]) for i in ids]
        tokens = torch.zeros(len(ids), max(lengths), dtype=torch.long)
        for row, i in enumerate(ids):
            tokens[row, :lengths[row]] = torch.tensor(targets[i])
        images = torch.from_numpy(features[[i // CAPTIONS_PER_IMAGE for i in ids]]).float()
        img_embs[ids] = image(images).numpy()
        cap_embs[ids] = text(tokens, lengths).numpy()
    return img_embs, cap_embs


def order_scores(images: np.ndarray, captions: np.ndarray) -> np.ndarray:
    """-||max(0, caption - image)|| for every (image, caption), in float32 as the reference computes it."""
    im, s = torch.tensor(images, dtype=torch.float32), torch.tensor(captions, dtype=torch.float32)
    return (-(s.unsqueeze(1) - im.unsqueeze(0)).clamp(min=0).pow(2).sum(2).sqrt().t()).numpy()


def i2t(images: np.ndarray, captions: np.ndarray, *, measure: str) -> tuple[tuple, np.ndarray]:
    """((r1, r5, r10, medr, meanr), 0-based ranks [N]): each image's best-ranked caption among all."""
    npts = images.shape[0] // CAPTIONS_PER_IMAGE
    ranks = np.zeros(npts)
    for index in range(npts):
        query = images[CAPTIONS_PER_IMAGE * index].reshape(1, -1)
        d = order_scores(query, captions)[0] if measure == "order" else np.dot(query, captions.T).flatten()
        inds = np.argsort(d)[::-1]
        ranks[index] = min(np.where(inds == i)[0][0]
                           for i in range(CAPTIONS_PER_IMAGE * index, CAPTIONS_PER_IMAGE * (index + 1)))
    return _summary(ranks), ranks


def t2i(images: np.ndarray, captions: np.ndarray, *, measure: str) -> tuple[tuple, np.ndarray]:
    """((r1, r5, r10, medr, meanr), 0-based ranks [5N]): each caption's image among all images."""
    npts = images.shape[0] // CAPTIONS_PER_IMAGE
    ims = images[::CAPTIONS_PER_IMAGE]
    ranks = np.zeros(CAPTIONS_PER_IMAGE * npts)
    for index in range(npts):
        queries = captions[CAPTIONS_PER_IMAGE * index:CAPTIONS_PER_IMAGE * (index + 1)]
        d = order_scores(ims, queries).T if measure == "order" else np.dot(queries, ims.T)
        for i in range(len(queries)):
            inds = np.argsort(d[i])[::-1]
            ranks[CAPTIONS_PER_IMAGE * index + i] = np.where(inds == index)[0][0]
    return _summary(ranks), ranks


def _summary(ranks: np.ndarray) -> tuple:
    r1, r5, r10 = (100.0 * len(np.where(ranks < k)[0]) / len(ranks) for k in (1, 5, 10))
    return r1, r5, r10, np.floor(np.median(ranks)) + 1, ranks.mean() + 1
