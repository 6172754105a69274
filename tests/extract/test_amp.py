"""extract --amp bf16 on the CPU: allowed only with native bf16, recorded in the store, kept on resume."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from common import device as device_module
from extract.run import run_extract
from tests.extract.test_run_extract import make_config, read_features


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend the CPU has native bf16, so that these tests run on any CPU (emulated bf16 is only slower)."""
    monkeypatch.setattr(device_module, "native_cpu_bf16", lambda: True)


@pytest.mark.slow  # two extractions per case
@pytest.mark.parametrize("dtype,crops", [("float32", 10), ("float16", 1)])
def test_bf16_features_are_stored_as_the_store_says_and_near_float32(native_bf16, tiny_dataset, tmp_path: Path,
                                                                      dtype: str, crops: int):
    dataset, root = tiny_dataset
    run_extract(make_config(dataset, root, tmp_path / "fp32.h5", dtype=dtype, crops=crops))
    summary = run_extract(make_config(dataset, root, tmp_path / "bf16.h5", dtype=dtype, crops=crops, amp="bf16"))
    assert summary["done"] == 4
    kinds = ["features/1c", "features/10c"][:1 if crops == 1 else 2]
    with h5py.File(tmp_path / "bf16.h5", "r") as store:
        assert store.attrs["amp"] == "bf16"
        assert all(store[kind].dtype == np.dtype(dtype) for kind in kinds)
    reference, ours = read_features(tmp_path / "fp32.h5"), read_features(tmp_path / "bf16.h5")
    for kind in kinds:
        a, b = ours[kind].astype(np.float64), reference[kind].astype(np.float64)
        assert 0 < np.linalg.norm(a - b) / np.linalg.norm(b) < 3e-2


@pytest.mark.slow
def test_a_resume_keeps_the_amp(native_bf16, tiny_dataset, tmp_path: Path):
    dataset, root = tiny_dataset
    out = tmp_path / "store.h5"
    assert run_extract(make_config(dataset, root, out, crops=1, amp="bf16", max_batches=1))["pending"] == 1
    with pytest.raises(ValueError, match=r"was extracted with --amp bf16, not none.*resume with --amp bf16"):
        run_extract(make_config(dataset, root, out, crops=1))
    assert run_extract(make_config(dataset, root, out, crops=1, amp="bf16"))["pending"] == 0


@pytest.mark.slow
def test_a_store_without_the_attribute_resumes_as_float32(tiny_dataset, tmp_path: Path):
    dataset, root = tiny_dataset
    out = tmp_path / "store.h5"
    run_extract(make_config(dataset, root, out, crops=1, max_batches=1))
    with h5py.File(out, "r+") as store:
        del store.attrs["amp"]  # as written before the attribute existed
    assert run_extract(make_config(dataset, root, out, crops=1))["pending"] == 0


def test_refusals_write_nothing(monkeypatch, tiny_dataset, tmp_path: Path):
    dataset, root = tiny_dataset
    out = tmp_path / "store.h5"
    monkeypatch.setattr(device_module, "native_cpu_bf16", lambda: False)
    with pytest.raises(ValueError, match="--amp bf16 on the CPU needs native bf16"):
        run_extract(make_config(dataset, root, out, amp="bf16"))
    with pytest.raises(ValueError, match="--amp fp16 needs CUDA"):
        run_extract(make_config(dataset, root, out, amp="fp16"))
    assert not out.exists()


@pytest.mark.slow
def test_shards_of_different_amps_do_not_merge(native_bf16, tiny_dataset, tmp_path: Path):
    from features.merge import merge_stores

    dataset, root = tiny_dataset
    run_extract(make_config(dataset, root, tmp_path / "a.h5", crops=1, shard="0/2"))
    run_extract(make_config(dataset, root, tmp_path / "b.h5", crops=1, shard="1/2", amp="bf16"))
    with pytest.raises(ValueError, match=r"amp: 'none' vs 'bf16'"):
        merge_stores([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "all.h5")
    assert not (tmp_path / "all.h5").exists()
