"""Parse and validate image-caption datasets (Karpathy split JSON or a TSV) into a DatasetIndex."""

import hashlib
import json
import logging
import os
import posixpath
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.choices import SPLITS

logger = logging.getLogger(__name__)

DATASET_FORMATS = ("auto", "karpathy", "tsv")
TSV_HEADER_COLUMNS = ("image_path", "caption", "split")
# A TSV without a split column gets splits from a stable hash of the image path (see hash_split).
HASH_SPLIT_FRACTIONS = (("train", 0.90), ("val", 0.05), ("test", 0.05))
# Below this many val or test images, recall is too noisy to compare runs (one image moves R@1 by 5 points).
MIN_EVAL_IMAGES = 20


@dataclass
class DatasetIndex:
    """Images and captions of one dataset, in file order; captions point at their image row."""

    image_paths: list[str]  # relative to image_root (Karpathy: filepath/filename joined)
    image_splits: list[str]  # one of SPLITS
    caption_texts: list[str]
    caption_tokens: list[list[str]] | None  # dataset-provided tokens, or None
    caption_image_index: np.ndarray  # int64 [num_captions], caption -> image row

    @property
    def num_images(self) -> int:
        """Number of image rows."""
        return len(self.image_paths)

    @property
    def num_captions(self) -> int:
        """Number of caption rows."""
        return len(self.caption_texts)

    @property
    def caption_splits(self) -> list[str]:
        """Split of each caption (the split of its image)."""
        return [self.image_splits[i] for i in self.caption_image_index.tolist()]


def validate_split_names(splits: Sequence[str], *, where: str) -> None:
    """Raise ValueError naming the first split of `splits` that is not in SPLITS."""
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"{where}: unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


def validate_image_root(root: str | Path) -> Path:
    """Return `root` as a Path; raise FileNotFoundError if it is not an existing directory."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image root {str(root)!r} does not exist; pass the folder holding the images")
    if not root.is_dir():
        raise FileNotFoundError(f"image root {str(root)!r} is a file, not a directory; pass the images folder")
    return root


def check_image_paths(dataset: DatasetIndex, image_root: Path, *, source: str | Path) -> np.ndarray:
    """Refuse image paths that lead outside `image_root`; return the sorted rows whose file does not exist.

    A path is outside when it is absolute, climbs out with `..`, or goes through a symlink (folder or file)
    pointing elsewhere: the check follows symlinks (realpath), so the images read are exactly those under
    the root. ValueError names the first offending row. One lstat per image, one realpath per folder.
    Known limit: checked once before extraction; a symlink swapped in afterwards is not seen.
    """
    real_root = os.path.realpath(image_root)
    inside = real_root.rstrip(os.sep) + os.sep  # strings, not Paths: this runs once per image (COCO: 123K)
    real_folders: dict[str, str] = {}
    missing = []
    for row, image_path in enumerate(dataset.image_paths):
        folder, name = posixpath.split(image_path)
        if "\x00" in image_path or not name or name in (".", ".."):
            raise ValueError(f"{source}: image {row} has the path {image_path!r}, which is not a file name")
        if folder not in real_folders:
            real_folders[folder] = os.path.realpath(os.path.join(real_root, folder))
        real = os.path.join(real_folders[folder], name)
        try:
            if stat.S_ISLNK(os.lstat(real).st_mode):
                real = os.path.realpath(real)
        except (FileNotFoundError, NotADirectoryError):  # not there, or a file where a folder should be
            missing.append(row)
        if not real.startswith(inside):
            raise ValueError(f"{source}: image {row} path {image_path!r} leads to {real!r}, outside --image-root "
                             f"{str(image_root)!r}; image paths must be relative to the image root and stay inside "
                             "it (no absolute paths, no '..', no symlinks to elsewhere)")
    return np.asarray(missing, dtype=np.int64)


def hash_split(image_path: str) -> str:
    """Assign a split from a stable sha1 hash of the path: train 90%, val 5%, test 5%.

    Deterministic across runs, machines and Python versions (unlike hash()), and independent of the
    row order, so adding images to a TSV never moves existing images to another split.
    """
    digest = hashlib.sha1(image_path.encode("utf-8")).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for split, share in HASH_SPLIT_FRACTIONS:
        cumulative += share
        if fraction < cumulative:
            return split
    return HASH_SPLIT_FRACTIONS[-1][0]  # float rounding at the top end


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist; check the --dataset path")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} is not a file; pass the {what} itself")


def _require(entry: dict, key: str, kind: type, *, where: str) -> object:
    if key not in entry:
        raise ValueError(f"{where}: missing key {key!r}")
    value = entry[key]
    if not isinstance(value, kind):
        raise ValueError(f"{where}: {key!r} must be a {kind.__name__}, got {type(value).__name__} {value!r:.80}")
    return value


def _finish(*, image_paths: list[str], image_splits: list[str], caption_texts: list[str],
            caption_tokens: list[list[str]] | None, caption_image_index: list[int], source: Path) -> DatasetIndex:
    if not image_paths:
        raise ValueError(f"{source}: the dataset has no images; check that this is the right file")
    counts = np.bincount(np.asarray(caption_image_index, dtype=np.int64), minlength=len(image_paths))
    if (counts == 0).any():
        row = int(np.flatnonzero(counts == 0)[0])
        raise ValueError(f"{source}: image {row} ({image_paths[row]!r}) has no captions; give it at least one")
    split_counts = {split: image_splits.count(split) for split in SPLITS}
    logger.info("%s: %d images, %d captions, splits %s", source, len(image_paths), len(caption_texts), split_counts)
    return DatasetIndex(
        image_paths=image_paths,
        image_splits=image_splits,
        caption_texts=caption_texts,
        caption_tokens=caption_tokens,
        caption_image_index=np.asarray(caption_image_index, dtype=np.int64),
    )


def _karpathy_sentences(sentences: list, *, where: str,
                        has_tokens: bool | None) -> tuple[list[str], list[list[str]], bool]:
    """Parse one image's sentences; return (raw texts, token lists, whether tokens are given).

    `has_tokens` is None before the first sentence of the file, then every sentence must agree.
    """
    texts: list[str] = []
    token_lists: list[list[str]] = []
    for number, sentence in enumerate(sentences):
        where_sentence = f"{where}.sentences[{number}]"
        if not isinstance(sentence, dict):
            raise ValueError(f"{where_sentence}: expected an object, got {type(sentence).__name__}")
        raw = _require(sentence, "raw", str, where=where_sentence)
        if not raw.strip():
            raise ValueError(f"{where_sentence}: empty caption 'raw'")
        if has_tokens is None:
            has_tokens = "tokens" in sentence
        if ("tokens" in sentence) != has_tokens:
            raise ValueError(f"{where_sentence}: 'tokens' is given for some sentences but not others; "
                             "give tokens for every sentence or for none")
        if has_tokens:
            tokens = _require(sentence, "tokens", list, where=where_sentence)
            if not all(isinstance(token, str) and " " not in token for token in tokens):
                raise ValueError(f"{where_sentence}: 'tokens' must be strings without spaces, got {tokens!r:.80}")
            token_lists.append(tokens)
        texts.append(raw)
    return texts, token_lists, bool(has_tokens)


def load_karpathy_json(path: str | Path) -> DatasetIndex:
    """Load a Karpathy split JSON (dataset_coco.json / dataset_flickr30k.json / dataset_flickr8k.json).

    Each of `images[]` needs `filename`, `split` (train/val/test/restval; restval is kept as its own
    split) and `sentences[]` with `raw` and optionally `tokens` (all sentences or none). `filepath`
    is optional (absent for Flickr30K); the relative image path is filepath/filename.
    """
    path = Path(path)
    _check_file(path, "dataset JSON")
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))  # a byte-order mark is no part of the JSON
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err}); is this a Karpathy split JSON?") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from err
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: expected a JSON object with an 'images' list (the Karpathy split format)")

    image_paths: list[str] = []
    image_splits: list[str] = []
    caption_texts: list[str] = []
    caption_tokens: list[list[str]] = []
    caption_image_index: list[int] = []
    has_tokens: bool | None = None  # decided by the first sentence, then enforced for all
    seen_paths: dict[str, int] = {}
    for row, entry in enumerate(data["images"]):
        where = f"{path}: images[{row}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
        filename = _require(entry, "filename", str, where=where)
        filepath = entry.get("filepath") or ""
        if not isinstance(filepath, str):
            raise ValueError(f"{where}: 'filepath' must be a string, got {filepath!r:.80}")
        split = _require(entry, "split", str, where=where)
        validate_split_names([split], where=where)
        sentences = _require(entry, "sentences", list, where=where)
        if not filename.strip():
            raise ValueError(f"{where}: empty 'filename'")
        image_path = posixpath.join(filepath, filename) if filepath else filename
        if image_path in seen_paths:
            raise ValueError(f"{where}: image path {image_path!r} already used by images[{seen_paths[image_path]}]")
        seen_paths[image_path] = row
        if not sentences:
            raise ValueError(f"{where} ({image_path!r}) has no sentences; give it at least one caption")
        texts, tokens, has_tokens = _karpathy_sentences(sentences, where=where, has_tokens=has_tokens)
        caption_texts.extend(texts)
        caption_tokens.extend(tokens)
        caption_image_index.extend([row] * len(texts))
        image_paths.append(image_path)
        image_splits.append(split)
    return _finish(image_paths=image_paths, image_splits=image_splits, caption_texts=caption_texts,
                   caption_tokens=caption_tokens if has_tokens else None,
                   caption_image_index=caption_image_index, source=path)


def load_tsv(path: str | Path) -> DatasetIndex:
    """Load a TSV with one caption per row: `image_path<TAB>caption[<TAB>split]`, UTF-8 (a BOM is dropped).

    An optional first line `image_path<TAB>caption[<TAB>split]` is a header. Rows of the same image
    are grouped into one image (first-seen order). Without a split column every image gets a split
    from hash_split (train 90% / val 5% / test 5%); with one, all rows of an image must agree.
    Blank lines are skipped; captions cannot contain tabs. Lines end at \n or \r\n only: a NEL (U+0085) or
    a line separator (U+2028) inside a caption is part of its text.
    """
    path = Path(path)
    _check_file(path, "dataset TSV")
    lines = _tsv_lines(path)
    rows = _TsvRows(path)
    num_columns: int | None = None
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        columns = line.split("\t")
        if num_columns is None and _is_tsv_header(columns):
            num_columns = len(columns)
            continue
        num_columns = num_columns or len(columns)
        rows.add(columns, line_number=line_number, num_columns=num_columns)
    if num_columns == 2 and rows.image_paths:
        _log_hash_split(path, rows.image_splits)
    return _finish(image_paths=rows.image_paths, image_splits=rows.image_splits, caption_texts=rows.caption_texts,
                   caption_tokens=None, caption_image_index=rows.caption_image_index, source=path)


def _tsv_lines(path: Path) -> list[str]:
    """The TSV's lines: UTF-8 without its byte-order mark, split at \n (a \r before it dropped) and nowhere else
    (str.splitlines would also split at NEL, U+2028 and other separators a caption may hold)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line} is not UTF-8 text ({err.reason} at byte {err.start}); save the TSV as "
                         "UTF-8") from err
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def _is_tsv_header(columns: list[str]) -> bool:
    """True for a header row: image_path, caption and optionally split (any case, spaces around ignored)."""
    names = tuple(column.strip().lower() for column in columns)
    return names in (TSV_HEADER_COLUMNS[:2], TSV_HEADER_COLUMNS)


class _TsvRows:
    """The images and captions of a TSV, row by row: one image per distinct path, its split checked per row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.row_of_path: dict[str, int] = {}
        self.split_line: list[int] = []  # line number that set each image's split, for error messages
        self.image_paths: list[str] = []
        self.image_splits: list[str] = []
        self.caption_texts: list[str] = []
        self.caption_image_index: list[int] = []

    def add(self, columns: list[str], *, line_number: int, num_columns: int) -> None:
        """Add one row (its tab-separated columns); ValueError naming the line when it does not fit."""
        where = f"{self.path}: line {line_number}"
        if len(columns) not in (2, 3):
            raise ValueError(f"{where}: expected 2 or 3 tab-separated columns (image_path<TAB>caption[<TAB>split]), "
                             f"found {len(columns)}; a caption must not contain a tab")
        if len(columns) != num_columns:
            raise ValueError(f"{where}: found {len(columns)} columns but earlier rows have {num_columns}; "
                             "every row needs the same columns (the split column for all rows or for none)")
        image_path, caption = columns[0].strip(), columns[1].strip()
        if not image_path or not caption:
            raise ValueError(f"{where}: empty {'image_path' if not image_path else 'caption'} column")
        split = columns[2].strip() if num_columns == 3 else None
        if image_path not in self.row_of_path:
            self._add_image(image_path, split if split is not None else hash_split(image_path), where=where,
                            line_number=line_number)
        row = self.row_of_path[image_path]
        if split is not None and split != self.image_splits[row]:
            raise ValueError(f"{where}: image {image_path!r} has split {split!r} but line {self.split_line[row]} "
                             f"gave it {self.image_splits[row]!r}; one image needs one split")
        self.caption_texts.append(caption)
        self.caption_image_index.append(row)

    def _add_image(self, image_path: str, split: str, *, where: str, line_number: int) -> None:
        validate_split_names([split], where=where)
        self.row_of_path[image_path] = len(self.image_paths)
        self.image_paths.append(image_path)
        self.image_splits.append(split)
        self.split_line.append(line_number)


def _log_hash_split(path: Path, image_splits: list[str]) -> None:
    """Say that splits came from the path hash, and warn when val or test is too small to compare runs on."""
    logger.info("%s has no split column: splits assigned by sha1 of the image path "
                "(train 90%%, val 5%%, test 5%%)", path)
    sizes = {split: image_splits.count(split) for split in ("val", "test")}
    if min(sizes.values()) < MIN_EVAL_IMAGES:
        logger.warning("%s: the hash split leaves %d val and %d test images (fewer than %d): recall on so few "
                       "images is noisy; add a split column (image_path<TAB>caption<TAB>split) to choose them",
                       path, sizes["val"], sizes["test"], MIN_EVAL_IMAGES)


def load_dataset(path: str | Path, fmt: str = "auto") -> DatasetIndex:
    """Load a dataset file; fmt "karpathy" | "tsv" | "auto" (.json -> karpathy, .tsv/.txt -> tsv)."""
    path = Path(path)
    if fmt not in DATASET_FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; valid formats: {', '.join(DATASET_FORMATS)}")
    if fmt == "auto":
        suffix = path.suffix.lower()
        if suffix == ".json":
            fmt = "karpathy"
        elif suffix in (".tsv", ".txt"):
            fmt = "tsv"
        else:
            raise ValueError(f"cannot tell the format of {str(path)!r} from its suffix {suffix!r}; "
                             "name it .json (Karpathy split) or .tsv, or pass --dataset-format karpathy or tsv")
    return load_karpathy_json(path) if fmt == "karpathy" else load_tsv(path)
