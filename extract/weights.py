"""Find CNN weight files (torch hub cache, a path, or none), download torchvision's on first use, hash them."""
from __future__ import annotations

import logging
import os
import re
import sys
import time
import urllib.error
from pathlib import Path

import torch
from torchvision.models import get_model_weights

from common.files import sha256_of_file  # noqa: F401  (re-exported: the weights' sha256)
from extract.backbones import BACKBONES, backbone_spec

logger = logging.getLogger(__name__)

NO_WEIGHTS = "none"  # random init (seeded)
DEFAULT_WEIGHTS = "default"  # torchvision's DEFAULT weights enum member for the backbone
_HASH_PREFIX = re.compile(r"-([a-f0-9]{6,})\.")  # torchvision file names embed a sha256 prefix
# The switches that forbid downloads: this project's own, and the one the Hugging Face stack (timm, open_clip)
# reads, which offline clusters usually set already.
OFFLINE_VARIABLES = ("VSEPP_OFFLINE", "HF_HUB_OFFLINE")


def offline_from_environment() -> bool:
    """True when an offline switch of OFFLINE_VARIABLES is set to a true value (1, true, yes, on)."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in OFFLINE_VARIABLES)


def hub_checkpoint_dir() -> Path:
    """Directory where torchvision keeps downloaded weights: ``torch.hub.get_dir()/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


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


def torchvision_weights_url(file_name: str) -> str | None:
    """torchvision's download URL of a weight file name (any weights of a backbone in the table), or None."""
    for name in BACKBONES:
        for member in get_model_weights(name):
            if member.url.rsplit("/", 1)[-1] == file_name:
                return member.url
    return None


def download_weights(file_name: str, url: str, *, offline: bool) -> Path:
    """Fetch torchvision's ``file_name`` from ``url`` into the torch hub cache, as torchvision does on first use.

    The download goes to a temporary file beside the target and is renamed only when complete and when its
    sha256 starts with the prefix embedded in the file name (torch.hub.download_url_to_file). ``offline`` (or an
    offline switch in the environment) forbids it: the error names the URL, the file and the folder to put it in.
    """
    folder = hub_checkpoint_dir()
    target = folder / file_name
    put_it = f"download {url} and put {file_name} into {str(folder)!r} (or set TORCH_HOME)"
    if offline or offline_from_environment():
        raise FileNotFoundError(f"weights file {file_name!r} is not in the torch hub cache and downloads are off "
                                f"(--offline or {'/'.join(OFFLINE_VARIABLES)}): {put_it}, or pass --weights PATH")
    match = _HASH_PREFIX.search(file_name)
    logger.info("downloading %s from %s into %s (first use; later runs read the cached file)", file_name, url, folder)
    started = time.monotonic()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), hash_prefix=match.group(1) if match else None,
                                       progress=sys.stderr.isatty())
    except (urllib.error.URLError, OSError, RuntimeError, ValueError) as error:
        reason = (f"HTTP {error.code} {error.reason}" if isinstance(error, urllib.error.HTTPError)
                  else " ".join(str(getattr(error, "reason", "") or error).split())[:200])
        raise FileNotFoundError(f"downloading {file_name!r} from {url} failed ({type(error).__name__}: {reason}); "
                                f"{put_it}, or pass --weights PATH") from None
    logger.info("downloaded %s (%.1f MB) in %.1f s", file_name, target.stat().st_size / 1e6,
                time.monotonic() - started)
    return target


def resolve_weights(backbone: str, spec: str, *, offline: bool = False) -> tuple[Path | None, str, str]:
    """Turn a ``--weights`` value into (file path or None, weights name, sha256 hex or "").

    spec: ``"none"`` (random init), ``"default"`` or a torchvision enum name like ``"IMAGENET1K_V1"``
    (torchvision's file, looked up in the torch hub cache and downloaded there on first use unless ``offline``),
    or a path to a state_dict. Raises FileNotFoundError naming the expected file and where to put it.
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
        path = download_weights(file_name, torchvision_weights_url(file_name) or "", offline=offline)
    sha256 = sha256_of_file(path)
    _check_embedded_hash(path, sha256)
    return path, file_name, sha256


def _check_embedded_hash(path: Path, sha256: str) -> None:
    """torchvision names files ``<arch>-<sha256 prefix>.pth``; a mismatch means a corrupt or partial copy."""
    match = _HASH_PREFIX.search(path.name)
    if match and not sha256.startswith(match.group(1)):
        raise ValueError(f"weights file {str(path)!r} has sha256 {sha256[:12]}..., but its name promises "
                         f"{match.group(1)}...; the copy is corrupt or incomplete, replace it")
