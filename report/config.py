"""ReportConfig: the options of `pipeline.py report` (a run folder -> RUN/report/index.html and its PNGs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from common.choices import SPLITS
from common.config import StageConfig
from common.fields import device_field
from train.run_dir import BEST

REPORT_DIR = "report"  # inside the run folder
EXAMPLES = 8  # sampled caption queries, sampled image queries, worst queries of each direction
TOP_K = 5  # results shown per example query
MAX_K = 50  # the Recall@K curve runs K = 1..MAX_K
THUMB_SIZE = 160  # pixels, the longer side of a thumbnail


@dataclass
class ReportConfig(StageConfig):
    """Every option of the report stage; paths left empty come from the run folder and its config."""

    run_dir: str = field(default="", metadata={
        "help": "run folder of train or finetune (config.json, metrics.jsonl, best.pt), or an ablation folder "
                "(ablation.json); default: the folder of --checkpoint"})
    checkpoint: str = field(default="", metadata={"help": "model whose test retrievals are shown (default: "
                                                          "RUN_DIR/best.pt)"})
    store: str = field(default="", metadata={"help": "feature store of --split (default: the run's store)"})
    image_root: str = field(default="", metadata={
        "help": "folder of the raw images, for thumbnails (default: the run's image root, else the store's "
                "image_root attribute)"})
    split: str = field(default="test", metadata={"help": "split whose retrievals are shown", "choices": SPLITS})
    out_dir: str = field(default="", metadata={"help": "report folder (default: RUN_DIR/report)"})
    ablation: str = field(default="", metadata={
        "help": "ablation.json to chart (default: RUN_DIR/ablation.json, or the grid's when RUN_DIR is one of its "
                "runs)"})
    examples: int = field(default=EXAMPLES, metadata={
        "help": "sampled caption queries, sampled image queries and worst queries of each direction shown"})
    top_k: int = field(default=TOP_K, metadata={"help": "results shown per example query"})
    max_k: int = field(default=MAX_K, metadata={"help": "largest K of the Recall@K curve"})
    thumb_size: int = field(default=THUMB_SIZE, metadata={"help": "thumbnail size in pixels (longer side)"})
    seed: int = field(default=0, metadata={"help": "seed of the sampled example queries"})
    batch_size: int = field(default=256, metadata={"help": "rows per forward pass while embedding the split"})
    workers: int = field(default=0, metadata={"help": "image decoding worker processes (fine-tuned models)"})
    device: str = device_field()

    def validate(self) -> None:
        """A run folder (or checkpoint) and positive sizes (ValueError)."""
        super().validate()
        if not self.run_dir and not self.checkpoint:
            raise ValueError("give the run folder: report RUN (or --run-dir RUN, or --checkpoint RUN/best.pt)")
        self.check_at_least(1, "examples", "top_k", "max_k", "thumb_size", "batch_size")
        self.check_at_least(0, "workers")

    @property
    def run_path(self) -> Path:
        """The run folder: --run-dir, else the folder of --checkpoint."""
        return Path(self.run_dir) if self.run_dir else Path(self.checkpoint).parent

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.checkpoint) if self.checkpoint else self.run_path / BEST

    @property
    def out_path(self) -> Path:
        return Path(self.out_dir) if self.out_dir else self.run_path / REPORT_DIR
