"""The report on odd run folders: all-NaN validations, unreadable lines counted, no report/ folder left on failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from report.collect import read_curves
from report.config import ReportConfig
from report.run import run_report, training_note


def write_metrics(run_dir: Path, lines: list[str]) -> None:
    (run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))


def test_all_nan_validations_and_skipped_lines_are_said_in_the_note(tmp_path: Path):
    write_metrics(tmp_path, [json.dumps({"event": "step", "step": 1, "loss": 2.0}), "[1, 2]",
                             json.dumps({"event": "val", "step": 1, "rsum": float("nan")}),
                             json.dumps({"event": "val", "step": 2, "rsum": float("nan")})])
    note = training_note(read_curves(tmp_path), {"log_every": 10})
    assert note == ("1 training line (every 10 steps) and 2 validations; no validation rsum is a finite number; "
                    "1 unreadable line(s) of metrics.jsonl skipped (see the log).")
    write_metrics(tmp_path, [json.dumps({"event": "val", "step": step, "rsum": rsum})
                             for step, rsum in ((1, float("nan")), (2, 7.0), (3, 5.0))])
    assert "best validation rsum 7.0 at step 2" in training_note(read_curves(tmp_path), {})


def test_a_failed_report_leaves_no_report_folder(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"loss": "mh", "batch_size": 8}))
    write_metrics(tmp_path, [json.dumps({"event": "step", "step": 1, "loss": 2.0})])
    (tmp_path / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises((ValueError, OSError)):
        run_report(ReportConfig(run_dir=str(tmp_path), device="cpu"))
    assert not (tmp_path / "report").exists()
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="config.json holds a JSON list"):
        run_report(ReportConfig(run_dir=str(tmp_path), device="cpu"))
    assert not (tmp_path / "report").exists()
