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

FEATURE_KINDS = ("1c", "10c")  # "1c": [N, D] center crop; "10c": [N, 10, D] all ten crops

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

# Every root attribute a store carries (CONFIG_ATTRS included). The writer fills schema_version,
# crops, dtype, feature_dim itself and, when absent, created, h5py_version and shard.
ROOT_ATTRS = CONFIG_ATTRS + (
    "schema_version", "feature_dim", "torch_version", "torchvision_version", "h5py_version",
    "created", "command", "image_root", "dataset_path", "shard",
)


def stored_kinds(crops: int) -> tuple[str, ...]:
    """The feature kinds a store of `crops` crops holds: ("1c",) or ("1c", "10c")."""
    return FEATURE_KINDS if crops == len(TEN_CROP_ORDER) else ("1c",)


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
