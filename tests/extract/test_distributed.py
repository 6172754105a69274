"""`torchrun ... pipeline.py extract` (gloo, 2 processes on loopback): the same store as one process, feature
bytes and all, after an uninterrupted run and after a SIGKILL of the whole job and a rerun."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from extract.distributed import shard_store_path
from tests.extract.conftest import write_karpathy_json, write_rgb_jpeg
from tests.train.distributed_cases import launcher

pytestmark = pytest.mark.distributed  # every test starts several processes

ROOT = Path(__file__).resolve().parents[2]
IMAGES = 21  # 11 and 10 per rank


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("images")
    (folder / "imgs").mkdir()
    names = [f"im{number:02d}.jpg" for number in range(IMAGES)]
    for number, name in enumerate(names):
        write_rgb_jpeg(folder / "imgs" / name, seed=number, size=(40 + number, 30 + 2 * number))
    return write_karpathy_json(folder / "dataset.json", names, ["train"] * 15 + ["val"] * 6), folder


def _command(dataset: tuple[Path, Path], out: Path, *, ranks: int, crops: int) -> list[str]:
    return [*launcher(ranks), str(ROOT / "pipeline.py"), "--log-level", "WARNING", "--dist-timeout", "2", "extract",
            "--dataset", str(dataset[0]), "--image-root", str(dataset[1]), "--out", str(out), "--backbone",
            "resnet18", "--weights", "none", "--crops", str(crops), "--batch-size", "3", "--workers", "0",
            "--device", "cpu"]


def _environment(folder: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HOME": str(folder)}


def _extract(dataset, out: Path, *, ranks: int, crops: int) -> None:
    done = subprocess.run(_command(dataset, out, ranks=ranks, crops=crops), env=_environment(out.parent),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr


def _contents(path: Path) -> dict[str, bytes]:
    with h5py.File(path, "r") as h5file:
        names = ["images/status", "features/1c"] + (["features/10c"] if "features/10c" in h5file else [])
        return {name: np.ascontiguousarray(h5file[name][()]).tobytes() for name in names}


def test_two_ranks_write_the_store_of_one_process(dataset, tmp_path: Path):
    _extract(dataset, tmp_path / "one.h5", ranks=1, crops=10)
    _extract(dataset, tmp_path / "two.h5", ranks=2, crops=10)
    assert _contents(tmp_path / "two.h5") == _contents(tmp_path / "one.h5")
    assert not list(tmp_path.glob("two.h5.rank*"))  # the shard stores are merged and gone
    assert (tmp_path / "two.h5.extract.json").is_file()
    with h5py.File(tmp_path / "two.h5", "r") as h5file:
        assert h5file.attrs["shard"] == "" and h5file.attrs["weights_seed"] == 0


def test_a_killed_distributed_extract_reruns_to_the_same_store(dataset, tmp_path: Path):
    _extract(dataset, tmp_path / "one.h5", ranks=1, crops=1)
    out = tmp_path / "two.h5"
    job = subprocess.Popen(_command(dataset, out, ranks=2, crops=1), env=_environment(tmp_path),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    shards = [shard_store_path(out, rank, 2) for rank in range(2)]
    deadline = time.monotonic() + 120
    while not all(shard.exists() for shard in shards) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the extraction
    killed_before_the_end = not out.exists()
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=30)
    assert killed_before_the_end, "the job finished before the kill: give it more images"
    _extract(dataset, out, ranks=2, crops=1)
    assert _contents(out) == _contents(tmp_path / "one.h5")
