"""bench/gpu_check.py: its CPU dry run goes through every section's code path and writes the results files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bench import gpu_check


def test_the_cuda_only_tests_are_found():
    found = gpu_check.cuda_only_tests()
    assert "tests/train/test_gru.py::test_cuda_uses_nn_gru_and_agrees_with_cpu" in found
    assert "tests/extract/test_device_decode.py::test_gpu_decode_features_match_the_cpu_path" in found
    assert len(found) >= 5 and all("::test_" in node for node in found)


@pytest.mark.slow
def test_the_dry_run_goes_through_every_section(tmp_path: Path):
    results = gpu_check.run_check(tmp_path, dry_run=True)
    sections = results["sections"]
    assert list(sections) == list(gpu_check.SECTIONS)
    assert {name: section["status"] for name, section in sections.items()} == dict.fromkeys(gpu_check.SECTIONS, "ok")
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == json.loads(json.dumps(results, default=str))
    text = (tmp_path / "gpu_check.txt").read_text()
    assert text.startswith("machine: ") and all(f"== {name}: ok" in text for name in gpu_check.SECTIONS)
    assert set(sections["cuda_tests"]["result"]["outcomes"].values()) == {"SKIPPED"}  # no CUDA here
    (row,) = sections["extract"]["result"]["by_amp"].values()
    assert row["extract_loop"] > 0 and row["ratio_loop"] > 0
    assert sections["decode"]["result"]["gpu"].startswith("refused without CUDA")
    assert sections["train_step"]["result"]["none"]["losses_finite"]
    assert sections["train_step"]["result"]["cudnn_gru"] is False  # the CPU runs PackedGRU
    assert sections["eval"]["result"]["rsum"] > 0
    nccl = sections["nccl"]["result"]
    assert nccl["backend"] == "gloo" and nccl["max_grad_difference"] <= 1e-5
    assert nccl["collectives"] == {"sum": 2.0, "any": True, "broadcast": {"a": 1}, "gather_rows_equal": True,
                                   "gather_rows_grad": 12.0}


def test_a_failing_or_slow_section_is_recorded_and_the_next_one_runs(monkeypatch, tmp_path: Path):
    def fails(ctx):
        raise RuntimeError("broken on purpose")

    def hangs(ctx):
        while True:
            time.sleep(0.01)

    monkeypatch.setattr(gpu_check, "section_eval", fails)
    monkeypatch.setattr(gpu_check, "section_decode", hangs)
    monkeypatch.setattr(gpu_check, "section_nccl", lambda ctx: {"fine": True})
    monkeypatch.setitem(gpu_check.BUDGETS_S, "decode", 0.2)
    results = gpu_check.run_check(tmp_path, dry_run=True, only=("eval", "decode", "nccl"))
    sections = results["sections"]
    assert sections["eval"]["status"] == "error" and "broken on purpose" in sections["eval"]["error"]
    assert sections["decode"]["status"] == "timeout" and sections["decode"]["seconds"] < 5
    assert sections["nccl"]["status"] == "ok" and sections["nccl"]["result"] == {"fine": True}
    assert "== eval: error" in (tmp_path / "gpu_check.txt").read_text()
