"""Released layouts read into an ImportPlan: the store's tables and which rows of which array fill each image.

VSE++ precomp folders (fartashf/vsepp data.py PrecompDataset) and SCAN/BUTD region folders (kuanghuei/SCAN data.py)
hold per split `{split}_ims.npy` and `{split}_caps.txt` (SCAN also `{split}_ids.txt`, one image id per array row).
Like the reference loader, an array with as many rows as there are captions holds one row per caption (each image
repeated for its captions, which follow each other); any other row count holds one row per image, whose captions
follow each other in the text file. A dataset file (Karpathy JSON or TSV) plus one matrix holds one row per image
of the dataset, in its order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.choices import SPLITS
from features.datasets import DatasetIndex, load_dataset
from features.importers.arrays import ArraySource
from features.schema import TEN_CROP_ORDER

logger = logging.getLogger(__name__)

# Split files of a precomp folder -> store splits ("dev" is the validation split; "testall", COCO's 5K test, and
# "test", its first 1K fold or Flickr's 1K test, both become "test", so only one of them is imported).
PRECOMP_SPLITS = {"train": "train", "dev": "val", "test": "test", "testall": "test"}
LAYOUTS = ("auto", "vsepp", "scan", "dataset")
SET_KINDS = ("auto", "crops", "regions")


@dataclass
class Part:
    """One source array and the store rows its images fill: image i is array row i * rows_per_image."""

    array: ArraySource
    split: str  # the source split ("train", "dev", ...), "" for a dataset + matrix
    first_image: int  # store row of its first image
    num_images: int
    rows_per_image: int  # 1, or k when every caption has its own row (k identical rows per image)


@dataclass
class ImportPlan:
    """What an import writes: the tables, the parts that fill the feature rows, and how to describe them."""

    dataset: DatasetIndex
    parts: list[Part]
    kind: str  # "1c" [N, D], "10c" [N, 10, D] (torchvision TenCrop order) or "regions" [N, K, D]
    set_size: int  # crops (10) or regions (K) per image; 0 for "1c"
    feature_dim: int
    layout: str  # "vsepp", "scan" or "dataset"
    description: str  # the detected layout in words, stored as the source_layout attribute
    source_files: list[Path] = field(default_factory=list)
    # captions/tokens of a new store are the reference loaders' (reference_tokens), computed only when the store is
    # created (COCO's 616K captions take minutes; a resume compares the texts, from which the tokens follow)
    reference_tokens: bool = False

    def close(self) -> None:
        """Release every source array."""
        for part in self.parts:
            part.array.close()


def reference_tokens(text: str) -> list[str]:
    """The tokens the reference loaders see: nltk word_tokenize of the lowercased caption.

    preserve_line=True skips nltk's sentence splitter, whose punkt model is a separate download; it changes tokens
    only where a caption holds several sentences (the period ending an inner sentence stays on its word).
    """
    try:
        from nltk.tokenize import word_tokenize
    except ImportError as err:
        raise ValueError("importing captions needs nltk for the reference's tokens: pip install nltk") from err
    return word_tokenize(text.lower(), preserve_line=True)


def read_lines(path: Path, *, what: str) -> list[str]:
    """The stripped lines of a UTF-8 text file, as the reference reads them (`for line in f: line.strip()`)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist; every imported split needs it beside its "
                                "_ims.npy (check the folder and --splits)")
    lines = path.read_bytes().split(b"\n")
    if lines and not lines[-1].strip():
        lines.pop()  # the newline ending the last line
    texts = []
    for number, line in enumerate(lines, start=1):
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: line {number} is not UTF-8 ({err}); save the file as UTF-8") from err
        if not text:
            raise ValueError(f"{path}: line {number} is empty; each line must hold one {what.split()[0]}: remove "
                             "the blank line")
        texts.append(text)
    if not texts:
        raise ValueError(f"{path} is empty; it must hold one line per {what.split()[0]}")
    return texts


def _feature_kind(array: ArraySource, *, layout: str, set_kind: str) -> tuple[str, int]:
    """("1c", 0), ("10c", 10) or ("regions", K) of an array's row shape."""
    row_shape = array.shape[1:]
    expected = "[N, D] vectors, [N, 10, D] ten crops or [N, K, D] regions"
    if len(row_shape) == 1:
        if set_kind != "auto":
            raise ValueError(f"{array.label} has shape {array.shape}, one vector per row: --set-kind "
                             f"{set_kind} needs [N, K, D] sets; drop it")
        return "1c", 0
    if len(row_shape) != 2 or min(row_shape) == 0:
        raise ValueError(f"{array.label} has shape {array.shape}; expected {expected}")
    size = row_shape[0]
    if set_kind == "crops" or (set_kind == "auto" and layout != "scan" and size == len(TEN_CROP_ORDER)):
        if size != len(TEN_CROP_ORDER):
            raise ValueError(f"{array.label} has {size} vectors per row; --set-kind crops needs the "
                             f"{len(TEN_CROP_ORDER)} crops of torchvision's TenCrop: use --set-kind regions")
        return "10c", size
    return "regions", size


def _check_same_rows(parts: list[Part], kinds: list[tuple[str, int]]) -> None:
    first = parts[0].array
    for part, kind in zip(parts[1:], kinds[1:]):
        if part.array.shape[1:] != first.shape[1:] or kind != kinds[0]:
            raise ValueError(f"{part.array.label} has rows of shape {part.array.shape[1:]}, {first.label} of "
                             f"{first.shape[1:]}; every split must hold the same kind of features")


def _captions_per_image(array: ArraySource, captions: list[str], *, caps_path: Path,
                        captions_per_image: int) -> tuple[int, int]:
    """(number of images, rows per image) of one split, detected as the reference loader does."""
    rows, count = array.num_rows, len(captions)
    if rows == count:  # one row per caption: the reference's im_div = 1
        if count % captions_per_image:
            raise ValueError(f"{array.label} has one row per caption ({rows}), but {count} captions are not a "
                             f"multiple of --captions-per-image {captions_per_image}; pass the number of captions "
                             "each image has")
        return count // captions_per_image, captions_per_image
    if count % rows:
        raise ValueError(f"{caps_path} has {count} captions, not a multiple of the {rows} rows of {array.label}; "
                         "the two files belong to different splits or releases: use the pair from one folder")
    return rows, 1


def plan_folder(folder: str | Path, *, splits: tuple[str, ...], layout: str, set_kind: str,
                captions_per_image: int) -> ImportPlan:
    """Read a VSE++ or SCAN precomp folder's split files into a plan (arrays opened, nothing read but headers)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"precomp folder {str(folder)!r} does not exist; pass the folder holding "
                                "{split}_ims.npy and {split}_caps.txt (e.g. data/coco_precomp)")
    unknown = [split for split in splits if split not in PRECOMP_SPLITS]
    if unknown or not splits:
        raise ValueError(f"--splits {','.join(splits)!r}: each must be one of {', '.join(PRECOMP_SPLITS)}")
    targets = [PRECOMP_SPLITS[split] for split in splits]
    if len(set(targets)) != len(targets):
        raise ValueError(f"--splits {','.join(splits)}: test and testall both become the store's test split; "
                         "import one of them (testall is COCO's 5K test, test its first 1K)")
    for split in splits:
        for suffix in ("_ims.npy", "_caps.txt"):
            if not (folder / f"{split}{suffix}").is_file():
                raise FileNotFoundError(f"{folder / f'{split}{suffix}'} does not exist; the folder lacks split "
                                        f"{split!r}: pass --splits with the splits it has")
    if layout == "auto":
        layout = "scan" if all((folder / f"{split}_ids.txt").is_file() for split in splits) else "vsepp"
    parts: list[Part] = []
    paths, image_splits, texts, image_index = [], [], [], []
    descriptions, sources = [], []
    try:
        for split in splits:
            array = ArraySource(folder / f"{split}_ims.npy")
            parts.append(Part(array, split, first_image=len(paths), num_images=0, rows_per_image=1))
            caps_path = folder / f"{split}_caps.txt"
            captions = read_lines(caps_path, what="caption file")
            num_images, rows_per_image = _captions_per_image(array, captions, caps_path=caps_path,
                                                             captions_per_image=captions_per_image)
            names = [str(number) for number in range(num_images)]
            sources += [array.path, caps_path]
            if layout == "scan":
                ids_path = folder / f"{split}_ids.txt"
                names = _image_ids(ids_path, array, rows_per_image=rows_per_image)
                sources.append(ids_path)
            parts[-1].num_images, parts[-1].rows_per_image = num_images, rows_per_image
            captions_each = len(captions) // num_images
            image_index += [parts[-1].first_image + number // captions_each for number in range(len(captions))]
            paths += [f"{split}/{name}" for name in names]
            image_splits += [PRECOMP_SPLITS[split]] * num_images
            texts += captions
            descriptions.append(
                f"{split} -> {PRECOMP_SPLITS[split]}: {array.path.name} {list(array.shape)}, " +
                (f"one row per caption, {rows_per_image} identical rows per image stored once" if rows_per_image > 1
                 else f"one row per image, {captions_each} captions each"))
        kinds = [_feature_kind(part.array, layout=layout, set_kind=set_kind) for part in parts]
        _check_same_rows(parts, kinds)
    except BaseException:
        for part in parts:
            part.array.close()
        raise
    dataset = DatasetIndex(image_paths=paths, image_splits=image_splits, caption_texts=texts, caption_tokens=None,
                           caption_image_index=np.asarray(image_index, dtype=np.int64))
    kind, set_size = kinds[0]
    note = ("; each row of the 10crop release is one vector per image (the reference's image encoder is one "
            "nn.Linear over [B, D]): per the VSE++ paper (sec. 3), the mean of the features of 10 crops"
            if kind == "1c" and "10crop" in folder.resolve().name else "")
    description = f"{layout} precomp folder {folder.resolve().name}: " + "; ".join(descriptions) + note
    return ImportPlan(dataset=dataset, parts=parts, kind=kind, set_size=set_size, feature_dim=parts[0].array.shape[-1],
                      layout=layout, description=description, source_files=sources, reference_tokens=True)


def _image_ids(ids_path: Path, array: ArraySource, *, rows_per_image: int) -> list[str]:
    """The image id of each image of a SCAN split: one line per array row, the same for an image's rows."""
    ids = read_lines(ids_path, what="image id file")
    if len(ids) != array.num_rows:
        raise ValueError(f"{ids_path} has {len(ids)} ids for the {array.num_rows} rows of {array.label}; it must "
                         "hold one image id per row: use the ids file of the same split and release")
    bad = next((number for number, value in enumerate(ids) if not value.isdigit()), None)
    if bad is not None:
        raise ValueError(f"{ids_path}: line {bad + 1} holds {ids[bad]!r}, not an integer image id; fix the line")
    grouped = np.asarray(ids, dtype=object).reshape(-1, rows_per_image)
    differing = np.flatnonzero((grouped != grouped[:, :1]).any(axis=1))
    if differing.size:
        row = int(differing[0]) * rows_per_image
        raise ValueError(f"{ids_path}: lines {row + 1}..{row + rows_per_image} should repeat one image's id (one row "
                         f"per caption, {rows_per_image} per image) but differ; pass --captions-per-image")
    return grouped[:, 0].tolist()


def plan_dataset(matrix: str | Path, *, dataset_path: str | Path, dataset_format: str, array_key: str,
                 set_kind: str) -> ImportPlan:
    """A Karpathy JSON or TSV dataset plus a .npy / .npz matrix whose rows follow the dataset's images."""
    dataset = load_dataset(dataset_path, dataset_format)
    array = ArraySource(matrix, key=array_key)
    try:
        if array.num_rows != dataset.num_images:
            raise ValueError(f"{array.label} has {array.num_rows} rows but {dataset_path} lists {dataset.num_images} "
                             "images; the matrix needs one row per image of the dataset, in its order")
        kind, set_size = _feature_kind(array, layout="dataset", set_kind=set_kind)
    except BaseException:
        array.close()
        raise
    splits = {split: dataset.image_splits.count(split) for split in SPLITS if split in dataset.image_splits}
    description = (f"dataset {Path(dataset_path).name} ({dataset.num_images} images, splits {splits}) with "
                   f"{array.label} {list(array.shape)}, one row per image in the dataset's order")
    if kind == "10c":
        description += ", ten crops in torchvision TenCrop order (1c is crop 4, the center)"
    part = Part(array, "", first_image=0, num_images=dataset.num_images, rows_per_image=1)
    return ImportPlan(dataset=dataset, parts=[part], kind=kind, set_size=set_size, feature_dim=array.shape[-1],
                      layout="dataset", description=description, source_files=[Path(dataset_path), array.path])
