"""encode --amp bf16 on the CPU: embeddings near float32's, stored as float32, the amp recorded and kept on resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common import device as device_module
from retrieval.embeddings import EmbeddingsFile
from retrieval.encode import EncodeConfig, run_encode


def encode(checkpoint: Path, out: Path, **options) -> dict:
    return run_encode(EncodeConfig(checkpoint=str(checkpoint), out=str(out), device="cpu", workers=0,
                                   split="test", **options))


def test_bf16_encode_is_near_float32_and_keeps_its_amp(monkeypatch, trained, tmp_path: Path):
    monkeypatch.setattr(device_module, "native_cpu_bf16", lambda: True)  # any CPU: emulated bf16 is only slower
    encode(trained["cosine"], tmp_path / "fp32.h5")
    first = encode(trained["cosine"], tmp_path / "bf16.h5", amp="bf16", batch_size=5, max_batches=1)
    assert first["images"]["pending"] == 7
    with pytest.raises(ValueError, match=r"amp: file 'bf16' vs now 'none'"):
        encode(trained["cosine"], tmp_path / "bf16.h5", batch_size=5)
    encode(trained["cosine"], tmp_path / "bf16.h5", amp="bf16", batch_size=5)
    with EmbeddingsFile(tmp_path / "fp32.h5") as reference, EmbeddingsFile(tmp_path / "bf16.h5") as ours:
        assert ours.attrs["amp"] == "bf16" and reference.attrs["amp"] == "none"
        for group, count in (("images", 12), ("captions", 36)):
            a, b = ours.read(group, np.arange(count)), reference.read(group, np.arange(count))
            assert a.dtype == np.float32
            assert 0 < np.linalg.norm(a - b) / np.linalg.norm(b) < 3e-2


def test_bf16_encode_is_refused_without_native_bf16(monkeypatch, trained, tmp_path: Path):
    monkeypatch.setattr(device_module, "native_cpu_bf16", lambda: False)
    with pytest.raises(ValueError, match="needs native bf16"):
        encode(trained["cosine"], tmp_path / "refused.h5", amp="bf16")
    assert not (tmp_path / "refused.h5").exists()
