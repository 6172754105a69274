"""Caption-level batches over the feature store: token ids and image features gathered by index.

One epoch visits every caption of the training splits once, in a permutation seeded by (seed, epoch);
batch `step` of an epoch is a pure function of (seed, epoch, step), so a resume mid-epoch skips the
batches already done and sees the very same ones after. Features are read with the store's row reader
(`feature_rows`, preadv) for the batch's sorted unique image rows only, so memory stays one batch.

Feature modes (what one caption's image looks like in a batch):
  "1c"          the center crop, [B, D] (store kind 1c);
  "10c"         the mean of the ten crops, [B, D], averaged in float32 per batch (paper 10C);
  "10c-random"  one crop per caption, drawn from (seed, epoch, step), [B, D] (validation: the mean);
  "10c-set"     all ten crops, [B, 10, D], pooled by the model's --image-pool (mean, adaptive or gpo);
  "regions"     a region store's K vectors per image, [B, K, D], pooled the same way: the crop set and the
                region set are one idea and take one path (SET_FEATURE_MODES) from here to the pooling.
A set mode may drop vectors at random in training (--region-drop, VSE-infinity's size augmentation), drawn
from (seed, epoch, step) like the crops: each set keeps its vectors in order, packed at the front, and its
size goes in Batch.image_lengths (the pooling masks the rest). Validation and eval never drop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from common.choices import FEATURE_MODES, SET_FEATURE_MODES
from train.prefetch import prefetch
from train.text import Vocabulary, caption_tokens

NUM_CROPS = 10
# Independent random streams, keyed by (seed, epoch, [step,] stream): 2 is the group loss's random-k stream
# (train/losses/group.py), 3 finetune's random crops (train/finetune/data.py).
ORDER_STREAM, CROP_STREAM, LOADER_STREAM, DROP_STREAM = 0, 1, 4, 5


def store_kind(feature_mode: str) -> str:
    """Store feature kind ("1c", "10c" or "regions") a feature mode reads."""
    if feature_mode not in FEATURE_MODES:
        raise ValueError(f"unknown feature mode {feature_mode!r}; valid: {', '.join(FEATURE_MODES)}")
    return feature_mode if feature_mode in ("1c", "regions") else "10c"


def check_feature_mode(store: object, feature_mode: str, *, option: str = "--feature-mode") -> None:
    """ValueError when `store` lacks the features `feature_mode` reads, naming the modes that fit it."""
    kind, held = store_kind(feature_mode), store.feature_kinds
    if kind not in held:
        fitting = [mode for mode in FEATURE_MODES if store_kind(mode) in held]
        other = {"10c": "re-extract with --crops 10", "regions": "import region features (`pipeline.py "
                 "import-features`)"}.get(kind, "extract CNN features (`pipeline.py extract`)")
        raise ValueError(f"{option} {feature_mode} reads {kind} features, but {getattr(store, 'path', 'the store')} "
                         f"holds {', '.join(held)} ({store.describe()}); the feature modes this store serves: "
                         f"{', '.join(fitting)}; or {other}")


def region_keep_mask(generator: np.random.Generator, count: int, set_size: int, drop: float) -> np.ndarray:
    """Which vectors of `count` sets of `set_size` survive a random drop: bool [count, set_size].

    keep[b, k] = u[b, k] >= drop with u uniform in [0, 1) (each vector dropped with probability `drop`), and
    keep[b, argmax_k u[b, k]] = True: the vector with the largest draw always stays, so no set is ever empty.
    """
    draws = generator.random((count, set_size))
    keep = draws >= drop
    keep[np.arange(count), draws.argmax(axis=1)] = True
    return keep


def pack_sets(features: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kept vectors moved to the front of each set, in their order, zeros after them.

    features [B, K, D], keep bool [B, K] -> (packed [B, K, D], lengths int64 [B] = keep.sum(1)) with
    packed[b, :lengths[b]] = features[b][keep[b]] and packed[b, lengths[b]:] = 0.
    """
    order = np.argsort(~keep, axis=1, kind="stable")  # kept positions first, each group in its own order
    packed = np.take_along_axis(features, order[:, :, None], axis=1)
    lengths = keep.sum(axis=1).astype(np.int64)
    packed[np.arange(keep.shape[1])[None, :] >= lengths[:, None]] = 0.0
    return packed, lengths


def eval_feature_mode(feature_mode: str) -> str:
    """Deterministic mode for validation/eval: "10c-random" is evaluated on the mean of the crops."""
    return "10c" if feature_mode == "10c-random" else feature_mode


def read_image_features(features: np.ndarray, image_rows: np.ndarray, *, feature_mode: str,
                        crop_indices: np.ndarray | None = None) -> np.ndarray:
    """float32 features of `image_rows` (one per caption, repeats allowed) read from a row reader.

    Reads only the sorted unique rows (locality; h5py Datasets need it too), then maps back with the
    inverse. `crop_indices` [B] in [0, 10) is required for "10c-random". Shapes: [B, D], or the set
    [B, K, D] for the set modes ("10c-set": K = 10; "regions": the store's K).
    """
    unique_rows, inverse = np.unique(np.asarray(image_rows, dtype=np.int64), return_inverse=True)
    block = np.asarray(features[unique_rows], dtype=np.float32)  # [U, D] or [U, 10, D]; fp16 -> fp32 here
    if feature_mode == "1c":
        return block[inverse]
    if feature_mode == "10c":
        return block.mean(axis=1)[inverse]
    if feature_mode in SET_FEATURE_MODES:
        return block[inverse]
    if feature_mode == "10c-random":
        if crop_indices is None or len(crop_indices) != len(image_rows):
            raise ValueError("feature mode 10c-random needs one crop index per caption")
        return block[inverse, np.asarray(crop_indices, dtype=np.int64)]
    raise ValueError(f"unknown feature mode {feature_mode!r}; valid: {', '.join(FEATURE_MODES)}")


@dataclass(frozen=True)
class RankShare:
    """This process's share of every global batch under torch.distributed: a contiguous block of it.

    Rank r of N takes block r of np.array_split(batch, N): the global batch (its captions, order, crops)
    is the one a single process would use, no caption is padded, dropped or seen twice.
    """

    rank: int = 0
    world_size: int = 1

    def of(self, count: int) -> slice:
        """Positions of this rank's block in a global batch of `count` captions."""
        base, extra = divmod(count, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + int(self.rank < extra))

    def check(self, *, batch_size: int, num_captions: int) -> None:
        """Every rank must get the same share of a full batch and a non-empty share of the last one."""
        if batch_size % self.world_size:
            raise ValueError(f"--batch-size {batch_size} is the global batch and must divide by the {self.world_size} "
                             f"ranks; use a multiple of {self.world_size}")
        last = num_captions % batch_size
        if 0 < last < self.world_size:
            raise ValueError(f"the last batch of each epoch would hold {last} of {num_captions} captions, fewer than "
                             f"the {self.world_size} ranks; pick a --batch-size that leaves 0 or at least "
                             f"{self.world_size} captions for the last batch")


def check_finite(features: np.ndarray, image_rows: np.ndarray, *, store: object, kind: str) -> None:
    """ValueError naming the store rows whose features hold NaN or inf (they would turn the loss into NaN)."""
    finite = np.isfinite(features.reshape(len(features), -1)).all(axis=1)
    if not finite.all():
        bad = np.unique(image_rows[~finite])
        raise ValueError(f"{getattr(store, 'path', 'the store')}: features/{kind} of image rows {bad[:10].tolist()} "
                         f"hold NaN or inf; re-extract those images (or the store) before training")


def _keep_batch(batch: "Batch") -> "Batch":
    return batch  # batches are built whole by the batch source; a picklable no-op collate for workers


def _in_process(source: torch.utils.data.Dataset, epoch: int, caption_order: np.ndarray,
                start_step: int) -> Iterator["Batch"]:
    for step in range(start_step, source.steps_per_epoch):
        yield source.batch(epoch, step, order=caption_order)


def iterate_epoch(source: torch.utils.data.Dataset, epoch: int, *, order: Callable[[], np.ndarray], seed: int,
                  start_step: int, workers: int, pin_memory: bool = False) -> Iterator["Batch"]:
    """Batches start_step.. of `epoch` of a batch source (train's CaptionBatches, finetune's image batches).

    The source indexes whole batches by epoch * steps_per_epoch + step and builds batch (epoch, step) from
    (seed, epoch, step) alone, so a resume mid-epoch sees the same batches. With workers > 0 a DataLoader
    builds them in worker processes; its private generator keeps the global RNG untouched (exact resume).
    With workers = 0 a thread builds the next batches while the step runs (train/prefetch.py).
    `pin_memory` (for a CUDA device) page-locks each batch so its copy to the GPU can run asynchronously.
    """
    if workers <= 0:
        yield from prefetch(_in_process(source, epoch, order(), start_step),
                            prepare=Batch.pin_memory if pin_memory else None)
        return
    first = epoch * source.steps_per_epoch
    loader_seed = int(np.random.SeedSequence([seed, epoch, LOADER_STREAM]).generate_state(1)[0])
    loader = torch.utils.data.DataLoader(source, batch_size=None, num_workers=workers, collate_fn=_keep_batch,
                                         pin_memory=pin_memory,
                                         sampler=range(first + start_step, first + source.steps_per_epoch),
                                         generator=torch.Generator().manual_seed(loader_seed))
    yield from loader


def pad_token_ids(token_ids: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of int64 id arrays -> (tokens [B, T] padded with <pad>=0, lengths [B])."""
    lengths = torch.tensor([len(ids) for ids in token_ids], dtype=torch.int64)
    tokens = torch.zeros(len(token_ids), int(lengths.max()) if len(token_ids) else 0, dtype=torch.int64)
    for row, ids in enumerate(token_ids):
        tokens[row, :len(ids)] = torch.from_numpy(ids)
    return tokens, lengths


@dataclass
class Batch:
    """One training step's captions with their images (row b of `images` is caption b's image)."""

    tokens: torch.Tensor  # int64 [B, T], 0-padded, <start> ... <end>
    lengths: torch.Tensor  # int64 [B]
    images: torch.Tensor  # float32 [B, D] or a set [B, K, D]
    image_ids: torch.Tensor  # int64 [B], store image row of each caption (positives share it)
    caption_rows: torch.Tensor  # int64 [B], store caption row (e.g. to gather LSEH semantic vectors)
    image_lengths: torch.Tensor | None = None  # int64 [B], each set's size after a region drop; None = all K

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    def to(self, device: torch.device | str) -> "Batch":
        """Copy of the batch on `device` (lengths stay on the CPU for pack_padded_sequence); asynchronous from
        pinned memory to a GPU."""
        return Batch(tokens=self.tokens.to(device, non_blocking=True), lengths=self.lengths,
                     images=self.images.to(device, non_blocking=True),
                     image_ids=self.image_ids.to(device, non_blocking=True), caption_rows=self.caption_rows,
                     image_lengths=self.image_lengths)  # on the CPU like lengths: the pooling checks them

    def pin_memory(self) -> "Batch":
        """The batch in page-locked memory (called by DataLoader(pin_memory=True) and the prefetch thread)."""
        return Batch(tokens=self.tokens.pin_memory(), lengths=self.lengths, images=self.images.pin_memory(),
                     image_ids=self.image_ids.pin_memory(), caption_rows=self.caption_rows,
                     image_lengths=self.image_lengths)


class CaptionBatches(torch.utils.data.Dataset):
    """Batches of an epoch, indexed by step: `batches.batch(epoch, step)` (also a map-style Dataset).

    Used as a Dataset of whole batches (DataLoader with batch_size=None) when workers > 0:
    index = epoch * steps_per_epoch + step.
    """

    def __init__(self, store: object, *, splits: Sequence[str], vocab: Vocabulary, feature_mode: str,
                 batch_size: int, seed: int, share: RankShare = RankShare(), region_drop: float = 0.0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if region_drop and (feature_mode not in SET_FEATURE_MODES or not 0 <= region_drop < 1):
            raise ValueError(f"region drop {region_drop} needs a set feature mode ({', '.join(SET_FEATURE_MODES)}, "
                             f"not {feature_mode!r}) and a probability in [0, 1)")
        check_feature_mode(store, feature_mode)
        self.store = store
        self.kind = store_kind(feature_mode)
        self.feature_mode = feature_mode
        self.region_drop = region_drop
        self.batch_size = batch_size
        self.seed = seed
        self.caption_rows = store.caption_indices(list(splits))
        if len(self.caption_rows) == 0:
            raise ValueError(f"no captions with extracted images in splits {list(splits)} of "
                             f"{getattr(store, 'path', 'the store')}; check the splits and the extraction")
        self.caption_image_rows = store.caption_image_index[self.caption_rows]
        tokens = caption_tokens(store, self.caption_rows.tolist(), tokenizer=vocab.tokenizer)
        self.token_ids = [vocab.encode(caption) for caption in tokens]
        self.steps_per_epoch = -(-len(self.caption_rows) // batch_size)  # the last batch may be short
        share.check(batch_size=batch_size, num_captions=len(self.caption_rows))
        self.share = share

    @property
    def num_captions(self) -> int:
        """Captions per epoch."""
        return len(self.caption_rows)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Positions (into caption_rows) in the order of `epoch`: a permutation seeded by (seed, epoch)."""
        return np.random.default_rng([self.seed, epoch, ORDER_STREAM]).permutation(len(self.caption_rows))

    def global_positions(self, epoch: int, step: int, order: np.ndarray | None = None) -> np.ndarray:
        """Positions (into caption_rows) of the captions of global batch `step` of `epoch`."""
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} outside [0, {self.steps_per_epoch})")
        order = self.epoch_order(epoch) if order is None else order
        return order[step * self.batch_size:(step + 1) * self.batch_size]

    def batch(self, epoch: int, step: int, *, order: np.ndarray | None = None) -> Batch:
        """This rank's share of batch `step` (0-based) of `epoch` (the whole batch in one process); pass
        `order` = epoch_order(epoch) to avoid recomputing it."""
        positions = self.global_positions(epoch, step, order)
        crops = None
        if self.feature_mode == "10c-random":
            crops = np.random.default_rng([self.seed, epoch, step, CROP_STREAM]).integers(0, NUM_CROPS,
                                                                                          len(positions))
        rows = self.store.feature_rows(self.kind)
        keep = None
        if self.region_drop:  # drawn for the global batch, so every rank's share is the single process's
            keep = region_keep_mask(np.random.default_rng([self.seed, epoch, step, DROP_STREAM]), len(positions),
                                    rows.shape[1], self.region_drop)
        mine = self.share.of(len(positions))
        positions, crops = positions[mine], None if crops is None else crops[mine]
        image_rows = self.caption_image_rows[positions]
        features = read_image_features(rows, image_rows, feature_mode=self.feature_mode, crop_indices=crops)
        check_finite(features, image_rows, store=self.store, kind=self.kind)
        image_lengths = None
        if keep is not None:
            features, image_lengths = pack_sets(features, keep[mine])
            image_lengths = torch.from_numpy(image_lengths)
        tokens, lengths = pad_token_ids([self.token_ids[position] for position in positions])
        return Batch(tokens=tokens, lengths=lengths, images=torch.from_numpy(features),
                     image_ids=torch.from_numpy(image_rows.astype(np.int64)),
                     caption_rows=torch.from_numpy(self.caption_rows[positions]), image_lengths=image_lengths)

    def epoch_batches(self, epoch: int, *, start_step: int = 0, workers: int = 0,
                      pin_memory: bool = False) -> Iterator[Batch]:
        """Batches start_step.. of `epoch`, in order; `workers` > 0 builds them in DataLoader processes."""
        yield from iterate_epoch(self, epoch, order=lambda: self.epoch_order(epoch), seed=self.seed,
                                 start_step=start_step, workers=workers, pin_memory=pin_memory)

    def __getitem__(self, index: int) -> Batch:
        epoch, step = divmod(int(index), self.steps_per_epoch)
        return self.batch(epoch, step)
