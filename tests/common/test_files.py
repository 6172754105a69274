"""atomic_write: all or nothing, no temporary file left behind, the usual file mode."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.files import atomic_write, atomic_write_json, atomic_write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")

    def half_then_fail(handle):
        handle.write(b"new but incomplete")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


@pytest.mark.parametrize("durable", [False, True])
def test_the_file_gets_the_umask_mode_not_0600(tmp_path: Path, durable: bool):
    previous = os.umask(0o027)
    try:
        path = atomic_write(tmp_path / "f.bin", lambda handle: handle.write(b"x"), durable=durable)
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o640 and path.read_bytes() == b"x"


def test_json_ends_with_a_newline(tmp_path: Path):
    path = atomic_write_json(tmp_path / "a.json", {"b": [1, 2]})
    assert path.read_text() == '{\n  "b": [\n    1,\n    2\n  ]\n}\n'
