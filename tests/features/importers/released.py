"""Files in the released layouts, written by the tests' own code: VSE++ precomp folders (fartashf/vsepp data.py
PrecompDataset), SCAN/BUTD region folders (kuanghuei/SCAN data.py) and a Karpathy JSON with a matrix."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WORDS = ("red", "blue", "green", "dog", "cat", "bird", "runs", "sits", "jumps")
PRECOMP_TO_STORE = {"train": "train", "dev": "val", "test": "test", "testall": "test"}


@dataclass
class ReleasedSplit:
    """One split as released: image features [n, ...] and each image's captions (the same count for all)."""

    features: np.ndarray
    captions: list[list[str]]
    ids: list[int] | None = None  # SCAN: one image id per image


def make_split(num_images: int, *, row_shape: tuple[int, ...], captions_per_image: int = 5, seed: int = 0,
               first_id: int = 1000) -> ReleasedSplit:
    """Random float32 features and captions built from WORDS (a few with a second sentence, as COCO has)."""
    generator = np.random.default_rng(seed)
    features = generator.standard_normal((num_images,) + row_shape).astype(np.float32)
    captions = []
    for image in range(num_images):
        texts = []
        for number in range(captions_per_image):
            words = [WORDS[int(index)] for index in generator.integers(0, len(WORDS), size=4)]
            text = f"A {' '.join(words)} , image {image}."
            texts.append(text + (" It is Sunny." if number == 1 else ""))
        captions.append(texts)
    return ReleasedSplit(features, captions, ids=list(range(first_id, first_id + num_images)))


def write_precomp(folder: Path, splits: dict[str, ReleasedSplit], *, per_caption: tuple[str, ...] = (),
                  with_ids: bool = False) -> Path:
    """`{split}_ims.npy` + `{split}_caps.txt` (+ `{split}_ids.txt`) per split; the splits in `per_caption` hold one
    row per caption (each image's row repeated for its captions), the others one row per image."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        repeats = len(split.captions[0]) if name in per_caption else 1
        np.save(folder / f"{name}_ims.npy", np.repeat(split.features, repeats, axis=0))
        lines = [text for texts in split.captions for text in texts]
        (folder / f"{name}_caps.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        if with_ids:
            ids = np.repeat(np.asarray(split.ids), repeats)
            (folder / f"{name}_ids.txt").write_text("".join(f"{value}\n" for value in ids.tolist()))
    return folder


def write_karpathy(path: Path, splits: dict[str, ReleasedSplit]) -> Path:
    """A Karpathy split JSON of the splits' images (store split names), in order, with `raw` sentences only."""
    images = []
    for name, split in splits.items():
        for number, texts in enumerate(split.captions):
            images.append({"filename": f"{name}_{number:03d}.jpg", "filepath": "imgs", "split": PRECOMP_TO_STORE[name],
                           "sentences": [{"raw": text} for text in texts]})
    path.write_text(json.dumps({"images": images}), encoding="utf-8")
    return path


def expected_tables(splits: dict[str, ReleasedSplit], *, with_ids: bool = False) -> dict:
    """The store tables an import of a precomp folder of `splits` must hold (paths, splits, texts, index)."""
    paths, image_splits, texts, index = [], [], [], []
    for name, split in splits.items():
        for number, captions in enumerate(split.captions):
            row = len(paths)
            paths.append(f"{name}/{split.ids[number] if with_ids else number}")
            image_splits.append(PRECOMP_TO_STORE[name])
            texts += captions
            index += [row] * len(captions)
    return {"paths": paths, "splits": image_splits, "texts": texts, "index": index}
