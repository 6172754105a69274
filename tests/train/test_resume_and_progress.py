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
from train.run import run_train
from train.trainer import Trainer


def _records(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    timings = {"steps_per_s", "data_s", "step_s"}
    return [{key: value for key, value in record.items() if key not in timings} for record in records]


@pytest.mark.slow
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
        summary = run_train(dataclasses.replace(tiny_config, epochs=1, log_every=2))
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("epoch 0: ")]
    assert lines and lines[0].startswith("epoch 0: 2 of ")
    for field in (" step/s, ", " left, loss ", ", grad_norm ", ", data 0.", " s, step 0."):
        assert field in lines[0], field
    records = [json.loads(line) for line in (Path(tiny_config.out_dir) / "metrics.jsonl").read_text().splitlines()]
    step = next(record for record in records if record["event"] == "step")
    assert step["captions"] == 2 * tiny_config.batch_size and step["grad_norm"] > 0
    assert step["loss_mean"] > 0 and step["data_s"] >= 0 and step["step_s"] > 0 and "loss" in step
    finished = [record.getMessage() for record in caplog.records if "finished after" in record.getMessage()]
    assert finished and "best validation rsum" in finished[0] and summary["best"] in finished[0]


def test_a_non_finite_loss_stops_the_run_by_the_next_log_step_and_names_its_step(
        tiny_config: TrainConfig, monkeypatch: pytest.MonkeyPatch):
    original = Trainer.train_step

    def nan_at_step_one(self, batch):
        loss, logs, grad_norm = original(self, batch)
        return (loss * float("nan") if self.step == 1 else loss), logs, grad_norm

    monkeypatch.setattr(Trainer, "train_step", nan_at_step_one)
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 0, step 1; lower --lr"):
        run_train(dataclasses.replace(tiny_config, epochs=1, log_every=3))
    assert not (Path(tiny_config.out_dir) / "last.pt").exists()


def test_nan_features_are_named_by_row_and_store(make_train_store, tiny_config: TrainConfig):
    store = make_train_store("nan.h5", crops=1)
    with h5py.File(store, "r+") as h5file:
        features = h5file["features/1c"][()]
        features[3, 5] = np.nan
        h5file["features/1c"][...] = features
    with pytest.raises(ValueError, match=r"features/1c of image rows \[3\] hold NaN or inf"):
        run_train(dataclasses.replace(tiny_config, store=str(store), feature_mode="1c", batch_size=64 * 3))
