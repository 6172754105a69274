"""The identity of a store's data: a fingerprint of its paths, splits and captions, and digests of a split's rows.

A checkpoint carries the identity of the data it was trained on (train/checkpoint.py) so that every stage where
it meets a store can tell the same data from other data, and count the evaluated images and captions that were
training data (by path, by caption text and by feature content). Pure functions of a FeatureStore's tables and
feature rows; any store origin (extracted, merged, imported) is covered, since all of them are read here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

IDENTITY_VERSION = 1  # bump when a digest below is computed differently (old identities then read as "unknown")
DIGEST_BYTES = 8  # per-row digests: 2^-64 per pair, ~1e-9 false matches for COCO's 566K x 25K caption pairs
FINGERPRINT_BYTES = 16
CHUNK_ROWS = 4096  # feature rows read at once while hashing content (4096 x 2048 fp32 = 32 MB)


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest(), "little")


def text_digests(texts: Iterable[str]) -> np.ndarray:
    """uint64 [n]: the 8-byte blake2b of each text's UTF-8 bytes, in input order."""
    return np.fromiter((_digest(text.encode("utf-8", "surrogatepass")) for text in texts), dtype=np.uint64)


def content_kind(store: object) -> str:
    """The feature kind whose rows stand for an image's content: the first kind the store holds ("1c" in a CNN
    store, "regions" in a region store)."""
    return store.feature_kinds[0]


def row_digests(features: object, rows: np.ndarray, *, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """uint64 [len(rows)]: the 8-byte blake2b of each feature row, its values cast to float16 first.

    `features` is what FeatureStore.feature_rows gives (a reader indexed by sorted unique rows); rows are
    streamed `chunk_rows` at a time, so memory is one chunk. The float16 cast makes a float16 store and the
    float32 store of the same extraction agree; features that differ in more than rounding to float16 (another
    CNN, another crop, another decoder) give other digests.
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty(len(rows), dtype=np.uint64)
    for begin in range(0, len(rows), chunk_rows):
        block = np.asarray(features[rows[begin:begin + chunk_rows]], dtype=np.float16)
        block = np.ascontiguousarray(block.reshape(len(block), -1))
        out[begin:begin + len(block)] = [_digest(row.tobytes()) for row in block]
    return out


def _update_strings(digest: "hashlib._Hash", values: Sequence[str]) -> None:
    values = values.tolist() if isinstance(values, np.ndarray) else values  # Python str: 1.7x faster to encode
    encoded = [value.encode("utf-8", "surrogatepass") for value in values]
    digest.update(np.asarray([len(item) for item in encoded], dtype="<i8").tobytes())  # lengths: unambiguous joins
    digest.update(b"".join(encoded))


def store_fingerprint(store: object) -> str:
    """Hex blake2b (16 bytes) of a store's image paths and splits, caption texts, splits and image index.

    Two stores have the same fingerprint when they describe the same dataset split the same way, wherever
    their files are; rows' extraction status and the features themselves are left out (an interrupted extract
    that resumes keeps its fingerprint; the CNN is checked apart, by its attributes).
    """
    digest = hashlib.blake2b(digest_size=FINGERPRINT_BYTES)
    digest.update(np.asarray([store.num_images, store.num_captions], dtype="<i8").tobytes())
    for values in (store.image_paths, store.image_splits, store.caption_texts, store.caption_splits):
        _update_strings(digest, values)
    digest.update(np.asarray(store.caption_image_index, dtype="<i8").tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class SplitDigests:
    """Sorted unique uint64 digests of the images and captions of some splits of a store."""

    paths: np.ndarray  # image paths (relative to the image root)
    captions: np.ndarray  # caption texts
    content: np.ndarray  # the images' feature rows (row_digests of content_kind)


def split_digests(store: object, splits: Sequence[str], *, content: bool = True) -> SplitDigests:
    """Digests of the done images of `splits` and of their captions (what training or evaluation reads);
    without `content` the feature rows are not read (their digests left empty)."""
    image_rows = store.image_indices(splits)
    caption_rows = store.caption_indices(splits)
    return SplitDigests(
        paths=np.unique(text_digests(store.image_paths[image_rows].tolist())),
        captions=np.unique(text_digests(store.caption_texts[row] for row in caption_rows.tolist())),
        content=np.unique(row_digests(store.feature_rows(content_kind(store)), image_rows)) if content
        else np.empty(0, dtype=np.uint64))


def data_identity(store: object, splits: Sequence[str], *, fingerprint: str | None = None) -> dict:
    """What a checkpoint keeps of its training data: store path and fingerprint, training splits and digests.

    About 8 bytes per training image path, image and distinct caption (COCO's 113K + 113K + 566K: 6 MB).
    """
    digests = split_digests(store, splits)
    return {"version": IDENTITY_VERSION, "store": str(store.path),
            "fingerprint": fingerprint or store_fingerprint(store),
            "splits": list(splits), "content_kind": content_kind(store),
            "paths": digests.paths, "captions": digests.captions, "content": digests.content}


def count_shared(evaluated: np.ndarray, trained: np.ndarray) -> int:
    """How many of the `evaluated` digests are among the sorted `trained` ones."""
    if len(evaluated) == 0 or len(trained) == 0:
        return 0
    positions = np.minimum(np.searchsorted(trained, evaluated), len(trained) - 1)
    return int(np.count_nonzero(trained[positions] == evaluated))


def training_overlap(identity: dict, store: object, splits: Sequence[str]) -> dict:
    """How many images and captions of `splits` of `store` were in the training data of `identity`.

    Returns {"images", "captions": totals evaluated, "images_by_path", "images_by_content", "captions_by_text":
    how many of them the training data held, "any": whether any did}. Images are counted by unique path or
    content, captions by unique text (short generic captions can recur in honest splits of a large dataset).
    """
    same_kind = identity.get("content_kind") == content_kind(store)
    evaluated = split_digests(store, splits, content=same_kind)
    counts = {"images": int(len(store.image_indices(splits))), "captions": int(len(store.caption_indices(splits))),
              "images_by_path": count_shared(evaluated.paths, identity["paths"]),
              "images_by_content": count_shared(evaluated.content, identity["content"]) if same_kind else 0,
              "captions_by_text": count_shared(evaluated.captions, identity["captions"])}
    counts["any"] = any(counts[key] for key in ("images_by_path", "images_by_content", "captions_by_text"))
    return counts
