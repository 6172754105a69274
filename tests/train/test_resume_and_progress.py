"""What a run leaves and says around interruptions: metrics.jsonl after a resume, a finished run resumed, stale
temporary files, the resume hints, progress lines in logs, the end-of-run summary, NaN features named."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import pipeline
from train.config import TrainConfig
from train.progress import ProgressReport
from train.run import run_train
from train.trainer import Trainer


def _records(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in record.items() if key != "steps_per_s"} for record in records]


def test_a_resumed_run_writes_the_metrics_of_an_uninterrupted_one(tiny_config: TrainConfig, tmp_path: Path):
    whole = dataclasses.replace(tiny_config, out_dir=str(tmp_path / "whole"), epochs=3)
    run_train(whole)
    early = dataclasses.replace(whole, out_dir=str(tmp_path / "early"), max_steps=5)  # mid-epoch 1
    run_train(early)
    # a run killed at step 13 with last.pt from step 5: its metrics.jsonl holds lines up to 13
    crashed = tmp_path / "crashed"
    shutil.copytree(whole.out_dir, crashed)
    shutil.copy(Path(early.out_dir) / "last.pt", crashed / "last.pt")
    run_train(dataclasses.replace(whole, out_dir=str(crashed), resume=str(crashed / "last.pt")))
    assert _records(crashed) == _records(Path(whole.out_dir))


def test_resuming_a_finished_run_changes_nothing(tiny_config: TrainConfig, caplog: pytest.LogCaptureFixture):
    run_train(tiny_config)
    run = Path(tiny_config.out_dir)
    before = {name: (run / name).read_bytes() for name in ("last.pt", "best.pt", "metrics.jsonl")}
    with caplog.at_level(logging.INFO, logger="train.trainer"):
        summary = run_train(dataclasses.replace(tiny_config, resume=str(run / "last.pt")))
    assert {name: (run / name).read_bytes() for name in before} == before
    assert any("already finished" in record.getMessage() for record in caplog.records)
    assert summary["step"] == 2 * 12 and summary["best"] == str(run / "best.pt")


def test_stale_temporary_files_of_the_run_are_removed(tiny_config: TrainConfig):
    run = Path(tiny_config.out_dir)
    run.mkdir(parents=True)
    stale = [run / "last.pt.x1y2.tmp", run / "best.pt.abcd.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    (run / "mine.tmp").write_text("not ours")
    run_train(dataclasses.replace(tiny_config, max_steps=1))
    assert not any(path.exists() for path in stale) and (run / "mine.tmp").exists()


def test_ctrl_c_prints_the_exact_command_that_resumes(tiny_config: TrainConfig, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path):
    original_step = Trainer.train_step

    def step_then_interrupt(self: Trainer, batch):
        result = original_step(self, batch)
        if self.step == 2 and not self.config.resume:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(Trainer, "train_step", step_then_interrupt)
    args = ["--log-level", "WARNING", "train", "--store", tiny_config.store, "--out-dir", str(tmp_path / "run"),
            "--embed-dim", "16", "--word-dim", "8", "--vocab-min-count", "1", "--batch-size", "16", "--epochs", "1",
            "--device", "cpu"]
    interrupted = CliRunner().invoke(pipeline.cli, args)
    last = tmp_path / "run" / "last.pt"
    assert interrupted.exit_code == 130
    assert f"interrupted: training state saved to {last}; continue with the same command plus --resume {last}" \
        in interrupted.output
    resumed = CliRunner().invoke(pipeline.cli, [*args, "--resume", str(last)])
    assert resumed.exit_code == 0, resumed.output


def test_a_run_folder_holding_only_best_pt_is_resumed_from_it(tiny_config: TrainConfig):
    run_train(dataclasses.replace(tiny_config, max_steps=1))
    (Path(tiny_config.out_dir) / "last.pt").unlink()  # killed during the first save of last.pt
    best = Path(tiny_config.out_dir) / "best.pt"
    with pytest.raises(ValueError, match=f"pass --resume {best} to continue it"):
        run_train(tiny_config)


def test_progress_lines_for_logs_and_the_end_of_run_summary(tiny_config: TrainConfig,
                                                            caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO):
        report = ProgressReport(epoch=3, total=5, done=1, every=2, enabled=True, terminal=False)
        for loss in (4.0, 3.0, 2.0, 1.0):
            report.update(loss)
        report.close()
        run_train(dataclasses.replace(tiny_config, epochs=1))
    lines = [record.getMessage() for record in caplog.records if record.name == "train.progress"]
    assert [line.split("  ")[1] for line in lines[:2]] == ["step 2/5", "step 4/5"] and "eta 0:00:0" in lines[0]
    assert "loss 3.71" in lines[1]  # the running mean (4, 3, 2), not the last value alone
    summary = [record.getMessage() for record in caplog.records if "finished after" in record.getMessage()]
    assert summary and "best validation rsum" in summary[0] and "best.pt" in summary[0]


def test_nan_features_are_named_by_row_and_store(make_train_store, tiny_config: TrainConfig):
    store = make_train_store("nan.h5", crops=1)
    with h5py.File(store, "r+") as h5file:
        features = h5file["features/1c"][()]
        features[3, 5] = np.nan
        h5file["features/1c"][...] = features
    with pytest.raises(ValueError, match=r"features/1c of image rows \[3\] hold NaN or inf"):
        run_train(dataclasses.replace(tiny_config, store=str(store), feature_mode="1c", batch_size=64 * 3))
