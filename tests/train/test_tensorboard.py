"""--tensorboard: the scalars of metrics.jsonl in TensorBoard event files, also across an exact resume."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import pipeline
from train.config import TrainConfig
from train.run import run_train
from train.tensorboard import TENSORBOARD_DIR


def tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every event file of the run, as TensorBoard reads them (purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run / TENSORBOARD_DIR))
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def jsonl_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    scalars: dict[str, list[tuple[int, float]]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        prefix = {"step": "train", "val": "val"}[record["event"]]
        for key, value in record.items():
            if key not in ("event", "step", "epoch"):
                scalars.setdefault(f"{prefix}/{key}", []).append((record["step"], value))
    return scalars


def test_the_event_files_hold_the_scalars_of_metrics_jsonl(tiny_config: TrainConfig):
    run_train(dataclasses.replace(tiny_config, tensorboard=True))
    run = Path(tiny_config.out_dir)
    expected, written = jsonl_scalars(run), tensorboard_scalars(run)
    assert set(written) == set(expected) and {"train/loss", "train/lr", "val/rsum", "val/t2i_r1"} <= set(written)
    for tag, points in expected.items():
        assert [step for step, _ in written[tag]] == [step for step, _ in points], tag
        assert [value for _, value in written[tag]] == pytest.approx([value for _, value in points], rel=1e-6), tag


@pytest.mark.slow
def test_a_resumed_run_replaces_the_points_written_after_its_checkpoint(tiny_config: TrainConfig, tmp_path: Path):
    whole = dataclasses.replace(tiny_config, out_dir=str(tmp_path / "whole"), tensorboard=True)
    run_train(whole)
    early = dataclasses.replace(whole, out_dir=str(tmp_path / "early"), max_steps=5)
    run_train(early)
    crashed = tmp_path / "crashed"  # event points up to the end, last.pt from step 5
    shutil.copytree(whole.out_dir, crashed)
    shutil.copy(Path(early.out_dir) / "last.pt", crashed / "last.pt")
    run_train(dataclasses.replace(whole, out_dir=str(crashed), resume=str(crashed / "last.pt")))
    assert len(list((crashed / TENSORBOARD_DIR).glob("events.*"))) == 2
    resumed, uninterrupted = tensorboard_scalars(crashed), tensorboard_scalars(Path(whole.out_dir))
    for tag in ("train/loss", "val/rsum"):
        assert [step for step, _ in resumed[tag]] == [step for step, _ in uninterrupted[tag]], tag
        assert [value for _, value in resumed[tag]] == pytest.approx([value for _, value in uninterrupted[tag]])


def test_tensorboard_is_optional_and_its_absence_is_named(tiny_config: TrainConfig, monkeypatch: pytest.MonkeyPatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "tensorboard" else real_find_spec(name, *args))
    with pytest.raises(ValueError, match="pip install tensorboard"):
        dataclasses.replace(tiny_config, tensorboard=True).validate()
    tiny_config.validate()  # without the option nothing asks for it


@pytest.mark.parametrize("stage", ["train", "finetune"])
def test_train_and_finetune_offer_the_option(stage: str):
    assert "--tensorboard" in CliRunner().invoke(pipeline.cli, [stage, "--help"]).output
