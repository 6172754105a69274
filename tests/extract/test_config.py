"""ExtractConfig: help/choices metadata for the CLI, validation, JSON round trip, shard parsing."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from extract.config import ExtractConfig, config_json_path, parse_shard


def _config(**overrides: object) -> ExtractConfig:
    return ExtractConfig(**{"dataset": "d.json", "image_root": "root", "out": "out.h5", **overrides})


def test_every_field_has_help_and_enumerations_have_choices() -> None:
    fields = {field.name: field for field in dataclasses.fields(ExtractConfig)}
    assert all(field.metadata.get("help") for field in fields.values())
    for name in ("backbone", "crops", "dtype", "device", "amp", "dataset_format"):
        assert getattr(_config(), name) in fields[name].metadata["choices"]
    assert fields["backbone"].metadata["choices"] == ("vgg19", "resnet152", "resnet50", "resnet18")


@pytest.mark.parametrize("overrides, message", [
    ({"backbone": "alexnet"}, "--backbone alexnet is not one of vgg19, resnet152"), ({"crops": 5}, "--crops 5 is not"),
    ({"dtype": "float64"}, "--dtype float64 is not"), ({"amp": "int8"}, "--amp int8 is not"),
    ({"batch_size": 0}, "--batch-size must be >= 1"), ({"workers": -1}, "--workers must be >= 0"),
    ({"shard": "3/3"}, "shard '3/3'"), ({"out": ""}, "--out is required"),
    ({"image_timeout": -1.0}, "--image-timeout must be >= 0"),
])
def test_validate_names_bad_value(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _config(**overrides).validate()


def test_json_round_trip(tmp_path: Path) -> None:
    config = _config(backbone="vgg19", crops=1, shard="1/4", max_batches=3)
    path = config_json_path(tmp_path / "store.h5")
    assert path.name == "store.h5.extract.json"
    config.save_json(path)
    assert ExtractConfig.load_json(path) == config


def test_parse_shard() -> None:
    assert parse_shard("") is None and parse_shard("0/1") == (0, 1) and parse_shard("3/4") == (3, 4)
    for bad in ("1", "4/4", "-1/2", "a/b", "1/2/3"):
        with pytest.raises(ValueError, match="must be 'i/n'"):
            parse_shard(bad)


def test_workers_default_to_what_the_machine_has(monkeypatch: pytest.MonkeyPatch) -> None:
    from common import device

    assert _config().workers is None  # resolved when the run starts, in one place
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0, 1})
    assert device.default_workers() == 2
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert device.default_workers() == 4
    help_text = {f.name: f.metadata["help"] for f in dataclasses.fields(ExtractConfig)}["workers"]
    assert "default: min(4, the CPU cores" in help_text
