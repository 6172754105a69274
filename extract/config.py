"""ExtractConfig: every option of the extract stage, with help text that pipeline.py turns into Click options."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from common.choices import AMP_MODES, CROP_COUNTS, DECODE_DEVICES, FEATURE_DTYPES
from common.config import StageConfig
from common.fields import device_field
from extract.backbones import BACKBONES
from extract.loader import DEFAULT_IMAGE_TIMEOUT_S
from features.datasets import DATASET_FORMATS


@dataclass
class ExtractConfig(StageConfig):
    """Options of ``run_extract``; saved as JSON beside the store (``<out>.extract.json``). Each field's help
    says what it means (it is also the --help of its option)."""

    dataset: str = field(default="", metadata={"help": "Karpathy split JSON (dataset_coco.json, ...) or TSV "
                                                       "image_path<TAB>caption file", "required": True})
    image_root: str = field(default="", metadata={"help": "folder the dataset's image paths are relative to",
                                                  "required": True})
    out: str = field(default="", metadata={"help": "output HDF5 feature store path (one per dataset x backbone)",
                                           "required": True})
    dataset_format: str = field(default="auto", metadata={
        "help": "dataset file format; auto = by suffix (.json Karpathy, .tsv TSV)",
        "choices": DATASET_FORMATS})
    backbone: str = field(default="resnet152", metadata={
        "help": "CNN: vgg19 -> FC7 4096-d after ReLU, resnets -> 2048-d pooled (512-d resnet18); "
                "paper: vgg19 and resnet152", "choices": tuple(BACKBONES)})
    weights: str = field(default="default", metadata={
        "help": "'default' = torchvision's standard ImageNet file from the torch hub cache (downloaded there "
                "on first use, hash-checked, unless --offline), a torchvision weights name like IMAGENET1K_V1, "
                "a state_dict PATH, or 'none' = random init (seeded by --seed; weak features: near-chance "
                "results on real photos)"})
    offline: bool = field(default=False, metadata={
        "help": "never download weights (also set by VSEPP_OFFLINE=1 or HF_HUB_OFFLINE=1): a missing file is an "
                "error naming its URL and the folder to put it in"})
    crops: int = field(default=10, metadata={
        "help": "crops per image: 10 = four corners + center and their flips (paper 10C, also writes the "
                "center crop as 1c), 1 = center 224 crop of the 256x256 resize (paper 1C)",
        "choices": CROP_COUNTS})
    dtype: str = field(default="float32", metadata={
        "help": "feature storage dtype (float16 halves the file; computed in float32 either way)",
        "choices": FEATURE_DTYPES})
    device: str = device_field(what="the CNN")
    amp: str = field(default="none", metadata={
        "help": "autocast dtype for the CNN: bf16 or fp16 on cuda, bf16 on a CPU with native bf16 (AMX or "
                "AVX512-BF16: ~3x faster, features within ~0.5% of float32); features are stored as --dtype "
                "either way; default none = float32 as in the paper", "choices": AMP_MODES})
    batch_size: int = field(default=32, metadata={
        "help": "images per batch; all crops of a batch go through the CNN as one batch "
                "(batch_size * crops crops)"})
    workers: int | None = field(default=None, metadata={
        "help": "DataLoader worker processes for decode, resize and crop (0 = in the main process; "
                "default: min(4, the CPU cores this process may use))"})
    image_timeout: float = field(default=DEFAULT_IMAGE_TIMEOUT_S, metadata={
        "help": "seconds one image may take to open and decode before it is marked failed (0 = no limit); "
                "with --workers a batch that takes longer than image-timeout x (batch-size + 2) stops the "
                "run (resumable), since a decoder stuck in C code cannot be interrupted"})
    shard: str = field(default="", metadata={
        "help": "'' for all images, or 'i/n' to extract only the i-th (0-based) of n contiguous blocks "
                "of rows, e.g. one per machine; join the stores with `pipeline.py merge`"})
    overwrite: bool = field(default=False, metadata={
        "help": "delete and recreate an existing store (also one made with another config)"})
    strict: bool = field(default=False, metadata={
        "help": "fail (non-zero exit) when any image could not be read; default: mark it failed, go on"})
    retry_failed: bool = field(default=False, metadata={
        "help": "also retry images marked failed by an earlier run (e.g. after fixing the files)"})
    seed: int = field(default=0, metadata={"help": "seed of the random init used with --weights none"})
    decode: str = field(default="cpu", metadata={
        "help": "cpu = decode, resize and crop in DataLoader workers; gpu = workers only read the files, JPEG "
                "batches are decoded, resized and cropped on the GPU (needs cuda; other formats fall back to the "
                "CPU per image)", "choices": DECODE_DEVICES})
    channels_last: bool = field(default=True, metadata={
        "help": "run the CNN in channels_last memory format (faster on recent CPUs and GPUs)"})
    max_batches: int | None = field(default=None, metadata={
        "help": "stop after this many batches as if interrupted (the store stays resumable); for tests"})

    def validate(self) -> None:
        """Raise ValueError naming the first option outside its allowed values."""
        super().validate()
        self.check_at_least(1, "batch_size")
        self.check_at_least(0, "workers", "image_timeout", "max_batches")
        parse_shard(self.shard)


def config_json_path(out: str | Path) -> Path:
    """Where the config of a store is saved: ``<out>.extract.json``."""
    return Path(str(out) + ".extract.json")


def parse_shard(shard: str) -> tuple[int, int] | None:
    """"" -> None; "i/n" -> (i, n) with 0 <= i < n; anything else -> ValueError."""
    if shard == "":
        return None
    parts = shard.split("/")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        index, count = int(parts[0]), int(parts[1])
        if 0 <= index < count:
            return index, count
    raise ValueError(f"shard {shard!r} must be 'i/n' with 0 <= i < n (e.g. '0/4'), or '' for all images")
