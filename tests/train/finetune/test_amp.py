"""finetune --amp bf16 on the CPU: the CNN, head and GRU train under bf16 autocast; the checkpoint records it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common import device as device_module
from tests.train.finetune.fixtures import build_setup, finetune_config, single_thread  # noqa: F401  (autouse)
from train.checkpoint import load_checkpoint
from train.finetune.run import run_finetune


@pytest.mark.slow
def test_bf16_finetune_step(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(device_module, "native_cpu_bf16", lambda: True)  # any CPU: emulated bf16 is only slower
    setup = build_setup(tmp_path / "setup")
    summary = run_finetune(finetune_config(setup, tmp_path / "ft", amp="bf16", max_steps=1))
    checkpoint = load_checkpoint(summary["last"])
    assert checkpoint["config"]["amp"] == "bf16" and checkpoint["step"] == 1
    weights = checkpoint["model"]
    assert all(value.dtype != torch.bfloat16 for value in weights.values())  # parameters stay float32
    assert all(torch.isfinite(value).all() for value in weights.values() if value.is_floating_point())
    monkeypatch.setattr(device_module, "native_cpu_bf16", lambda: False)
    with pytest.raises(ValueError, match="needs native bf16"):
        run_finetune(finetune_config(setup, tmp_path / "refused", amp="bf16", max_steps=1))
