"""Device choice and mixed precision, shared by every stage that runs a network."""

import contextlib
import os

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MAX_DEFAULT_WORKERS = 4  # decoding workers beyond this rarely help one CNN keep up


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


def default_workers() -> int:
    """DataLoader workers when none are given: min(4, available CPU cores), so a small machine is not
    oversubscribed (torch warns when workers exceed the cores)."""
    return min(MAX_DEFAULT_WORKERS, available_cpus())


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available else cpu; 'cuda' without a GPU -> ValueError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA GPU; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; valid: auto, cpu, cuda")
    return torch.device(device)


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Autocast to bf16/fp16 for amp != 'none' (callers allow it on cuda only), else a no-op."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])
