"""report.collect: metrics.jsonl columns stay aligned when keys come and go, and the ablation table a run belongs to."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from report.collect import find_ablation, read_config, read_curves


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
    assert list(curves.step["step"]) == [1, 2, 4] and list(curves.step["loss"]) == [3, 2, 1]
    assert curves.step["k"][1] == 4 and len(curves.step["k"]) == 3 and math.isnan(curves.step["k"][2])
    assert {key: list(values) for key, values in curves.val.items()} == {
        "step": [2], "epoch": [1], "rsum": [100.0], "i2t_r1": [10.0]}
    assert curves.skipped == {"line(s) not JSON (cut by a crash?)": 1}
    assert read_curves(tmp_path / "nowhere").empty and not curves.empty


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


def test_odd_lines_are_skipped_counted_and_named_and_the_rest_is_read(tmp_path: Path, caplog):
    good = {"event": "step", "step": 1, "loss": 1.0}
    (tmp_path / "metrics.jsonl").write_bytes(b"\n".join([
        json.dumps(good).encode(), b"[1, 2]", b"42", b'"a string"', b"null",
        json.dumps({"event": "val", "step": 1, "i2t_r1": 3.0}).encode(),  # no rsum
        json.dumps({"event": "val", "step": None, "rsum": 3.0}).encode(),
        json.dumps({"event": "step", "step": True, "loss": 2.0}).encode(),
        json.dumps({"event": "step", "step": 2, "loss": 10 ** 400}).encode(),  # a huge int is no number: NaN
        b'{"event": "step", "step": 3, "loss": "\xff\xfe"}',
        b"[" * 100_000,
        json.dumps({"event": "step", "step": 4, "note": "x" * 100_000}).encode(),
        json.dumps({"event": "val", "step": 5, "rsum": float("nan")}).encode(),
        json.dumps({"event": "start", "config": {}}).encode(),  # another event: ignored, not counted
    ]) + b"\n")
    curves = read_curves(tmp_path)
    assert list(curves.step["step"]) == [1, 2] and curves.step["loss"][0] == 1 and math.isnan(curves.step["loss"][1])
    assert list(curves.val["step"]) == [5] and math.isnan(curves.val["rsum"][0])
    assert curves.skipped == {"line(s) not a JSON object": 4, "val line(s) without a numeric rsum": 1,
                              "val line(s) without a numeric step": 1, "step line(s) without a numeric step": 1,
                              "line(s) not UTF-8": 1, "line(s) over 65536 bytes": 2}
    warning, = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warning.startswith(f"{tmp_path / 'metrics.jsonl'}: skipped 10 line(s)") and "(first: line 2)" in warning


def test_a_config_that_is_not_an_object_or_not_json_is_an_error_naming_the_file(tmp_path: Path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=f"{tmp_path / 'config.json'} holds a JSON list, not the run's config"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_bytes(b'{"loss": "\xff"}')
    with pytest.raises(ValueError, match=f"{tmp_path / 'config.json'} is not the run's config as JSON"):
        read_config(tmp_path)
    assert read_config(tmp_path / "nowhere") == {}


def test_many_lines_are_read_in_linear_time(tmp_path: Path):
    line = json.dumps({"event": "step", "step": 1, "epoch": 0, "loss": 1.5, "lr": 2e-4}) + "\n"
    for count in (20_000, 80_000):
        (tmp_path / "metrics.jsonl").write_text(line * count)
        start = time.perf_counter()
        assert len(read_curves(tmp_path).step["loss"]) == count
        seconds = time.perf_counter() - start
        if count == 20_000:
            small = seconds
    assert seconds < 4 * small * 2 + 0.5  # 4x the lines, at most ~8x the time (a quadratic read takes 16x)
