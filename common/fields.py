"""Config fields that several stages declare alike (--device, --image-root, --weights): one definition each."""

from __future__ import annotations

from dataclasses import field
from typing import Any

from common.choices import DEVICES


def device_field(*, what: str = "") -> Any:
    """The --device option; `what` names what runs there (e.g. "the CNN")."""
    used_by = f" for {what}" if what else ""
    return field(default="auto", metadata={"help": f"device{used_by}: auto (cuda if available), cpu or cuda",
                                           "choices": DEVICES})


def image_root_field() -> Any:
    """The --image-root option of the stages that embed a store split (encode, search)."""
    return field(default="", metadata={
        "help": "raw images of --split for a fine-tuned checkpoint (default: the store's image_root attribute)"})


def weights_field() -> Any:
    """The --weights option of the stages that embed new images (encode, search, serve)."""
    return field(default="", metadata={
        "help": "the store CNN's weight file when it is not in the torch hub cache (train-stage checkpoints)"})
