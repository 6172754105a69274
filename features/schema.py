"""Names and constants of the HDF5 feature store layout (schema version 1)."""

from enum import IntEnum

SCHEMA_VERSION = 2  # bump when the layout below changes incompatibly

# Dataset names inside the HDF5 file.
IMAGES_PATH = "images/path"  # str [N], relative to the image root
IMAGES_SPLIT = "images/split"  # str [N], one of datasets.SPLITS
IMAGES_STATUS = "images/status"  # uint8 [N], a Status value
IMAGES_ERROR = "images/error"  # str [N], why a row failed ("" otherwise)
CAPTIONS_TEXT = "captions/text"  # str [M]
CAPTIONS_TOKENS = "captions/tokens"  # str [M], space-joined; only when the dataset gave tokens
CAPTIONS_IMAGE_INDEX = "captions/image_index"  # int64 [M], caption -> image row
CAPTIONS_SPLIT = "captions/split"  # str [M], the split of the caption's image
FEATURES_GROUP = "features"

# "1c": [N, D] center crop; "10c": [N, 10, D] all ten crops; "regions": [N, K, D], K vectors per image (e.g.
# bottom-up-attention regions), K fixed per store. A CNN store holds 1c (and 10c); a region store only regions.
FEATURE_KINDS = ("1c", "10c", "regions")
REGIONS_KIND = "regions"

# torchvision TenCrop order; "1c" equals "10c"[:, TEN_CROP_ORDER.index("center")].
TEN_CROP_ORDER = (
    "top_left", "top_right", "bottom_left", "bottom_right", "center",
    "top_left_flip", "top_right_flip", "bottom_left_flip", "bottom_right_flip", "center_flip",
)
CENTER_CROP_INDEX = TEN_CROP_ORDER.index("center")

# Root attributes that define "the same extraction config": resuming or merging stores whose
# values differ is refused, because rows made with different configs must never be mixed.
CONFIG_ATTRS = (
    "backbone", "layer", "weights_name", "weights_sha256", "weights_seed",
    "resize", "crop", "mean", "std", "crops", "dtype", "decode",
)

# Root attributes that say which CNN made a store's features: a head trained on one store fits another store's
# features only if these agree (train --resume, finetune and eval check them against the checkpoint).
CNN_ATTRS = ("backbone", "layer", "weights_name", "weights_sha256", "weights_seed", "resize", "crop", "mean", "std")

# Root attributes that say where a store's inputs are, not how its features were made: a resume may change
# them (the images moved, or the first run named the wrong --image-root), and the store records the new ones.
PROVENANCE_ATTRS = ("image_root", "dataset_path")

# Where a store's features come from: "extract" (extract/'s CNN over the images) or "import" (released features,
# `pipeline.py import-features`, made by no CNN this project can rebuild). A store without the attribute was
# extracted (attrs.store_origin). An imported store records its source files (absolute paths), their sha256 in the
# same order and the layout detected, in words; resuming an import requires the same values.
ORIGIN_EXTRACT, ORIGIN_IMPORT = "extract", "import"
IMPORT_ATTRS = ("origin", "source_files", "source_sha256", "source_layout")

# Every root attribute a store carries (CONFIG_ATTRS included). The writer fills schema_version,
# crops, dtype, feature_dim itself and, when absent, created, h5py_version and shard.
ROOT_ATTRS = CONFIG_ATTRS + (
    "schema_version", "feature_dim", "torch_version", "torchvision_version", "h5py_version",
    "created", "command", "image_root", "dataset_path", "shard", "regions",
    "amp",  # the CNN's autocast (extract --amp); a resume keeps it (extract/run.py), absent = "none"
) + IMPORT_ATTRS


def stored_kinds(crops: int, regions: int = 0) -> tuple[str, ...]:
    """The feature kinds a store holds: ("regions",) with `regions` K >= 1, else ("1c",) or ("1c", "10c")."""
    if regions:
        return (REGIONS_KIND,)
    return ("1c", "10c") if crops == len(TEN_CROP_ORDER) else ("1c",)


def feature_dataset_name(kind: str) -> str:
    """Return the HDF5 dataset name of a feature kind, e.g. "features/10c"."""
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; valid kinds: {', '.join(FEATURE_KINDS)}")
    return f"{FEATURES_GROUP}/{kind}"


class Status(IntEnum):
    """Extraction state of one image row, stored in images/status."""

    PENDING = 0  # not extracted yet (also the state of rows whose write was interrupted)
    DONE = 1  # features written and flushed
    FAILED = 2  # image could not be decoded; images/error says why
