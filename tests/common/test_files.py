"""atomic_write: all or nothing, no temporary file left behind, the usual file mode."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from common.files import atomic_write, atomic_write_json, atomic_write_text, check_writable


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


def test_a_full_disk_names_the_file_being_written(tmp_path: Path):
    def disk_full(handle):
        raise OSError(errno.ENOSPC, "No space left on device")  # what a write into a full disk raises

    with pytest.raises(OSError) as raised:
        atomic_write(tmp_path / "last.pt", disk_full)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_check_writable_finds_what_a_write_would_hit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    check_writable(tmp_path / "new" / "deeper" / "out.json", folder=False)
    check_writable(tmp_path / "a_folder", folder=True)
    check_writable(tmp_path / "a_file", folder=False)
    with pytest.raises(NotADirectoryError, match="it is a file"):
        check_writable(tmp_path / "a_file", folder=True)
    with pytest.raises(NotADirectoryError, match="a_file is a file") as raised:
        check_writable(tmp_path / "a_file" / "out.json", folder=False)
    assert raised.value.filename == str(tmp_path / "a_file" / "out.json")
    with pytest.raises(IsADirectoryError):
        check_writable(tmp_path / "a_folder", folder=False)
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway, so os.access says yes: simulate what others see
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != read_only and real_access(path, mode))
    with pytest.raises(PermissionError) as raised:
        check_writable(read_only / "run", folder=True)
    assert raised.value.errno == errno.EACCES and raised.value.filename == str(read_only)
