"""Find CNN weight files (torch hub cache, a path, or none) and hash them; never downloads."""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

import torch
from torchvision.models import get_model_weights

from extract.backbones import backbone_spec

logger = logging.getLogger(__name__)

NO_WEIGHTS = "none"  # random init (seeded)
DEFAULT_WEIGHTS = "default"  # torchvision's DEFAULT weights enum member for the backbone
_HASH_PREFIX = re.compile(r"-([a-f0-9]{6,})\.")  # torchvision file names embed a sha256 prefix


def hub_checkpoint_dir() -> Path:
    """Directory where torchvision keeps downloaded weights: ``torch.hub.get_dir()/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256_of_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (weight files are 0.5 GB for vgg19)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def torchvision_weights_file(backbone: str, enum_name: str = DEFAULT_WEIGHTS) -> str:
    """File name of torchvision's weights for a backbone, e.g. ``resnet152-f82ba261.pth``.

    ``enum_name`` is ``"default"`` (the backbone table's weights_file) or a member of the backbone's
    torchvision weights enum (``"IMAGENET1K_V1"``).
    """
    if enum_name == DEFAULT_WEIGHTS:
        return backbone_spec(backbone).weights_file
    weights_enum = get_model_weights(backbone)
    if enum_name not in weights_enum.__members__:
        raise ValueError(f"unknown torchvision weights {enum_name!r} for {backbone}; "
                         f"use one of {list(weights_enum.__members__)}, 'default', 'none' or a file path")
    return weights_enum[enum_name].url.rsplit("/", 1)[-1]


def is_weights_path(backbone: str, spec: str) -> bool:
    """True when a --weights value names a file (not 'none', 'default' or a torchvision weights name)."""
    return spec not in (NO_WEIGHTS, DEFAULT_WEIGHTS) and spec not in get_model_weights(backbone).__members__


def resolve_weights(backbone: str, spec: str) -> tuple[Path | None, str, str]:
    """Turn a ``--weights`` value into (file path or None, weights name, sha256 hex or "").

    spec: ``"none"`` (random init), ``"default"`` or a torchvision enum name like ``"IMAGENET1K_V1"``
    (the file torchvision would download, looked up in the torch hub cache), or a path to a state_dict.
    Raises FileNotFoundError naming the expected file and where to put it; nothing is downloaded.
    """
    if spec == NO_WEIGHTS:
        return None, NO_WEIGHTS, ""
    if is_weights_path(backbone, spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file {str(path)!r} does not exist; --weights takes an existing "
                                    f"state_dict file, 'default', a torchvision weights name "
                                    f"{list(get_model_weights(backbone).__members__)} or 'none'")
        path = path.resolve()
        return path, path.name, sha256_of_file(path)
    file_name = torchvision_weights_file(backbone, spec)
    path = hub_checkpoint_dir() / file_name
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {file_name!r} for {backbone} not found in {str(path.parent)!r} (torch hub cache; "
            f"TORCH_HOME={os.environ.get('TORCH_HOME', '<unset, default ~/.cache/torch>')}). This program never "
            f"downloads: copy {file_name} into that directory (or set TORCH_HOME), or pass --weights PATH, "
            f"or --weights none for random init")
    sha256 = sha256_of_file(path)
    _check_embedded_hash(path, sha256)
    return path, file_name, sha256


def _check_embedded_hash(path: Path, sha256: str) -> None:
    """torchvision names files ``<arch>-<sha256 prefix>.pth``; a mismatch means a corrupt or partial copy."""
    match = _HASH_PREFIX.search(path.name)
    if match and not sha256.startswith(match.group(1)):
        raise ValueError(f"weights file {str(path)!r} has sha256 {sha256[:12]}..., but its name promises "
                         f"{match.group(1)}...; the copy is corrupt or incomplete, replace it")
