"""report.collect: metrics.jsonl columns stay aligned when keys come and go, and the ablation table a run belongs to."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from report.collect import find_ablation, read_curves


def write_lines(path: Path, records: list[dict | str]) -> None:
    path.write_text("".join((record if isinstance(record, str) else json.dumps(record)) + "\n" for record in records))


def test_curves_keep_steps_and_values_aligned(tmp_path: Path):
    write_lines(tmp_path / "metrics.jsonl", [
        {"event": "step", "step": 1, "epoch": 0, "loss": 3.0, "lr": 0.1},
        {"event": "step", "step": 2, "epoch": 0, "loss": 2.0, "lr": 0.1, "k": 4},  # k appears late
        '{"event": "step", "step": 3, "loss"',  # a line cut by a crash
        {"event": "val", "step": 2, "epoch": 1, "rsum": 100.0, "i2t_r1": 10.0},
        {"event": "step", "step": 4, "epoch": 1, "loss": 1.0, "lr": 0.01},  # and goes again
    ])
    curves = read_curves(tmp_path)
    assert curves.step["step"] == [1, 2, 4] and curves.step["loss"] == [3, 2, 1]
    assert curves.step["k"][1] == 4 and len(curves.step["k"]) == 3 and math.isnan(curves.step["k"][2])
    assert curves.val == {"step": [2], "epoch": [1], "rsum": [100.0], "i2t_r1": [10.0]}
    assert read_curves(tmp_path / "nowhere").empty


def test_the_ablation_table_is_the_folder_s_own_or_the_grid_s_of_one_of_its_runs(tmp_path: Path):
    grid = tmp_path / "grid"
    (grid / "mh_1c_last").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    table = {"header": {}, "runs": [{"name": "mh_1c_last", "out_dir": str(grid / "mh_1c_last")}]}
    (grid / "ablation.json").write_text(json.dumps(table))
    assert find_ablation(grid) == (grid / "ablation.json", "")
    assert find_ablation(grid / "mh_1c_last") == ((grid / "ablation.json").resolve(), "mh_1c_last")
    assert find_ablation(tmp_path / "other") == (None, "")
    assert find_ablation(tmp_path / "other", str(grid / "ablation.json")) == (grid / "ablation.json", "")
    with pytest.raises(FileNotFoundError, match="--ablation"):
        find_ablation(tmp_path / "other", str(tmp_path / "missing.json"))
