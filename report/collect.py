"""What a run folder holds for the report: its config, the metrics.jsonl curves, and the ablation table it belongs to."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from train.run_dir import CONFIG_FILE, METRICS_FILE

logger = logging.getLogger(__name__)

ABLATION_FILE = "ablation.json"  # written by ablation/run.py beside ablation.md


@dataclass
class Curves:
    """metrics.jsonl as columns: training steps (loss, lr, the loss's own logs such as k) and validations."""

    step: dict[str, list[float]] = field(default_factory=dict)  # "step" -> steps, "loss" -> values, ...
    val: dict[str, list[float]] = field(default_factory=dict)  # "step" -> steps, "rsum" -> values, ...

    @property
    def empty(self) -> bool:
        return not self.step.get("step") and not self.val.get("step")


def read_config(run_dir: Path) -> dict:
    """The run's resolved config.json ({} when the folder has none, e.g. an ablation folder)."""
    path = run_dir / CONFIG_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def read_curves(run_dir: Path) -> Curves:
    """Columns of metrics.jsonl; a line that is not JSON (a crash mid-write) is skipped with a warning."""
    curves = Curves()
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return curves
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s line %d is not JSON; skipped", path, number)
            continue
        columns = {"step": curves.step, "val": curves.val}.get(record.get("event"))
        if columns is None:
            continue
        row = len(columns.get("step", []))
        for key, value in record.items():
            if key == "step" or (isinstance(value, (int, float)) and not isinstance(value, bool)):
                columns.setdefault(key, [math.nan] * row).append(float(value))  # a key new at this line: NaN before
        for values in columns.values():  # a key missing from this line stays aligned too
            if len(values) == row:
                values.append(math.nan)
    return curves


def find_ablation(run_dir: Path, explicit: str = "") -> tuple[Path | None, str]:
    """(ablation.json, the name of this run's row or "") : the given file, the folder's own, or the grid's one
    folder up when this run is one of its rows."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"--ablation {explicit} does not exist")
        return path, _row_name(read_ablation(path), run_dir)
    if (run_dir / ABLATION_FILE).is_file():
        return run_dir / ABLATION_FILE, ""
    parent = run_dir.resolve().parent / ABLATION_FILE
    if parent.is_file():
        name = _row_name(read_ablation(parent), run_dir)
        if name:
            return parent, name
    return None, ""


def read_ablation(path: Path) -> dict:
    """ablation.json ({"header", "ablation_config", "runs"}); ValueError when it holds no runs."""
    table = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(table, dict) or not table.get("runs"):
        raise ValueError(f"{path} holds no ablation runs (expected the ablation.json of `pipeline.py ablate`)")
    return table


def _row_name(table: dict, run_dir: Path) -> str:
    """The name of the row whose out_dir is run_dir (or whose name is its folder name), else ""."""
    for row in table["runs"]:
        if Path(row.get("out_dir", "")).resolve() == run_dir.resolve() or row.get("name") == run_dir.name:
            return row["name"]
    return ""
