"""The machine a bench runs on, as one line every bench prints first: CPU model, vector extensions, cores, GPU."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from common.device import available_cpus, cpu_flags, native_cpu_bf16

# The /proc/cpuinfo flags that decide CNN and matrix-product speed, in the order printed (x86, then aarch64).
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "asimd", "sve", "sve2", "bf16", "i8mm")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def vector_extensions() -> list[str]:
    """The VECTOR_FLAGS this CPU reports, e.g. ['avx2', 'fma', 'avx512f', 'avx512_bf16', 'amx_bf16']."""
    flags = cpu_flags()
    return [flag for flag in VECTOR_FLAGS if flag in flags]


def gpu_names() -> list[str]:
    """Names of the CUDA GPUs torch sees (none: [])."""
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]


def machine_line() -> str:
    """One line: CPU model, cores usable / online, vector extensions, native bf16, GPUs, torch, load average."""
    gpus = gpu_names()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"machine: {cpu_model()}, {available_cpus()} of {os.cpu_count()} cores usable, "
            f"{' '.join(vector_extensions()) or 'no vector flags known'} (native bf16: "
            f"{'yes' if native_cpu_bf16() else 'no'}), GPU: {', '.join(gpus) if gpus else 'none'}; "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; 1-min load {load:.2f}")


def print_machine() -> None:
    """Print machine_line() (the first line of every bench's output)."""
    print(machine_line(), flush=True)
