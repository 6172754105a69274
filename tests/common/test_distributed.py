"""common/distributed.py: leaving a process group, and naming a rank that stopped (two spawned gloo ranks); the
collectives themselves are tested on two gloo ranks in tests/train/test_distributed.py."""

import datetime
import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from common import distributed


@pytest.mark.parametrize("wait_for_others", [True, False])
def test_shutdown_leaves_the_process_group(wait_for_others: bool):
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=30))
    distributed.shutdown(wait_for_others=wait_for_others)
    assert not dist.is_initialized()
    assert not distributed.current().enabled


def test_shutdown_without_a_group_does_nothing():
    distributed.shutdown(wait_for_others=True)
    assert not dist.is_initialized()


def stalled_rank_worker(rank: int, port: int, out: str) -> None:
    """Rank 1 stops itself (as SIGSTOP does) while rank 0 waits for it at a barrier; rank 0 writes what it finds."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))  # what torchrun sets
    context = distributed.init_from_environment(timeout_minutes=0.05)  # collectives fail after 3 s
    if rank == 1:
        time.sleep(2.5)
        os.kill(os.getpid(), signal.SIGSTOP)
        return
    alive = distributed.unresponsive_ranks(observe_s=1.0)  # rank 1 sleeps: its watch thread still checks in
    try:
        context.barrier()
        found = "the barrier passed"
    except RuntimeError as err:
        found = distributed.describe_failure(err) or "no rank named"
    Path(out).write_text(json.dumps({"alive": alive, "failure": found}))
    distributed.shutdown()


@pytest.mark.distributed
def test_a_stopped_rank_is_named_by_the_rank_whose_collective_failed(tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "found.json"
    workers = mp.start_processes(stalled_rank_worker, args=(port, str(out)), nprocs=2, join=False,
                                 start_method="spawn")
    try:
        deadline = time.monotonic() + 60
        while not out.exists() and time.monotonic() < deadline and workers.processes[0].is_alive():
            time.sleep(0.1)
        found = json.loads(out.read_text())
    finally:
        for process in workers.processes:
            process.kill()  # rank 1 is stopped: SIGKILL is the signal that ends it
            process.join()
    assert found["alive"] == []
    assert found["failure"].startswith("rank(s) 1 did not arrive: they stopped checking in ")
    assert "Timed out" in found["failure"]


def test_check_in_interval_follows_the_timeout():
    assert distributed.check_in_interval(1.8) == 0.1
    assert distributed.check_in_interval(60) == 3.0
    assert distributed.check_in_interval(30 * 60) == 5.0
    assert distributed.unresponsive_ranks() is None  # no process group: nothing can be known
