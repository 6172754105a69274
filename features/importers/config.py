"""ImportConfig: the options of `pipeline.py import-features`."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.choices import FEATURE_DTYPES
from common.config import StageConfig
from features.datasets import DATASET_FORMATS
from features.importers.layouts import LAYOUTS, PRECOMP_SPLITS, SET_KINDS

BLOCK_MB = 64.0  # features read, checked and written at a time: the import's memory, whatever the file's size


@dataclass
class ImportConfig(StageConfig):
    """Options of `run_import`: released features (a precomp folder, or a dataset file plus a matrix) into a store."""

    # a VSE++ / SCAN precomp folder, or a .npy / .npz matrix (then --dataset names its images)
    source: str = field(default="", metadata={
        "help": "a precomp folder ({split}_ims.npy + {split}_caps.txt, SCAN also {split}_ids.txt), e.g. "
                "data/coco_precomp; or a .npy / .npz matrix with one row per image of --dataset", "required": True})
    out: str = field(default="", metadata={"help": "output HDF5 feature store path", "required": True})
    # the images and captions a matrix's rows follow; never given with a folder (its caption files say it)
    dataset: str = field(default="", metadata={
        "help": "with a matrix --source: the Karpathy split JSON or TSV whose images its rows follow, in order"})
    dataset_format: str = field(default="auto", metadata={
        "help": "format of --dataset; auto = by suffix (.json Karpathy, .tsv TSV)", "choices": DATASET_FORMATS})
    # recorded so report and serve can show the images of a dataset import
    image_root: str = field(default="", metadata={
        "help": "with --dataset: the folder its image paths are relative to, if you have the images (report and "
                "serve show them); imported features never need it"})
    layout: str = field(default="auto", metadata={
        "help": "auto = scan for a folder with {split}_ids.txt, vsepp for another folder, dataset for a matrix",
        "choices": LAYOUTS})
    # precomp split files to import; dev becomes val, test or testall becomes test
    splits: tuple[str, ...] = field(default=("train", "dev", "test"), metadata={
        "help": "the folder's splits to import: dev becomes val; test or testall (COCO's 5K test, whose first 1K "
                "is test) becomes test", "choices": tuple(PRECOMP_SPLITS)})
    # only for arrays with one row per caption: how many consecutive rows repeat one image
    captions_per_image: int = field(default=5, metadata={
        "help": "for an array with one row per caption (each image repeated for its captions, as in the 10crop "
                "release): the rows per image, checked to be identical (the reference evaluates with 5)"})
    set_kind: str = field(default="auto", metadata={
        "help": "how [N, K, D] arrays are stored: auto = regions in a SCAN folder or when K != 10, else ten crops "
                "(torchvision TenCrop order, center crop 4); crops; regions", "choices": SET_KINDS})
    array_key: str = field(default="", metadata={"help": "the array of an .npz --source holding several"})
    dtype: str = field(default="float32", metadata={
        "help": "feature storage dtype (float16 halves the file; a value beyond float16's range is an error)",
        "choices": FEATURE_DTYPES})
    block_mb: float = field(default=BLOCK_MB, metadata={
        "help": "MB of source rows read, checked and written at a time (bounds the memory)"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace an existing --out (also one imported from other files); default: resume it"})
    # testing hook: stop (as if interrupted) after this many blocks; None = run to the end
    max_blocks: int | None = field(default=None, metadata={
        "help": "stop after this many blocks as if interrupted (the store stays resumable); for tests"})

    def validate(self) -> None:
        """Raise ValueError naming the first option outside its allowed values."""
        super().validate()
        self.check_at_least(1, "captions_per_image")
        self.check_at_least(0, "max_blocks")
        if not self.block_mb > 0:
            raise ValueError(f"--block-mb must be > 0, got {self.block_mb}")
        if self.image_root and not self.dataset:
            raise ValueError("--image-root goes with --dataset (a folder import has no image paths); drop it")
