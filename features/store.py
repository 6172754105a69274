"""FeatureStoreWriter: create, resume and fill a feature store row by row."""

import datetime
import logging
import os
from pathlib import Path

import h5py
import numpy as np

from common.choices import CROP_COUNTS, FEATURE_DTYPES
from features.datasets import DatasetIndex, validate_split_names
from features.disk import (
    HOLDERS, check_free_space, held_by_another_process, in_use_error, is_lock_error, locked_partial,
    reserve_space, unallocated_bytes,
)
from features.attrs import STRING_DTYPE, attr_to_hdf5, normalize_attr, read_attrs
from features.reader import status_summary, validate_layout
from features.rows import contiguous_runs, feature_ranges
from features.schema import (
    CAPTIONS_IMAGE_INDEX, CAPTIONS_SPLIT, CAPTIONS_TEXT, CAPTIONS_TOKENS, CONFIG_ATTRS, PROVENANCE_ATTRS,
    FEATURES_GROUP, IMAGES_ERROR, IMAGES_PATH, IMAGES_SPLIT, IMAGES_STATUS, REGIONS_KIND, SCHEMA_VERSION,
    TEN_CROP_ORDER, Status, feature_dataset_name, stored_kinds,
)

logger = logging.getLogger(__name__)

# Attributes the writer derives itself; callers must give the rest of CONFIG_ATTRS.
DERIVED_ATTRS = ("schema_version", "crops", "dtype", "feature_dim", "regions")
FIX_HINT = "pass --overwrite to replace it, or use another --out"


def store_bytes(dataset: DatasetIndex, *, feature_dim: int, crops: int, dtype: str, rows: int | None = None,
                regions: int = 0) -> int:
    """About the disk a new store takes: the features of `rows` images (default all) plus the tables (strings
    at their UTF-8 length)."""
    rows = dataset.num_images if rows is None else rows
    rows = rows * (regions or 1 + (crops if crops == len(TEN_CROP_ORDER) else 0))
    features = rows * feature_dim * np.dtype(dtype).itemsize
    text = sum(len(item.encode("utf-8")) + 16 for item in dataset.image_paths + dataset.caption_texts)
    return features + text + 32 * (dataset.num_images + dataset.num_captions) + (1 << 20)  # 1 MB of metadata


def _root_attrs(attrs: dict, *, feature_dim: int, crops: int, dtype: str, regions: int) -> dict:
    derived = {"schema_version": SCHEMA_VERSION, "crops": crops, "dtype": dtype, "feature_dim": feature_dim,
               "regions": regions}
    for key, value in derived.items():
        if key in attrs and normalize_attr(key, attrs[key]) != value:
            raise ValueError(f"attrs[{key!r}] = {attrs[key]!r} contradicts {key}={value!r}; drop it from attrs")
    missing = [key for key in CONFIG_ATTRS if key not in attrs and key not in derived]
    if missing:
        raise ValueError(f"attrs lack the config attributes {missing}; every store must say how it was made")
    root = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "h5py_version": h5py.__version__, "shard": ""}
    root.update(attrs)
    root.update(derived)
    return {key: attr_to_hdf5(key, value) for key, value in root.items()}


def _check_sizes(*, crops: int, regions: int, dtype: str, feature_dim: int) -> None:
    if not isinstance(regions, (int, np.integer)) or regions < 0:
        raise ValueError(f"regions={regions!r} must be an integer >= 1 (a region store) or 0 (a CNN store)")
    if regions and crops != 0:
        raise ValueError(f"crops={crops!r} with regions={regions}: a region store holds no crops; pass crops=0")
    if not regions and crops not in CROP_COUNTS:
        raise ValueError(f"crops={crops!r} is not supported; use one of {CROP_COUNTS}, or crops=0 with regions=K")
    if dtype not in FEATURE_DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {FEATURE_DTYPES}")
    if not isinstance(feature_dim, (int, np.integer)) or feature_dim <= 0:
        raise ValueError(f"feature_dim={feature_dim!r} must be a positive integer")


def _check_dataset_index(dataset: DatasetIndex) -> None:
    num_images, num_captions = len(dataset.image_paths), len(dataset.caption_texts)
    if num_images == 0 or len(dataset.image_splits) != num_images:
        raise ValueError(f"DatasetIndex has {num_images} image paths and {len(dataset.image_splits)} splits; "
                         "need the same, non-zero number")
    validate_split_names(dataset.image_splits, where="DatasetIndex.image_splits")
    index = np.asarray(dataset.caption_image_index)
    if index.shape != (num_captions,) or (num_captions and (index.min() < 0 or index.max() >= num_images)):
        raise ValueError(f"DatasetIndex.caption_image_index must be [{num_captions}] rows in [0, {num_images})")
    if dataset.caption_tokens is not None:
        if len(dataset.caption_tokens) != num_captions:
            raise ValueError(f"DatasetIndex has {len(dataset.caption_tokens)} token lists for {num_captions} captions")
        for number, tokens in enumerate(dataset.caption_tokens):
            if any(" " in token for token in tokens):
                raise ValueError(f"caption {number}: tokens {tokens!r:.80} contain a space; "
                                 "tokens are stored space-joined, split them first")


def _create_contiguous(group: h5py.Group, name: str, shape: tuple[int, ...], dtype: str) -> None:
    """Create a contiguous, uncompressed dataset whose storage is allocated now (so get_offset works)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.CONTIGUOUS)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # rows are pending until written; no need for a fill pass
    dcpl.set_obj_track_times(False)
    space = h5py.h5s.create_simple(shape)
    h5py.h5d.create(group.id, name.encode("utf-8"), h5py.h5t.py_create(np.dtype(dtype)), space, dcpl=dcpl)


def _check_replaceable(path: Path, *, replace: bool) -> None:
    """A new store may take `path` only when nothing is there, or `replace` and no process holds it open."""
    if not path.exists():
        return
    if not replace:
        raise FileExistsError(f"{path} was created by another process meanwhile; rerun the same command to "
                              "resume it, or pass --overwrite to replace it")
    if held_by_another_process(path):
        raise in_use_error(path, HOLDERS, "--overwrite does not replace a store in use: wait for that process "
                           "to finish or stop it, or use another --out")


def _write_tables(h5file: h5py.File, dataset: DatasetIndex) -> None:
    num_images = len(dataset.image_paths)
    h5file.create_dataset(IMAGES_PATH, data=np.array(dataset.image_paths, dtype=object), dtype=STRING_DTYPE)
    h5file.create_dataset(IMAGES_SPLIT, data=np.array(dataset.image_splits, dtype=object), dtype=STRING_DTYPE)
    h5file.create_dataset(IMAGES_STATUS, data=np.full(num_images, Status.PENDING, dtype=np.uint8))
    h5file.create_dataset(IMAGES_ERROR, data=np.full(num_images, "", dtype=object), dtype=STRING_DTYPE)
    h5file.create_dataset(CAPTIONS_TEXT, data=np.array(dataset.caption_texts, dtype=object), dtype=STRING_DTYPE)
    if dataset.caption_tokens is not None:
        joined = np.array([" ".join(tokens) for tokens in dataset.caption_tokens], dtype=object)
        h5file.create_dataset(CAPTIONS_TOKENS, data=joined, dtype=STRING_DTYPE)
    caption_image_index = np.asarray(dataset.caption_image_index, dtype=np.int64)
    h5file.create_dataset(CAPTIONS_IMAGE_INDEX, data=caption_image_index)
    caption_splits = np.array(dataset.image_splits, dtype=object)[caption_image_index]
    h5file.create_dataset(CAPTIONS_SPLIT, data=caption_splits, dtype=STRING_DTYPE)


class FeatureStoreWriter:
    """Writes features by image row into a store; statuses say which rows are done.

    Build with `create` (new store) or `open_existing` (resume). Every write is flushed, so a crash
    or Ctrl-C leaves a valid store whose unfinished rows are still pending.
    """

    def __init__(self, h5file: h5py.File, path: Path) -> None:
        """Wrap an open, validated store; use create() or open_existing() instead of calling this."""
        self._file = h5file
        self.path = path
        layout = validate_layout(h5file, path)
        self.num_images, self.feature_dim, self.crops, self.dtype = (
            layout.num_images, layout.feature_dim, layout.crops, layout.dtype)
        self.regions, self.feature_kinds = layout.regions, layout.feature_kinds
        self.attrs: dict = read_attrs(h5file)
        self._status = h5file[IMAGES_STATUS][()].astype(np.uint8)

    @classmethod
    def create(cls, path: str | Path, dataset: DatasetIndex, *, attrs: dict, feature_dim: int, crops: int,
               dtype: str, replace: bool = True, rows: np.ndarray | None = None,
               regions: int = 0) -> "FeatureStoreWriter":
        """Create a store with every row pending, replacing any file at `path` (unless `replace` is False).

        The file is built at `path + ".partial"` under an exclusive lock and renamed only once its tables and
        attributes are written, so an interrupted creation never leaves a file that looks like a valid store,
        and a second creator gets StoreInUseError without touching the first one's file. A store another
        process holds open is never replaced (StoreInUseError). The disk space of the whole store is checked
        first and then allocated (StoreSpaceError when short): of every row, or only of `rows` (a shard's
        store, whose other rows stay unwritten holes on disk). `attrs` must hold every CONFIG_ATTRS key except
        crops and dtype; see schema.ROOT_ATTRS. A CNN store has crops 1 or 10 (features 1c, and 10c with 10);
        a region store has crops=0 and regions=K >= 1 (features regions [N, K, D] only).
        """
        path = Path(path)
        _check_sizes(crops=crops, regions=regions, dtype=dtype, feature_dim=feature_dim)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"output folder {str(path.parent)!r} does not exist; create it first")
        root_attrs = _root_attrs(attrs, feature_dim=int(feature_dim), crops=crops, dtype=dtype, regions=int(regions))
        _check_dataset_index(dataset)
        _check_replaceable(path, replace=replace)
        check_free_space(path, store_bytes(dataset, feature_dim=int(feature_dim), crops=crops, dtype=dtype,
                                           rows=None if rows is None else len(rows), regions=int(regions)),
                         what="the store")
        partial = path.with_name(path.name + ".partial")
        with locked_partial(partial) as descriptor:
            with h5py.File(partial, "w", locking=False) as h5file:  # locked_partial's lock stands in for HDF5's
                _write_tables(h5file, dataset)
                group = h5file.create_group(FEATURES_GROUP)
                num_images = len(dataset.image_paths)
                shapes = {"1c": (num_images, feature_dim), "10c": (num_images, crops, feature_dim),
                          REGIONS_KIND: (num_images, regions, feature_dim)}
                for kind in stored_kinds(crops, regions):
                    _create_contiguous(group, kind, shapes[kind], dtype)
                h5file.attrs.update(root_attrs)
                ranges = None if rows is None else feature_ranges(h5file, rows)
            reserve_space(descriptor, partial, ranges)
            _check_replaceable(path, replace=replace)  # again: another process may have opened it meanwhile
            if path.exists():
                logger.warning("replacing the existing file %s", path)
            os.replace(partial, path)
        logger.info("created %s: %d images, %d captions, crops=%d, regions=%d, dim=%d, %s", path,
                    len(dataset.image_paths), len(dataset.caption_texts), crops, regions, feature_dim, dtype)
        return cls(h5py.File(path, "r+"), path)

    @classmethod
    def open_existing(cls, path: str | Path, *, expected_attrs: dict,
                      dataset: DatasetIndex | None = None) -> "FeatureStoreWriter":
        """Open a store to resume it; ValueError if its config (or, when given, its dataset) differs.

        `expected_attrs` must hold every CONFIG_ATTRS key; each differing one is listed in the error.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no feature store at {str(path)!r} to resume; check --out")
        missing = [key for key in CONFIG_ATTRS if key not in expected_attrs]
        if missing:
            raise ValueError(f"expected_attrs lacks the config attributes {missing}; pass all of {CONFIG_ATTRS}")
        try:
            h5file = h5py.File(path, "r+")
        except OSError as err:
            if is_lock_error(err):
                raise in_use_error(path, HOLDERS, "wait for that process to finish or stop it, or use another "
                                   "--out") from err
            raise ValueError(f"{path} cannot be opened as HDF5 ({err}); {FIX_HINT}") from err
        try:
            writer = cls(h5file, path)
            differences = [f"{key}: stored {writer.attrs.get(key)!r} vs requested "
                           f"{normalize_attr(key, expected_attrs[key])!r}" for key in CONFIG_ATTRS
                           if writer.attrs.get(key) != normalize_attr(key, expected_attrs[key])]
            if differences:
                raise ValueError(f"{path} was extracted with another config ({'; '.join(differences)}); {FIX_HINT}")
            if dataset is not None:
                writer._check_same_dataset(dataset)
        except BaseException:
            h5file.close()
            raise
        logger.info("resuming %s: %s", path, writer.summary())
        return writer

    def update_provenance(self, values: dict) -> None:
        """Record new PROVENANCE_ATTRS values (where the inputs are now); changed ones are logged."""
        unknown = sorted(set(values) - set(PROVENANCE_ATTRS))
        if unknown:
            raise ValueError(f"only {PROVENANCE_ATTRS} may change on a resume, not {unknown}")
        for key, value in values.items():
            stored, new = self.attrs.get(key), normalize_attr(key, value)
            if stored != new:
                logger.warning("%s: %s was %r, now %r (recorded; rows done before were read under the old one)",
                               self.path, key, stored, new)
                self._file.attrs[key] = attr_to_hdf5(key, value)
                self.attrs[key] = new
        self.flush()

    def reserve_space(self, rows: np.ndarray | None = None) -> None:
        """Check and allocate the disk space the rest of the rows need (StoreSpaceError when short); with `rows`,
        only theirs (a shard's store: its other rows stay holes)."""
        if rows is None:
            check_free_space(self.path, unallocated_bytes(self.path), what="the rest of the store")
        descriptor = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        try:
            reserve_space(descriptor, self.path, None if rows is None else feature_ranges(self._file, rows))
        finally:
            os.close(descriptor)

    def _check_same_dataset(self, dataset: DatasetIndex) -> None:
        tables = {
            IMAGES_PATH: list(dataset.image_paths), IMAGES_SPLIT: list(dataset.image_splits),
            CAPTIONS_TEXT: list(dataset.caption_texts),
            CAPTIONS_IMAGE_INDEX: np.asarray(dataset.caption_image_index, dtype=np.int64).tolist(),
        }
        for name, requested in tables.items():
            stored_dataset = self._file[name]
            stored = (stored_dataset.asstr()[()] if stored_dataset.dtype.kind == "O" else stored_dataset[()]).tolist()
            if stored != requested:
                shorter = min(len(stored), len(requested))  # the first differing row when one is a prefix
                row = next((i for i, (a, b) in enumerate(zip(stored, requested)) if a != b), shorter)
                raise ValueError(f"{self.path} was made from another dataset: {name} differs at row {row} "
                                 f"(stored {len(stored)} rows, requested {len(requested)}); {FIX_HINT}")

    def pending_indices(self, retry_failed: bool = False) -> np.ndarray:
        """Sorted int64 rows still to extract: pending ones, plus failed ones when retry_failed."""
        todo = self._status == Status.PENDING
        if retry_failed:
            todo |= self._status == Status.FAILED
        return np.flatnonzero(todo).astype(np.int64)

    def summary(self) -> dict[str, int]:
        """Count image rows per status: {"total", "done", "pending", "failed"}."""
        return status_summary(self._status)

    def status(self) -> np.ndarray:
        """uint8 [N] status of every row (a copy; Status values)."""
        return self._status.copy()

    def failure(self, row: int) -> str:
        """Why `row` failed, as stored in images/error ("" when it did not fail)."""
        return self._file[IMAGES_ERROR].asstr()[int(row)]

    def _sorted_rows(self, indices: np.ndarray, num_values: int, what: str) -> tuple[np.ndarray, np.ndarray]:
        """Validate row indices; return (sorted rows, the order that sorts them)."""
        rows = np.asarray(indices)
        if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
            raise ValueError(f"indices must be a 1-D integer array, got {rows.dtype} {rows.shape}")
        if rows.shape[0] != num_values:
            raise ValueError(f"{len(rows)} indices but {num_values} {what}; give one per index")
        rows = rows.astype(np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_images):
            bad = rows[(rows < 0) | (rows >= self.num_images)][0]
            raise ValueError(f"row index {bad} is outside [0, {self.num_images}) of {self.path}")
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        duplicated = rows[1:][np.diff(rows) == 0]
        if duplicated.size:
            raise ValueError(f"row index {duplicated[0]} is given more than once; each row must appear once")
        return rows, order

    def _check_features(self, feats: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
        feats = np.asarray(feats)
        if feats.shape != shape:
            raise ValueError(f"{name} has shape {feats.shape}, expected {shape} (rows, [crops,] feature_dim)")
        with np.errstate(over="ignore"):  # an overflow to inf is reported just below, naming the fix
            feats = feats.astype(self.dtype, copy=False)
        if not np.isfinite(feats).all():
            raise ValueError(f"{name} holds NaN or inf after casting to {self.dtype}; "
                             "check the model (float16 overflows above 65504)")
        return feats

    def write_rows(self, indices: np.ndarray, feats_1c: np.ndarray | None, feats_10c: np.ndarray | None, *,
                   regions: np.ndarray | None = None) -> None:
        """Write features of `indices` ([n] rows, any order) and mark them done.

        A CNN store takes feats_1c [n, D] and, with crops=10, feats_10c [n, 10, D] (None otherwise); a region
        store takes only `regions` [n, K, D] (feats_1c and feats_10c None). Features are written and flushed
        before the statuses, so a crash in between leaves those rows pending, never done with garbage.
        """
        given = {"1c": feats_1c, "10c": feats_10c, REGIONS_KIND: regions}
        names = {"1c": "feats_1c", "10c": "feats_10c", REGIONS_KIND: "regions"}
        shapes = {"1c": (self.feature_dim,), "10c": (self.crops, self.feature_dim),
                  REGIONS_KIND: (self.regions, self.feature_dim)}
        for kind, values in given.items():
            if (values is None) == (kind in self.feature_kinds):
                fix = f"{names[kind]}=None" if values is not None else f"{names[kind]} of shape {['n', *shapes[kind]]}"
                raise ValueError(f"{self.path} holds {', '.join(self.feature_kinds)} features: pass {fix}")
        rows, order = self._sorted_rows(indices, len(given[self.feature_kinds[0]]), "feature rows")
        arrays = {kind: self._check_features(given[kind], names[kind], (len(rows),) + shapes[kind])[order]
                  for kind in self.feature_kinds}
        runs = contiguous_runs(rows)
        for kind, values in arrays.items():
            dataset = self._file[feature_dataset_name(kind)]
            for begin, end in runs:
                dataset[rows[begin]:rows[end - 1] + 1] = values[begin:end]
        self.flush()
        was_failed = self._status[rows] == Status.FAILED
        self._set_status(rows, Status.DONE, errors=None)
        if was_failed.any():
            retried = rows[was_failed]
            self._write_errors(retried, [""] * len(retried))
        self.flush()

    def mark_failed(self, indices: np.ndarray, errors: list[str]) -> None:
        """Mark rows failed with a one-line reason each (features untouched), then flush."""
        rows, order = self._sorted_rows(indices, len(errors), "errors")
        sorted_errors = [str(errors[position]) for position in order.tolist()]
        self._set_status(rows, Status.FAILED, errors=sorted_errors)
        self.flush()

    def _set_status(self, rows: np.ndarray, status: Status, *, errors: list[str] | None) -> None:
        dataset = self._file[IMAGES_STATUS]
        for begin, end in contiguous_runs(rows):
            dataset[rows[begin]:rows[end - 1] + 1] = np.full(end - begin, status, dtype=np.uint8)
        if errors is not None:
            self._write_errors(rows, errors)
        self._status[rows] = status

    def _write_errors(self, rows: np.ndarray, errors: list[str]) -> None:
        dataset = self._file[IMAGES_ERROR]
        for begin, end in contiguous_runs(rows):
            dataset[rows[begin]:rows[end - 1] + 1] = np.array(errors[begin:end], dtype=object)

    def flush(self) -> None:
        """Flush HDF5 buffers to the operating system."""
        self._file.flush()

    def close(self) -> None:
        """Flush and close the file; safe to call twice. A flush that fails (a full disk) is logged, not
        raised, so the close still happens: rows whose writes failed stay pending, never done."""
        if self._file.id.valid:
            try:
                self._file.flush()
            except OSError as err:
                logger.warning("%s: the last flush failed (%s); unfinished rows stay pending", self.path, err)
            self._file.close()

    def __enter__(self) -> "FeatureStoreWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
