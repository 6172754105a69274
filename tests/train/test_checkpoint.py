"""Tests of train/checkpoint.py: atomic save, validated load, strict weights, RNG round trip."""

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from train.checkpoint import (
    capture_rng_state, load_checkpoint, load_model_state, restore_rng_state, restore_training_state, save_checkpoint,
)


def _save(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, **overrides) -> None:
    progress = {"epoch": 1, "step": overrides.pop("step", 7), "step_in_epoch": 3, "best_rsum": 12.5, "best_epoch": 0,
                "best_step": 4, "validated_step": 4}
    args = dict(model=model, loss=nn.Module(), optimizer=optimizer, scaler=None, kind="train", progress=progress,
                vocab={"words": ["<pad>", "<start>", "<end>", "<unk>"]}, config={"seed": 0},
                model_spec={"vocab_size": 4, "feature_dim": 3})
    args.update(overrides)
    save_checkpoint(path, **args)


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path: Path):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    _save(tmp_path / "last.pt", model, optimizer)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind

    other = nn.Linear(3, 2)
    other_optimizer = torch.optim.Adam(other.parameters(), lr=0.1)
    checkpoint = load_checkpoint(tmp_path / "last.pt", expected_kind="train")
    restore_training_state(checkpoint, model=other, loss=nn.Module(), optimizer=other_optimizer, scaler=None)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    exp_avg = [opt.state_dict()["state"][0]["exp_avg"] for opt in (optimizer, other_optimizer)]
    assert torch.equal(*exp_avg)
    assert (checkpoint["epoch"], checkpoint["step"], checkpoint["step_in_epoch"]) == (1, 7, 3)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_missing_file_and_wrong_kind(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    model = nn.Linear(2, 2)
    _save(tmp_path / "ft.pt", model, torch.optim.Adam(model.parameters()), kind="finetune")
    with pytest.raises(ValueError, match="'finetune' checkpoint, expected 'train'"):
        load_checkpoint(tmp_path / "ft.pt", expected_kind="train")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(tmp_path / "junk.pt")


def test_a_feature_store_passed_as_a_checkpoint_is_named_as_such(tmp_path: Path):
    import h5py

    with h5py.File(tmp_path / "feats.h5", "w") as h5file:
        h5file.attrs["schema_version"] = 2
    with pytest.raises(ValueError, match="feats.h5 is an HDF5 feature store, not a checkpoint; pass it as --store"):
        load_checkpoint(tmp_path / "feats.h5")


def test_strict_load_lists_keys():
    model = nn.Sequential(nn.Linear(2, 2))
    state = {"0.weight": torch.zeros(2, 2), "extra": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"missing keys \['0.bias'\], unexpected keys \['extra'\]"):
        load_model_state(model, state)


def test_strict_load_names_tensors_of_another_shape():
    model = nn.Sequential(nn.Linear(2, 3))
    state = {"0.weight": torch.zeros(3, 5), "0.bias": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"other shapes .*0.weight \(3, 5\) vs \(3, 2\).*feature size"):
        load_model_state(model, state)


def test_checkpoint_files_get_the_usual_mode(tmp_path: Path):
    model = nn.Linear(2, 2)
    _save(tmp_path / "last.pt", model, torch.optim.Adam(model.parameters()))
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "last.pt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_save_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    model = nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    _save(tmp_path / "last.pt", model, optimizer, step=1)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path / "last.pt", model, optimizer, step=2)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_rng_capture_restore():
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(2))
    restore_rng_state(state)
    second = (random.random(), np.random.rand(), torch.rand(2))
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])
