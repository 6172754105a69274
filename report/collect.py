"""What a run folder holds for the report: its config, the metrics.jsonl curves, the ablation table it belongs to."""

from __future__ import annotations

import json
import logging
import math
import operator
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from train.run_dir import CONFIG_FILE, METRICS_FILE

logger = logging.getLogger(__name__)

ABLATION_FILE = "ablation.json"  # written by ablation/run.py beside ablation.md
MAX_LINE_BYTES = 1 << 16  # a metrics line is a few hundred bytes; a longer one is skipped, read in pieces
MAX_COLUMNS = 256  # distinct numeric keys kept per event kind (each costs 8 bytes per line read)
CHUNK = 4096  # lines of one event kind buffered before they join the columns
HUGE = 1 << 1000  # an int this large is no metric (and float() of it would overflow): not a number here


@dataclass
class Curves:
    """metrics.jsonl as columns: training steps (loss, lr, the loss's own logs such as k) and validations.

    Each column is an array('d') (8 bytes a value; a list's len, indexing, append and truthiness, and
    np.asarray without a copy), aligned with its "step" column: NaN where a line lacks the key.
    """

    step: dict[str, array] = field(default_factory=dict)  # "step" -> steps, "loss" -> values, ...
    val: dict[str, array] = field(default_factory=dict)  # "step" -> steps, "rsum" -> values, ...
    skipped: dict[str, int] = field(default_factory=dict)  # why lines were not read -> how many

    @property
    def empty(self) -> bool:
        return not len(self.step.get("step", ())) and not len(self.val.get("step", ()))


def read_config(run_dir: Path) -> dict:
    """The run's resolved config.json ({} when the folder has none, e.g. an ablation folder); ValueError naming
    the file when it is not a JSON object."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return {}
    config = _read_json(path, "the run's config")
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a JSON {type(config).__name__}, not the run's config (an object of options); "
                         "restore the run's config.json or pass another run folder")
    return config


def _read_json(path: Path, what: str) -> object:
    """json.loads of a file; ValueError naming the file when it is not UTF-8 JSON."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is not {what} as JSON ({str(err)[:200]})") from err


def _number(value: object) -> float | None:
    """A JSON number as a float (NaN kept), None for anything else (bools, strings, null, huge ints)."""
    kind = type(value)  # json.loads makes exactly float, int, bool, str, None, list, dict: no subclasses to allow
    if kind is float:
        return value
    if kind is int and -HUGE < value < HUGE:
        return float(value)
    return None


class _Columns:
    """Columns of one event kind, a key first seen at row r NaN before it. Records are buffered and added CHUNK at
    a time, a column by one list comprehension and one array extend (C loops; a line-by-line loop over every value
    took most of the read), checked by the set of its values' types."""

    def __init__(self, columns: dict[str, array], skipped: Counter) -> None:
        self.columns, self.rows, self.skipped, self.pending = columns, 0, skipped, []

    def add(self, record: dict) -> None:
        self.pending.append(record)
        if len(self.pending) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        """Add the buffered records to the columns (every column grows by their count)."""
        records, self.pending = self.pending, []
        if not records:
            return
        keys = list(set().union(*records))  # "event" and "step" at least: itemgetter(*keys) gives tuples
        if set(map(len, records)) == {len(keys)}:  # every line has every key (the usual case): transpose in C
            by_key = dict(zip(keys, zip(*map(operator.itemgetter(*keys), records))))
        else:
            by_key = {key: [record.get(key, math.nan) for record in records] for key in keys}
        for key, values in by_key.items():
            numbers = _numbers(values)
            column = self.columns.get(key)
            if column is None:
                if numbers is None:
                    continue  # a key holding no number in any line so far (e.g. "event") is no column
                if len(self.columns) >= MAX_COLUMNS:
                    self.skipped[f"key(s) past the first {MAX_COLUMNS}"] += 1
                    continue
                column = self.columns[key] = array("d", [math.nan]) * self.rows
            column.extend(numbers if numbers is not None else array("d", [math.nan]) * len(values))
        self.rows += len(records)
        for column in self.columns.values():  # a key missing from all these lines stays aligned too
            if len(column) < self.rows:
                column.extend(array("d", [math.nan]) * (self.rows - len(column)))


def _numbers(values: list | tuple) -> array | None:
    """values as an array('d'), non-numbers NaN; None when none of them is a number."""
    if set(map(type, values)) <= {float, int}:  # bool is a type of its own here: not a number
        try:
            return array("d", values)
        except OverflowError:  # an int past float's range
            pass
    numbers = [_number(value) for value in values]
    if all(number is None for number in numbers):
        return None
    return array("d", [math.nan if number is None else number for number in numbers])


def read_curves(run_dir: Path) -> Curves:
    """Columns of metrics.jsonl, read by chunks of lines (linear time; memory: a chunk, and 8 bytes per value kept).

    A line that cannot be read is skipped and counted by reason, with one warning naming the file and the first
    such line: not UTF-8, not JSON (a crash mid-write), not a JSON object, a step or val line whose step is not a
    number, a val line without a numeric rsum, a line over MAX_LINE_BYTES. Lines of other events are ignored.
    """
    curves = Curves()
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return curves
    skipped: Counter = Counter()
    first_skipped: dict[str, int] = {}
    kinds = {"step": _Columns(curves.step, skipped), "val": _Columns(curves.val, skipped)}
    with path.open("rb") as handle:
        for numbers, lines in _chunks(handle):
            for number, record in _records(numbers, lines):
                reason = record if isinstance(record, _Skip) else _add_record(record, kinds)
                if reason:
                    skipped[reason] += 1
                    first_skipped.setdefault(reason, number)
    for columns in kinds.values():
        columns.flush()
    curves.skipped = dict(skipped)
    if skipped:
        logger.warning("%s: skipped %d line(s) it could not read: %s", path, sum(skipped.values()),
                       "; ".join(f"{count} {reason}" + (f" (first: line {first_skipped[reason]})"
                                                        if reason in first_skipped else "")
                                 for reason, count in skipped.items()))
    return curves


class _Skip(str):
    """Why a line was not read (a str, told apart from a JSON string value by its type)."""


def _chunks(handle: BinaryIO) -> Iterator[tuple[list[int], list[bytes | None]]]:
    """(1-based line numbers, lines) CHUNK non-blank lines at a time; None for a line over MAX_LINE_BYTES (read
    past in pieces, never held whole)."""
    numbers: list[int] = []
    lines: list[bytes | None] = []
    number = 0
    while line := handle.readline(MAX_LINE_BYTES):
        number += 1
        if len(line) == MAX_LINE_BYTES and not line.endswith(b"\n"):
            while (line := handle.readline(MAX_LINE_BYTES)) and not line.endswith(b"\n"):
                pass
            line = None
        elif line.isspace():
            continue
        numbers.append(number)
        lines.append(line)
        if len(lines) >= CHUNK:
            yield numbers, lines
            numbers, lines = [], []
    if lines:
        yield numbers, lines


def _records(numbers: list[int], lines: list[bytes | None]) -> Iterator[tuple[int, object]]:
    """(line number, JSON value or _Skip) of each line. When every line is one {...} object, the chunk is parsed
    as one JSON array (one C call, not one per line); otherwise, or when that fails, line by line."""
    if all(line is not None and line[:1] == b"{" and line.rstrip()[-1:] == b"}" for line in lines):
        try:
            values = json.loads(b"[" + b",".join(lines) + b"]")
        except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            values = None
        if values is not None and len(values) == len(lines):
            yield from zip(numbers, values)
            return
    for number, line in zip(numbers, lines):
        yield number, _parse_line(line)


def _parse_line(line: bytes | None) -> object:
    """One line's JSON value, or why it cannot be read (_Skip)."""
    if line is None:
        return _Skip(f"line(s) over {MAX_LINE_BYTES} bytes")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return _Skip("line(s) not UTF-8")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return _Skip("line(s) not JSON (cut by a crash?)")


def _add_record(record: object, kinds: dict[str, _Columns]) -> str:
    """Add one line's record to its columns; return why it was skipped ("" when read or ignored)."""
    if type(record) is not dict:
        return "line(s) not a JSON object"
    event = record.get("event")
    columns = kinds.get(event) if type(event) is str else None
    if columns is None:
        return ""
    step = _number(record.get("step"))
    if step is None or not math.isfinite(step):
        return f"{event} line(s) without a numeric step"
    if event == "val" and _number(record.get("rsum")) is None:
        return "val line(s) without a numeric rsum"
    columns.add(record)
    return ""


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
    table = _read_json(path, "an ablation table")
    if not isinstance(table, dict) or not table.get("runs"):
        raise ValueError(f"{path} holds no ablation runs (expected the ablation.json of `pipeline.py ablate`)")
    return table


def _row_name(table: dict, run_dir: Path) -> str:
    """The name of the row whose out_dir is run_dir (or whose name is its folder name), else ""."""
    for row in table["runs"]:
        if Path(row.get("out_dir", "")).resolve() == run_dir.resolve() or row.get("name") == run_dir.name:
            return row["name"]
    return ""
