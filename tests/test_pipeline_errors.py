"""Bad inputs and a hostile file system end in one `error:` line and exit code 2, with nothing already written lost.

The tests run as root on this project's machine, where chmod does not stop a write: a read-only folder is
simulated by making os.access answer no for it (what the pre-flight check asks), and failures at the write
call itself by monkeypatching that call to raise PermissionError / OSError(ENOSPC).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import pipeline
from features.store import FeatureStoreWriter
from tests.extract.test_run_extract_inputs import fill_the_disk_at_write
from tests.features.test_disk import held_open
from train.checkpoint import load_checkpoint

TINY_TRAIN = ["--embed-dim", "16", "--word-dim", "8", "--batch-size", "16", "--epochs", "2", "--workers", "0",
              "--vocab-min-count", "1", "--device", "cpu"]
EXTRACT = ["--backbone", "resnet18", "--weights", "none", "--crops", "1", "--workers", "0", "--batch-size", "2"]


def run_cli(args: list[str]):
    """The CLI's result; no exception escapes (catch_exceptions=False), as a traceback would."""
    return CliRunner().invoke(pipeline.cli, ["--log-level", "ERROR", *args], catch_exceptions=False)


def the_error(result) -> str:
    """The one `error:` line of a run that must have failed cleanly with exit code 2."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make `folder` read-only: chmod, and for root (whose writes ignore modes) os.access says no as well."""
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != folder and real_access(path, mode))


@pytest.fixture
def checkpoint(make_train_store, tmp_path: Path) -> Path:
    """best.pt of a tiny training run on the synthetic store."""
    result = run_cli(["train", "--store", str(make_train_store()), "--out-dir", str(tmp_path / "run"), *TINY_TRAIN])
    assert result.exit_code == 0, result.output
    return tmp_path / "run" / "best.pt"


def test_extract_into_a_read_only_folder(images, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    dataset, root = images
    (tmp_path / "ro").mkdir()
    read_only(monkeypatch, tmp_path / "ro")
    result = run_cli(["extract", "--dataset", str(dataset), "--image-root", str(root),
                      "--out", str(tmp_path / "ro" / "feats.h5"), *EXTRACT])
    assert the_error(result) == (f"error: extract: cannot access {tmp_path / 'ro'}: Permission denied; fix its "
                                 "permissions or choose another --out")
    assert list((tmp_path / "ro").iterdir()) == []


def test_a_permission_error_at_the_write_call_is_one_line(images, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    dataset, root = images
    out = tmp_path / "feats.h5"

    def denied(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", f"{path}.partial")

    monkeypatch.setattr(FeatureStoreWriter, "create", denied)
    result = run_cli(["extract", "--dataset", str(dataset), "--image-root", str(root), "--out", str(out), *EXTRACT])
    assert the_error(result) == (f"error: extract: cannot access {out}.partial: Permission denied; fix its "
                                 "permissions or choose another --out")


def test_train_into_a_read_only_folder_or_onto_a_file(make_train_store, tmp_path: Path,  # noqa: F811
                                                      monkeypatch: pytest.MonkeyPatch):
    store = make_train_store()
    (tmp_path / "a_file").write_text("x")
    result = run_cli(["train", "--store", str(store), "--out-dir", str(tmp_path / "a_file"), *TINY_TRAIN])
    assert the_error(result) == (f"error: train: cannot create {tmp_path / 'a_file'}: Not a directory (it is a "
                                 "file); remove that file or choose another --out-dir")
    (tmp_path / "ro").mkdir()
    read_only(monkeypatch, tmp_path / "ro")
    result = run_cli(["train", "--store", str(store), "--out-dir", str(tmp_path / "ro" / "run"), *TINY_TRAIN])
    assert the_error(result).startswith(f"error: train: cannot access {tmp_path / 'ro'}: Permission denied;")


def test_eval_checks_its_results_path_before_computing(checkpoint: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "a_file").write_text("x")
    result = run_cli(["eval", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "a_file" / "r.json")])
    assert the_error(result) == (f"error: eval: cannot create {tmp_path / 'a_file' / 'r.json'}: Not a directory "
                                 f"({tmp_path / 'a_file'} is a file); remove that file or choose another --out")
    read_only(monkeypatch, checkpoint.parent)
    result = run_cli(["eval", "--checkpoint", str(checkpoint)])  # the default: eval-test.json beside it
    assert the_error(result).startswith(f"error: eval: cannot access {checkpoint.parent}: Permission denied;")
    assert "i2t" not in result.output and not list(checkpoint.parent.glob("eval-*"))  # nothing computed


class FullDisk:
    """A file whose writes fail with ENOSPC after `room` bytes, as on a disk that fills up."""

    def __init__(self, handle, room: int) -> None:
        self.handle, self.room = handle, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def test_a_full_disk_during_a_checkpoint_save(make_train_store, tmp_path: Path,  # noqa: F811
                                              monkeypatch: pytest.MonkeyPatch):
    real_save, calls = torch.save, []

    def disk_fills_on_third_save(payload, handle, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the real torch.save, which reports the failed write as a RuntimeError
            handle = FullDisk(handle, room=4096)
        return real_save(payload, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_on_third_save)
    run = tmp_path / "run"
    result = run_cli(["train", "--store", str(make_train_store()), "--out-dir", str(run), *TINY_TRAIN])
    line = the_error(result)
    assert line.startswith(f"error: train: cannot write {run}/") and ": No space left on device; free some space or " \
        f"choose another --out-dir, then continue with --resume {run}/last.pt" in line
    assert load_checkpoint(run / "last.pt")["epoch"] == 1 and not list(run.glob("*.tmp"))  # the earlier state is kept


@pytest.mark.slow
def test_a_full_disk_during_extract_is_one_line_and_resumable(images, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    dataset, root = images
    out = tmp_path / "feats.h5"
    real_write = fill_the_disk_at_write(monkeypatch, call=2)
    command = ["extract", "--dataset", str(dataset), "--image-root", str(root), "--out", str(out), *EXTRACT]
    assert the_error(run_cli(command)) == (
        f"error: the disk of {out} is full (No space left on device) after 2 of 4 images; the store keeps them: "
        "free some space and rerun the same command to resume")
    monkeypatch.setattr(FeatureStoreWriter, "write_rows", real_write)
    assert run_cli(command).exit_code == 0


@pytest.mark.slow
def test_a_store_in_use_is_said_so_and_overwrite_does_not_replace_it(images, tmp_path: Path):
    dataset, root = images
    out = tmp_path / "feats.h5"
    command = ["extract", "--dataset", str(dataset), "--image-root", str(root), "--out", str(out), *EXTRACT]
    assert run_cli(command).exit_code == 0
    before = out.read_bytes()
    with held_open(out, "r+"):
        for extra in ([], ["--overwrite"]):
            line = the_error(run_cli(command + extra))
            assert "is in use by another process" in line and "pass --overwrite" not in line
    assert out.read_bytes() == before


@pytest.mark.slow
def test_a_wrong_image_root_and_a_store_as_checkpoint(images, tmp_path: Path):
    dataset, root = images
    out = tmp_path / "feats.h5"
    command = ["extract", "--dataset", str(dataset), "--out", str(out), *EXTRACT]
    line = the_error(run_cli(command + ["--image-root", str(root / "imgs")]))
    assert "none of the 4 images to extract exists under --image-root" in line and "is it the folder" in line
    assert run_cli(command + ["--image-root", str(root)]).exit_code == 0
    for stage in (["eval", "--checkpoint", str(out)], ["finetune", "--checkpoint", str(out), "--out-dir", "ft"]):
        assert the_error(run_cli(stage)) == (f"error: {out} is an HDF5 feature store, not a checkpoint; pass it as "
                                             "--store, and a train or finetune checkpoint (RUN/best.pt, RUN/last.pt) "
                                             "as --checkpoint / --resume")


@pytest.mark.slow
def test_every_run_leaves_the_process_group_waiting_for_the_others_only_when_it_finished(
        images, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    left = []
    monkeypatch.setattr(pipeline.distributed, "shutdown", lambda **options: left.append(options))
    dataset, root = images
    command = ["extract", "--dataset", str(dataset), "--out", str(tmp_path / "feats.h5"), *EXTRACT]
    the_error(run_cli(command + ["--image-root", str(root / "imgs")]))
    assert run_cli(command + ["--image-root", str(root)]).exit_code == 0
    assert left == [{"wait_for_others": False}, {"wait_for_others": True}]
