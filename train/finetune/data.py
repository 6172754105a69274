"""Fine-tuning data: random crops (RC) of raw images per caption batch, and center-crop encoding of a split.

Batch `step` of an epoch holds the same captions as train.data.CaptionBatches (order seeded by
(seed, epoch)); each caption's image is decoded on the fly and cropped with a generator seeded by
(seed, epoch, step, position in the batch), so crops differ between epochs, and a resumed run sees the
very same crops. Only images extracted as done are in the caption rows, so failed images never appear.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.choices import RC_MODES
from extract.loader import ImageDataset, make_loader, to_rgb
from extract.transforms import CROP, RESIZE, Box, pil_to_uint8_tensor, resize_image
from train.data import Batch, CaptionBatches, RankShare, iterate_epoch, pad_token_ids
from train.encode import encode_token_lists, split_rows
from train.model import VSEModel
from train.text import Vocabulary, caption_tokens

RC_STREAM = 3  # apart from train.data's streams and the group loss's random-k stream
RESIZED_SCALE = (0.08, 1.0)  # RandomResizedCrop defaults (area fraction, aspect ratio range)
RESIZED_RATIO = (3.0 / 4.0, 4.0 / 3.0)
RESIZED_ATTEMPTS = 10


def crop_generator(seed: int, epoch: int, step: int, position: int) -> np.random.Generator:
    """The random stream of one caption's crop: a pure function of (seed, epoch, step, position)."""
    return np.random.default_rng([seed, epoch, step, position, RC_STREAM])


def paper_crop_box(generator: np.random.Generator, *, size: int = RESIZE, crop: int = CROP) -> Box:
    """(top, left, height, width) of a uniform random crop x crop box inside a size x size image (paper RC)."""
    top, left = generator.integers(0, size - crop + 1, size=2)
    return int(top), int(left), crop, crop


def resized_crop_box(generator: np.random.Generator, *, height: int, width: int) -> Box:
    """Box of RandomResizedCrop: random area fraction in RESIZED_SCALE and log-uniform aspect in RESIZED_RATIO.

    Tries RESIZED_ATTEMPTS draws for a box that fits in the image; otherwise the largest centered box
    whose aspect ratio is clamped to RESIZED_RATIO (torchvision's documented fallback).
    """
    area = height * width
    log_ratio = (math.log(RESIZED_RATIO[0]), math.log(RESIZED_RATIO[1]))
    for _ in range(RESIZED_ATTEMPTS):
        target_area = area * generator.uniform(*RESIZED_SCALE)
        aspect = math.exp(generator.uniform(*log_ratio))
        box_width = int(round(math.sqrt(target_area * aspect)))
        box_height = int(round(math.sqrt(target_area / aspect)))
        if 0 < box_width <= width and 0 < box_height <= height:
            top = int(generator.integers(0, height - box_height + 1))
            left = int(generator.integers(0, width - box_width + 1))
            return top, left, box_height, box_width
    aspect = width / height
    box_width, box_height = width, height
    if aspect < RESIZED_RATIO[0]:
        box_height = int(round(width / RESIZED_RATIO[0]))
    elif aspect > RESIZED_RATIO[1]:
        box_width = int(round(height * RESIZED_RATIO[1]))
    return (height - box_height) // 2, (width - box_width) // 2, box_height, box_width


def random_crop(image: Image.Image, *, rc: str, generator: np.random.Generator) -> torch.Tensor:
    """RGB PIL image -> uint8 [3, CROP, CROP]: a random crop (rc "paper" or "resized"), flipped with p = 1/2."""
    if rc == "paper":
        pixels = pil_to_uint8_tensor(resize_image(image)).numpy()  # [3, 256, 256], the extraction's resize
        top, left, height, width = paper_crop_box(generator, size=pixels.shape[1])
        pixels = pixels[:, top:top + height, left:left + width]
    elif rc == "resized":
        top, left, height, width = resized_crop_box(generator, height=image.height, width=image.width)
        cropped = image.resize((CROP, CROP), Image.Resampling.BILINEAR, box=(left, top, left + width, top + height))
        pixels = pil_to_uint8_tensor(cropped).numpy()
    else:
        raise ValueError(f"unknown --rc {rc!r}; valid: {', '.join(RC_MODES)}")
    if generator.random() < 0.5:
        pixels = pixels[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(pixels))


def open_rgb(path: Path) -> Image.Image:
    """Decode one image fully to RGB (extract's conversions); a missing or broken file is a clear error."""
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} is missing; it was extracted from this path: restore it or "
                                "pass --image-root with the folder holding the images")
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except OSError as err:
        raise ValueError(f"image {str(path)!r} cannot be decoded ({err}); it was readable at extraction: "
                         "restore the file") from err


class ImageCaptionBatches(torch.utils.data.Dataset):
    """Caption batches whose images are uint8 RC crops [B, 3, 224, 224] of the raw images.

    Same protocol as train.data.CaptionBatches (which gives the caption order and token ids):
    `steps_per_epoch` and `epoch_batches(epoch, *, start_step, workers)`; also a map-style Dataset of whole
    batches (index = epoch * steps_per_epoch + step) decoded in DataLoader workers.
    """

    def __init__(self, store: object, *, splits: Sequence[str], vocab: Vocabulary, batch_size: int, seed: int,
                 image_root: str | Path, rc: str, share: RankShare = RankShare()) -> None:
        if rc not in RC_MODES:
            raise ValueError(f"unknown --rc {rc!r}; valid: {', '.join(RC_MODES)}")
        self.captions = CaptionBatches(store, splits=splits, vocab=vocab, feature_mode="1c", batch_size=batch_size,
                                       seed=seed, share=share)
        self.image_paths = [str(Path(image_root) / path) for path in store.image_paths]
        self.batch_size, self.seed, self.rc = batch_size, seed, rc
        self.steps_per_epoch = self.captions.steps_per_epoch
        self.num_captions = self.captions.num_captions

    def image_rows(self) -> np.ndarray:
        """Sorted store rows of every image a batch can show."""
        return np.unique(self.captions.caption_image_rows)

    def batch(self, epoch: int, step: int, *, order: np.ndarray | None = None) -> Batch:
        """This rank's share of batch `step` of `epoch`: the captions of CaptionBatches.batch with freshly
        cropped images (a caption's crop is drawn from its slot in the global batch, whatever the rank)."""
        positions = self.captions.global_positions(epoch, step, order)
        mine = self.captions.share.of(len(positions))
        slots = range(len(positions))[mine]
        positions = positions[mine]
        image_rows = self.captions.caption_image_rows[positions]
        crops = torch.stack([
            random_crop(open_rgb(Path(self.image_paths[row])), rc=self.rc,
                        generator=crop_generator(self.seed, epoch, step, slot))
            for slot, row in zip(slots, image_rows)])  # [B, 3, 224, 224] uint8
        tokens, lengths = pad_token_ids([self.captions.token_ids[position] for position in positions])
        return Batch(tokens=tokens, lengths=lengths, images=crops,
                     image_ids=torch.from_numpy(image_rows.astype(np.int64)),
                     caption_rows=torch.from_numpy(self.captions.caption_rows[positions]))

    def epoch_batches(self, epoch: int, *, start_step: int = 0, workers: int = 0,
                      pin_memory: bool = False) -> Iterator[Batch]:
        """Batches start_step.. of `epoch`, in order; `workers` > 0 decodes them in DataLoader processes."""
        yield from iterate_epoch(self, epoch, order=lambda: self.captions.epoch_order(epoch), seed=self.seed,
                                 start_step=start_step, workers=workers, pin_memory=pin_memory)

    def __getitem__(self, index: int) -> Batch:
        epoch, step = divmod(int(index), self.steps_per_epoch)
        return self.batch(epoch, step)


@torch.no_grad()
def encode_split_from_images(model: VSEModel, store: object, *, splits: Sequence[str], vocab: Vocabulary,
                             image_root: str | Path, batch_size: int, workers: int,
                             device: torch.device | str, resize: str = "square") -> tuple[torch.Tensor, torch.Tensor,
                                                                                          np.ndarray, np.ndarray]:
    """Embed every done image of `splits` from its raw file (center 224 crop of the 256x256 resize, as
    extract's 1C; or of the aspect-keeping resize with `resize` "keep-aspect", as an imported reference model
    reads images) through the model's CNN, and its captions, in store order.

    Returns (image_emb [N, E], caption_emb [M, E], caption_image_index [M] in 0..N-1, image_rows [N]).
    The model is in eval mode meanwhile; the global RNG is left untouched (the loader draws from it).
    """
    image_rows, caption_rows, caption_image_index = split_rows(store, splits)
    root = Path(image_root)
    dataset = ImageDataset(image_rows.tolist(), [str(root / store.image_paths[row]) for row in image_rows], crops=1,
                           resize=resize)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        with torch.random.fork_rng(devices=[]):
            loader = make_loader(dataset, batch_size=batch_size, workers=workers,
                                 pin_memory=torch.device(device).type == "cuda")
            for batch in loader:
                if batch.failed_indices:
                    row = batch.failed_indices[0]
                    raise ValueError(f"image {str(root / store.image_paths[row])!r} (row {row}) cannot be read "
                                     f"({batch.errors[0]}); it was extracted from this path: restore it or pass "
                                     "the right --image-root")
                chunks.append(model.encode_images(batch.crops[:, 0].to(device, non_blocking=True)).float().cpu())
        tokens = caption_tokens(store, caption_rows.tolist(), tokenizer=vocab.tokenizer)
        caption_emb = encode_token_lists(model, tokens, vocab=vocab,
                                         batch_size=batch_size, device=device)
    finally:
        model.train(was_training)
    return torch.cat(chunks), caption_emb, caption_image_index, image_rows
