"""Tests of common/device.py's autocast rules: where --amp may run, and how native bf16 is detected."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common import device as device_module
from common.device import autocast_context, check_amp, cpu_flags

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("native", [True, False])
def test_none_runs_everywhere_and_cuda_takes_both_dtypes(monkeypatch, native: bool):
    monkeypatch.setattr(device_module, "native_cpu_bf16", lambda: native)
    for device in (CPU, CUDA):  # a torch.device("cuda") object needs no GPU
        check_amp(device, "none")
    check_amp(CUDA, "bf16")
    check_amp(CUDA, "fp16")


def test_cpu_bf16_needs_native_bf16(monkeypatch):
    monkeypatch.setattr(device_module, "native_cpu_bf16", lambda: True)
    check_amp(CPU, "bf16")
    monkeypatch.setattr(device_module, "native_cpu_bf16", lambda: False)
    with pytest.raises(ValueError, match=r"needs native bf16 .* slower than float32; use --amp none"):
        check_amp(CPU, "bf16")


def test_cpu_fp16_is_refused_whatever_the_cpu(monkeypatch):
    monkeypatch.setattr(device_module, "native_cpu_bf16", lambda: True)
    with pytest.raises(ValueError, match="--amp fp16 needs CUDA; on the CPU use --amp bf16"):
        check_amp(CPU, "fp16")


def test_cpu_flags_read_x86_and_arm_lines(tmp_path: Path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu avx2 avx512f amx_bf16 avx512_bf16\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert {"avx2", "amx_bf16", "avx512_bf16"} <= cpu_flags(x86)
    assert {"asimd", "bf16"} <= cpu_flags(arm)
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_native_cpu_bf16_falls_back_to_the_flags(monkeypatch):
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    monkeypatch.setattr(device_module, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert not device_module.native_cpu_bf16()
    monkeypatch.setattr(device_module, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert device_module.native_cpu_bf16()


def test_cpu_autocast_context_runs_products_in_bf16():
    a = torch.randn(4, 8)
    with autocast_context(CPU, "bf16"):
        assert (a @ a.T).dtype == torch.bfloat16
    with autocast_context(CPU, "none"):
        assert (a @ a.T).dtype == torch.float32
