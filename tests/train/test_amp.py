"""train --amp bf16 on the CPU: the step runs under bf16 autocast, the run records it and a resume keeps it."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from common import device as device_module
from train.checkpoint import load_checkpoint
from train.config import TrainConfig
from train.run import run_train


def test_bf16_training_runs_records_and_keeps_its_amp(monkeypatch, tiny_config: TrainConfig, tmp_path: Path):
    monkeypatch.setattr(device_module, "native_cpu_bf16", lambda: True)  # any CPU: emulated bf16 is only slower
    seen = []
    real_autocast = torch.autocast

    def spy(*args, **kwargs):  # the dtypes the training step asks autocast for
        seen.append((kwargs.get("dtype"), kwargs.get("enabled", True)))
        return real_autocast(*args, **kwargs)

    monkeypatch.setattr(torch, "autocast", spy)
    cfg = dataclasses.replace(tiny_config, amp="bf16", max_steps=2)
    summary = run_train(cfg)
    assert (torch.bfloat16, True) in seen
    checkpoint = load_checkpoint(summary["last"])
    assert checkpoint["config"]["amp"] == "bf16" and math.isfinite(checkpoint["best_rsum"])
    with pytest.raises(ValueError, match=r"amp: 'bf16' -> 'none'"):
        run_train(dataclasses.replace(cfg, amp="none", resume=summary["last"], max_steps=3))
    assert run_train(dataclasses.replace(cfg, resume=summary["last"], max_steps=3))["step"] == 3


def test_bf16_training_is_refused_without_native_bf16(monkeypatch, tiny_config: TrainConfig):
    monkeypatch.setattr(device_module, "native_cpu_bf16", lambda: False)
    with pytest.raises(ValueError, match="needs native bf16"):
        run_train(dataclasses.replace(tiny_config, amp="bf16"))
    assert not (Path(tiny_config.out_dir) / "last.pt").exists()
