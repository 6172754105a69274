"""Device choice and mixed precision, shared by every stage that runs a network."""

import contextlib
import os
from pathlib import Path

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# /proc/cpuinfo flags of native bf16 arithmetic: x86 AVX512-BF16 and AMX-BF16, aarch64 FEAT_BF16
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
# Measured where bf16 is emulated (oneDNN and ATen held to AVX2 on a Xeon, like the AMD EPYC this project ran on
# before; ResNet152, 4 images, 2 threads, 3 alternated rounds, load ~2, 2026-12-06): bf16 2.8x slower than float32.
BF16_EMULATED_SLOWDOWN = 2.8
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


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (x86 'flags', aarch64 'Features'); empty where there is none."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return frozenset()
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX on x86, FEAT_BF16 on aarch64): torch's CPUID
    checks where it has them, else /proc/cpuinfo. Elsewhere bf16 is emulated and slower than float32."""
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, name, None)
        if check is not None and check():
            return True
    return bool(cpu_flags() & BF16_CPU_FLAGS)


def check_amp(device: torch.device, amp: str) -> None:
    """ValueError unless autocast `amp` pays on `device`: none anywhere, bf16 / fp16 on cuda, bf16 on a CPU with
    native bf16 (fp16 autocast on the CPU has no fast kernels here, and its loss scaling is CUDA's)."""
    if amp == "none" or device.type == "cuda":
        return
    if amp != "bf16":
        raise ValueError(f"--amp {amp} needs CUDA; on the CPU use --amp bf16 (CPUs with native bf16) or none")
    if not native_cpu_bf16():
        raise ValueError(f"--amp bf16 on the CPU needs native bf16 (AVX512-BF16 or AMX on x86, bf16 on ARM), which "
                         f"this CPU lacks: emulated, ResNet152 ran {BF16_EMULATED_SLOWDOWN:.1f}x slower than float32; "
                         "use --amp none")


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Autocast to bf16/fp16 for amp != 'none' (check_amp says where that is allowed), else a no-op."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])
