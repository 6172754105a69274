"""`torchrun ... pipeline.py train` when a rank stops (rank 0's error names it) and when the launcher dies (the ranks,
in sessions of their own, stop as after Ctrl-C instead of training to the end with nobody to collect them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.train.distributed_cases import launcher

pytestmark = pytest.mark.distributed  # torchrun: several processes per test

ROOT = Path(__file__).resolve().parents[2]


def children_of(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an exited process nobody reaped yet)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(condition, *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout_s} s")
        time.sleep(0.1)


def start_training(store: Path, folder: Path, *, dist_timeout: str) -> tuple[subprocess.Popen, dict[int, int]]:
    """A two-rank training of 100,000 epochs, once it has logged a step: (the torchrun process, {rank: pid})."""
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HOME": str(folder)}
    command = [*launcher(2), str(ROOT / "pipeline.py"), "--log-level", "WARNING", "--dist-timeout", dist_timeout,
               "train", "--store", str(store), "--out-dir", "run", "--embed-dim", "16", "--word-dim", "8",
               "--vocab-min-count", "1", "--batch-size", "8", "--epochs", "100000", "--log-every", "1",
               "--device", "cpu"]
    with open(folder / "log.txt", "wb") as log:
        job = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    metrics = folder / "run" / "metrics.jsonl"
    try:
        wait_for(lambda: metrics.exists() and metrics.stat().st_size > 0, timeout_s=120, what="no training step")
    except BaseException:
        os.killpg(job.pid, signal.SIGKILL)
        raise
    ranks = {}
    for pid in children_of(job.pid):
        environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
        ranks[int(next(item for item in environ if item.startswith(b"RANK=")).split(b"=")[1])] = pid
    assert sorted(ranks) == [0, 1], (ranks, (folder / "log.txt").read_text())
    return job, ranks


def test_rank_0_names_the_rank_that_stopped(make_train_store, tmp_path: Path):
    job, ranks = start_training(make_train_store(splits={"train": 30, "val": 8}), tmp_path, dist_timeout="0.05")
    try:
        os.kill(ranks[1], signal.SIGSTOP)  # rank 0 waits for it at the next step, for 3 s
        wait_for(lambda: not running(ranks[0]), timeout_s=60, what="rank 0 still waiting")
    finally:
        for pid in ranks.values():
            if running(pid):
                os.kill(pid, signal.SIGKILL)
        job.wait(timeout=60)
    log_text = (tmp_path / "log.txt").read_text()
    assert "error: rank(s) 1 did not arrive: they stopped checking in" in log_text, log_text
    assert job.returncode != 0


def test_ranks_stop_when_the_launcher_is_killed(make_train_store, tmp_path: Path):
    # --dist-timeout 0.5: the ranks check in (and look for their launcher) every 1.5 s
    job, ranks = start_training(make_train_store(splits={"train": 30, "val": 8}), tmp_path, dist_timeout="0.5")
    workers = list(ranks.values())
    metrics = tmp_path / "run" / "metrics.jsonl"
    try:
        os.killpg(job.pid, signal.SIGKILL)  # the launcher's process group; its workers are in sessions of their own
        job.wait()
        wait_for(lambda: not any(running(pid) for pid in workers), timeout_s=30, what="ranks still training")
    finally:
        for pid in workers:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
    log_text = (tmp_path / "log.txt").read_text()
    assert "its launcher (pid" in log_text and "is gone; stopping this rank" in log_text, log_text
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"step"' in line]
    assert (tmp_path / "run" / "last.pt").exists() and steps  # stopped as after Ctrl-C: last.pt saved
