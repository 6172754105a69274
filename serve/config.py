"""ServeConfig: the options of `pipeline.py serve` (a local search page over a store split or an encode file)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from common.choices import SPLITS
from common.config import StageConfig
from extract.transforms import RESIZE
from common.fields import device_field, weights_field

LOOPBACK = "127.0.0.1"
MAX_K = 100  # results a query may ask for
MAX_QUERY_CHARS = 500  # a longer sentence is refused with a message (captions are ~10-20 words)
# The model sees every image at RESIZE x RESIZE: 16x that side (4096 x 4096, 16.8 MP, 50 MB decoded) covers any
# photo worth uploading, and two decodes at a time bound the memory uploads take (a 6,300 x 6,300 PNG is 119 MB).
MAX_PIXELS = (16 * RESIZE) ** 2
UPLOADS_AT_ONCE = 2  # uploads decoded and embedded at the same time; the others wait without holding a thread


@dataclass
class ServeConfig(StageConfig):
    """Every option of the serve stage: the model, the gallery (a store split or an embeddings file), the server."""

    checkpoint: str = field(default="", metadata={
        "help": "train or finetune checkpoint, or an exported model.pt (default: the model that wrote --embeddings)"})
    embeddings: str = field(default="", metadata={
        "help": "embeddings file of `pipeline.py encode` to search (read, not recomputed)"})
    store: str = field(default="", metadata={
        "help": "feature store whose --split is embedded once at start (default: the checkpoint's store); also the "
                "store whose CNN embeds uploaded images for a train-stage checkpoint"})
    split: str = field(default="test", metadata={"help": "store split to search without --embeddings",
                                                 "choices": SPLITS})
    image_root: str = field(default="", metadata={
        "help": "folder the gallery's images are served from, and nothing outside it (default: the embeddings "
                "file's or the store's image root)"})
    weights: str = weights_field()
    host: str = field(default=LOOPBACK, metadata={
        "help": "address to bind: 127.0.0.1 (this machine only); another address exposes the page to the network"})
    port: int = field(default=8000, metadata={"help": "TCP port"})
    k: int = field(default=12, metadata={"help": "results per query shown by default"})
    max_upload_mb: float = field(default=10.0, metadata={"help": "largest uploaded image in MB (larger: refused)"})
    max_pixels: int = field(default=MAX_PIXELS, metadata={
        "help": f"largest uploaded image in pixels (width x height), refused before it is decoded (the model sees "
                f"{RESIZE} x {RESIZE})"})
    upload_timeout_s: float = field(default=15.0, metadata={
        "help": "seconds an upload's body may take to arrive; a slower one is cut off (408)"})
    batch_size: int = field(default=256, metadata={"help": "rows per forward pass while embedding the split"})
    workers: int = field(default=0, metadata={"help": "image decoding worker processes while embedding the split"})
    device: str = device_field()

    def validate(self) -> None:
        """A model, an address, sizes in range (ValueError)."""
        super().validate()
        if not self.checkpoint and not self.embeddings:
            raise ValueError("give --checkpoint RUN/best.pt (its store's --split is searched) or --embeddings FILE")
        try:
            ipaddress.ip_address(LOOPBACK if self.host == "localhost" else self.host)
        except ValueError as err:
            raise ValueError(f"--host {self.host!r} is not an IP address; use 127.0.0.1 (this machine only) or the "
                             "address of one of its interfaces") from err
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port {self.port} is not a TCP port (0-65535)")
        if not 1 <= self.k <= MAX_K:
            raise ValueError(f"--k must be in 1..{MAX_K}, got {self.k}")
        if not self.max_upload_mb > 0:
            raise ValueError(f"--max-upload-mb must be > 0, got {self.max_upload_mb}")
        if not self.upload_timeout_s > 0:
            raise ValueError(f"--upload-timeout-s must be > 0, got {self.upload_timeout_s}")
        self.check_at_least(1, "max_pixels", "batch_size")
        self.check_at_least(0, "workers")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)
