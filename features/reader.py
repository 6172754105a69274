"""Read-only, validated access to a feature store, with features as a numpy memmap."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from common.choices import CROP_COUNTS, FEATURE_DTYPES
from features.attrs import attr_to_python, read_attrs
from features.datasets import validate_split_names
from features.disk import in_use_error, is_lock_error
from features.rows import FeatureRows
from features.schema import (
    CAPTIONS_IMAGE_INDEX, CAPTIONS_SPLIT, CAPTIONS_TEXT, CAPTIONS_TOKENS,
    IMAGES_ERROR, IMAGES_PATH, IMAGES_SPLIT, IMAGES_STATUS, REGIONS_KIND, SCHEMA_VERSION, TEN_CROP_ORDER, Status,
    feature_dataset_name, stored_kinds,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreLayout:
    """Sizes of a store, checked against every dataset by validate_layout."""

    num_images: int  # N
    num_captions: int  # M
    feature_dim: int  # D
    crops: int  # 1 or 10; 0 in a region store
    dtype: str  # "float32" or "float16"
    regions: int = 0  # K vectors per image in a region store; 0 in a CNN store

    @property
    def feature_kinds(self) -> tuple[str, ...]:
        """The kinds this store holds: ("1c",), ("1c", "10c") or ("regions",)."""
        return stored_kinds(self.crops, self.regions)


def _require_dataset(h5file: h5py.File, name: str, path: Path, *, length: int | None = None) -> h5py.Dataset:
    if name not in h5file or not isinstance(h5file[name], h5py.Dataset):
        raise ValueError(f"{path}: required dataset {name!r} is missing; the file is not a complete feature "
                         "store, re-extract it (pass --overwrite)")
    dataset = h5file[name]
    if length is not None and (dataset.ndim != 1 or dataset.shape[0] != length):
        raise ValueError(f"{path}: dataset {name!r} has shape {dataset.shape}, expected ({length},); "
                         "the store is inconsistent, re-extract it (pass --overwrite)")
    return dataset


def validate_layout(h5file: h5py.File, path: Path) -> StoreLayout:
    """Check schema version, required datasets and that all shapes agree; return the sizes.

    Raises ValueError naming the bad value and saying how to fix it.
    """
    found = h5file.attrs.get("schema_version")
    if found is None or int(found) != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {attr_to_python(found)!r} found, this code supports "
                         f"{SCHEMA_VERSION}; re-extract the features with this version (pass --overwrite)")
    missing = [key for key in ("crops", "dtype", "feature_dim") if key not in h5file.attrs]
    if missing:
        raise ValueError(f"{path}: root attributes {missing} are missing; re-extract the store (pass --overwrite)")
    crops, dtype, feature_dim = (attr_to_python(h5file.attrs[key]) for key in ("crops", "dtype", "feature_dim"))
    regions = attr_to_python(h5file.attrs.get("regions", 0))  # stores written before region stores lack it
    valid_sizes = (crops == 0 and isinstance(regions, int) and regions >= 1) or (crops in CROP_COUNTS and regions == 0)
    if not valid_sizes or dtype not in FEATURE_DTYPES:
        raise ValueError(f"{path}: attrs crops={crops!r} regions={regions!r} dtype={dtype!r} are invalid (crops in "
                         f"{CROP_COUNTS} with regions 0, or crops 0 with regions >= 1; dtype in {FEATURE_DTYPES}); "
                         "re-extract the store (pass --overwrite)")
    num_images = _require_dataset(h5file, IMAGES_PATH, path).shape[0]
    for name in (IMAGES_SPLIT, IMAGES_STATUS, IMAGES_ERROR):
        _require_dataset(h5file, name, path, length=num_images)
    num_captions = _require_dataset(h5file, CAPTIONS_TEXT, path).shape[0]
    for name in (CAPTIONS_IMAGE_INDEX, CAPTIONS_SPLIT):
        _require_dataset(h5file, name, path, length=num_captions)
    if CAPTIONS_TOKENS in h5file:
        _require_dataset(h5file, CAPTIONS_TOKENS, path, length=num_captions)
    kinds = {"1c": (num_images, feature_dim), "10c": (num_images, len(TEN_CROP_ORDER), feature_dim),
             REGIONS_KIND: (num_images, regions, feature_dim)}
    for kind in stored_kinds(crops, regions):
        dataset = _require_dataset(h5file, feature_dataset_name(kind), path)
        if dataset.shape != kinds[kind] or dataset.dtype != np.dtype(dtype):
            raise ValueError(f"{path}: {feature_dataset_name(kind)!r} is {dataset.dtype} {dataset.shape}, attrs say "
                             f"{dtype} {kinds[kind]}; the store is inconsistent, re-extract it (pass --overwrite)")
    return StoreLayout(num_images=num_images, num_captions=num_captions, feature_dim=int(feature_dim),
                       crops=int(crops), dtype=dtype, regions=int(regions))


def missing_kind_fix(kind: str, *, regions: int) -> str:
    """What to do when a store (of `regions` K, 0 for a CNN store) lacks the feature kind `kind`."""
    if kind == REGIONS_KIND:
        return "region features come from `pipeline.py import-features` (e.g. SCAN/BUTD [N, K, D] arrays)"
    if regions:
        return "a region store holds no crop features: use its 'regions' (--feature-mode regions)"
    return "use '1c', or re-extract with --crops 10"


def _strings(dataset: h5py.Dataset) -> np.ndarray:
    return np.asarray(dataset.asstr()[()], dtype=object).astype(str)


def status_summary(image_status: np.ndarray) -> dict[str, int]:
    """Count rows per status: {"total", "done", "pending", "failed"}."""
    counts = np.bincount(image_status, minlength=len(Status))
    summary = {"total": int(image_status.shape[0])}
    summary.update({status.name.lower(): int(counts[status]) for status in Status})
    return summary


class FeatureStore:
    """A feature store opened read-only; tables are loaded into memory, features stay on disk.

    Rows that are not done (pending or failed) hold unspecified values in the feature arrays:
    select rows with image_indices / caption_indices, which return done rows only.
    """

    def __init__(self, path: str | Path) -> None:
        """Open and validate the store at `path` (schema version, datasets, shapes, caption index)."""
        self.path = Path(path)
        if not self.path.is_file():
            partial = self.path.with_name(self.path.name + ".partial")
            hint = (f" ({partial.name} exists: its creation was interrupted, rerun extract)" if partial.exists()
                    else "; run `pipeline.py extract` first or check the path")
            raise FileNotFoundError(f"no feature store at {str(self.path)!r}{hint}")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            if is_lock_error(err):
                raise in_use_error(self.path, "an extract or a merge is writing it",
                                   "it can be read once that process ends: wait for it or stop it") from err
            raise ValueError(f"{self.path}: cannot be opened as HDF5 ({err}); is this a feature store?") from err
        try:
            self._load()
        except BaseException:
            self._file.close()
            raise
        self._features: dict[str, np.ndarray | h5py.Dataset] = {}
        self._rows: dict[str, FeatureRows] = {}

    def _load(self) -> None:
        layout = validate_layout(self._file, self.path)
        self.attrs: dict = read_attrs(self._file)
        self.num_images, self.num_captions = layout.num_images, layout.num_captions
        self.feature_dim, self.crops, self.dtype = layout.feature_dim, layout.crops, layout.dtype
        self.regions, self.feature_kinds = layout.regions, layout.feature_kinds
        self.image_paths = _strings(self._file[IMAGES_PATH])
        self.image_splits = _strings(self._file[IMAGES_SPLIT])
        self.image_status = self._file[IMAGES_STATUS][()].astype(np.uint8)
        self.image_errors = _strings(self._file[IMAGES_ERROR])
        self.caption_texts: list[str] = _strings(self._file[CAPTIONS_TEXT]).tolist()
        self.caption_tokens: list[list[str]] | None = None
        if CAPTIONS_TOKENS in self._file:
            self.caption_tokens = [text.split(" ") if text else [] for text in
                                   _strings(self._file[CAPTIONS_TOKENS]).tolist()]
        self.caption_image_index = self._file[CAPTIONS_IMAGE_INDEX][()].astype(np.int64)
        self.caption_splits = _strings(self._file[CAPTIONS_SPLIT])
        if self.num_captions and (self.caption_image_index.min() < 0
                                  or self.caption_image_index.max() >= self.num_images):
            raise ValueError(f"{self.path}: captions/image_index points outside [0, {self.num_images}); "
                             "the store is inconsistent, re-extract it (pass --overwrite)")
        unknown = set(np.unique(self.image_status).tolist()) - {int(status) for status in Status}
        if unknown:
            raise ValueError(f"{self.path}: images/status holds unknown values {sorted(unknown)}; "
                             "re-extract the store (pass --overwrite)")

    def features(self, kind: str) -> np.ndarray | h5py.Dataset:
        """Return "1c" [N, D], "10c" [N, 10, D] or "regions" [N, K, D] features without reading them into RAM.

        A np.memmap (mode "r") when the dataset is contiguous, as this package writes it. A chunked or
        compressed store made elsewhere gives the h5py Dataset instead (logged as a warning): it
        supports the same slicing, but fancy indexing needs sorted, unique indices.
        """
        if kind in self._features:
            return self._features[kind]
        name = feature_dataset_name(kind)
        if kind not in self.feature_kinds:
            raise ValueError(f"{self.path} has no {kind!r} features: it holds {', '.join(self.feature_kinds)} "
                             f"({self.describe()}); {missing_kind_fix(kind, regions=self.regions)}")
        dataset = self._file[name]
        offset = dataset.id.get_offset()
        if offset is None or dataset.chunks is not None:
            reason = ("it is chunked (compression or maxshape, e.g. written by another tool)" if dataset.chunks
                      else "its storage was never allocated (no row was written)")
            logger.warning("%s: %r cannot be memory-mapped because %s; falling back to h5py reads, which are "
                           "slower and need sorted indices", self.path, name, reason)
            self._features[kind] = dataset
        else:
            self._features[kind] = np.memmap(self.path, dtype=dataset.dtype, mode="r", offset=offset,
                                             shape=dataset.shape)
        return self._features[kind]

    def feature_rows(self, kind: str) -> "FeatureRows | h5py.Dataset":
        """Like features(kind), but for batch reads: `reader[sorted_unique_rows]` -> a fresh array.

        Contiguous stores give a FeatureRows (preadv, memory bounded by the batch: what training and
        encoding use); chunked stores give the h5py Dataset, as features() does.
        """
        if kind in self._rows:  # one reader (and file descriptor) per kind, reused by every batch
            return self._rows[kind]
        features = self.features(kind)
        if not isinstance(features, np.memmap):
            return features
        self._rows[kind] = FeatureRows(self.path, offset=features.offset, shape=features.shape,
                                       dtype=features.dtype)
        return self._rows[kind]

    def describe(self) -> str:
        """What the store holds, in words: "10 crops" / "1 crop" / "36 regions" per image."""
        if self.regions:
            return f"a region store, {self.regions} regions per image"
        return f"a CNN store, {self.crops} crop{'s' if self.crops > 1 else ''} per image"

    def image_indices(self, splits: Sequence[str] | str) -> np.ndarray:
        """Sorted int64 rows of images in `splits` whose features are done (failed/pending excluded)."""
        splits = self._check_splits(splits)
        mask = np.isin(self.image_splits, splits) & (self.image_status == Status.DONE)
        return np.flatnonzero(mask).astype(np.int64)

    def caption_indices(self, splits: Sequence[str] | str) -> np.ndarray:
        """Sorted int64 caption rows in `splits` whose image is done (captions of other images excluded)."""
        splits = self._check_splits(splits)
        image_done = self.image_status[self.caption_image_index] == Status.DONE
        return np.flatnonzero(np.isin(self.caption_splits, splits) & image_done).astype(np.int64)

    def require_complete(self, splits: Sequence[str] | str) -> None:
        """Raise ValueError if any image of `splits` is still pending (failed images are allowed)."""
        splits = self._check_splits(splits)
        in_splits = np.isin(self.image_splits, splits)
        num_pending = int((in_splits & (self.image_status == Status.PENDING)).sum())
        if num_pending:
            raise ValueError(f"{self.path}: {num_pending} of {int(in_splits.sum())} images in splits "
                             f"{list(splits)} are still pending; rerun the same extract command to finish "
                             "(it resumes where it stopped)")

    def summary(self) -> dict[str, int]:
        """Count image rows per status: {"total", "done", "pending", "failed"}."""
        return status_summary(self.image_status)

    def _check_splits(self, splits: Sequence[str] | str) -> list[str]:
        splits = [splits] if isinstance(splits, str) else list(splits)
        if not splits:
            raise ValueError("no splits given; pass at least one of train, val, test, restval")
        validate_split_names(splits, where=str(self.path))
        return splits

    def close(self) -> None:
        """Close the HDF5 file (memmaps already handed out stay readable)."""
        self._features.clear()
        for rows in self._rows.values():
            rows.close()
        self._rows.clear()
        self._file.close()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
