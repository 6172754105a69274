"""StageConfig: choices and required fields checked, strict from_dict with suggestions, dashed keys, atomic JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from common.config import StageConfig, field_base_type, normalize_keys, option_name


@dataclass
class ToyConfig(StageConfig):
    path: str = field(default="", metadata={"help": "where", "required": True})
    mode: str = field(default="fast", metadata={"help": "how", "choices": ("fast", "slow")})
    splits: tuple[str, ...] = field(default=("train",), metadata={"help": "which", "choices": ("train", "val")})
    size: int = field(default=3, metadata={"help": "how many"})
    limit: int | None = field(default=None, metadata={"help": "cap"})


def test_choices_required_and_numbers_are_checked():
    ToyConfig(path="p").validate()
    with pytest.raises(ValueError, match="--path is required: where"):
        ToyConfig().validate()
    with pytest.raises(ValueError, match="--mode medium is not one of fast, slow"):
        ToyConfig(path="p", mode="medium").validate()
    with pytest.raises(ValueError, match="--splits test is not one of train, val"):
        ToyConfig(path="p", splits=("train", "test")).validate()
    with pytest.raises(ValueError, match="--size must be a whole number, got .three."):
        ToyConfig(path="p", size="three").validate()



def test_check_at_least_names_the_first_field_below_the_minimum_and_lets_an_unset_optional_pass():
    ToyConfig(path="p", size=1).check_at_least(1, "size", "limit")
    with pytest.raises(ValueError, match=r"^--size must be >= 1, got 0$"):
        ToyConfig(path="p", size=0, limit=-5).check_at_least(1, "size", "limit")
    with pytest.raises(ValueError, match=r"^--limit must be >= 0, got -1$"):
        ToyConfig(path="p", limit=-1).check_at_least(0, "size", "limit")
def test_from_dict_accepts_dashes_turns_lists_into_tuples_and_suggests_fields():
    config = ToyConfig.from_dict({"path": "p", "--mode": "slow", "splits": ["train", "val"]})
    assert config == ToyConfig(path="p", mode="slow", splits=("train", "val"))
    assert ToyConfig.from_dict({"path": "p", "size": 4}).size == 4
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'sise' \(did you mean 'size'\?\), 'zzz'"):
        ToyConfig.from_dict({"path": "p", "sise": 4, "zzz": 1})


def test_json_round_trip_is_atomic(tmp_path: Path):
    config = ToyConfig(path="p", splits=("val",), limit=7)
    path = config.save_json(tmp_path / "config.json")
    assert json.loads(path.read_text())["splits"] == ["val"]
    assert ToyConfig.load_json(path) == config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    with pytest.raises(FileNotFoundError, match="no config file"):
        ToyConfig.load_json(tmp_path / "missing.json")


def test_names_and_types():
    assert option_name("embed_dim") == "--embed-dim"
    assert normalize_keys({"embed-dim": 1, "--word-dim": 2, "seed": 3}) == {"embed_dim": 1, "word_dim": 2, "seed": 3}
    assert field_base_type(int | None) is int and field_base_type(tuple[str, ...]) is tuple
    assert ToyConfig.field_types() == {"path": str, "mode": str, "splits": tuple, "size": int, "limit": int}
