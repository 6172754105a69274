"""Config values mean what they say: strict types for every field (coerce_value), in from_dict and validate."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from common.config import StageConfig, coerce_value, shown


@dataclass
class Typed(StageConfig):
    flag: bool = field(default=False, metadata={"help": "a switch"})
    count: int = field(default=1, metadata={"help": "how many"})
    rate: float = field(default=0.1, metadata={"help": "how fast"})
    name: str = field(default="a", metadata={"help": "which"})
    splits: tuple[str, ...] = field(default=("train",), metadata={"help": "where"})
    limit: int | None = field(default=None, metadata={"help": "cap"})
    texts: tuple[str, ...] = field(default=(), metadata={"help": "sentences", "multiple": True})
    weights: dict[str, float] = field(default_factory=dict, metadata={"help": "per name"})


@pytest.mark.parametrize("key, value, message", [
    ("flag", "false", "flag must be true or false .*got 'false'"),
    ("flag", 7, "flag must be true or false .*got 7"),
    ("flag", 0, "flag must be true or false"),
    ("count", 2.5, "count must be a whole number, got 2.5"),
    ("count", 1e30, "count must be a whole number, got 1e\\+30"),
    ("count", True, "count must be a whole number, got True"),
    ("count", "3", "count must be a whole number, got '3'"),
    ("count", 10**30, "count must be a whole number below 2\\*\\*63"),
    ("rate", math.inf, "rate must be a finite number, got inf"),
    ("rate", math.nan, "rate must be a finite number, got nan"),
    ("rate", 10**400, "rate must be a finite number"),
    ("rate", "0.1", "rate must be a number, got '0.1'"),
    ("name", 7, "name must be a string, got 7"),
    ("splits", {"train": 1}, "splits must be a list, got {'train': 1}"),
    ("splits", ["train", 3], "splits\\[1\\] must be a string, got 3"),
    ("limit", "none", "limit must be a whole number"),
    ("weights", ["a"], "weights must be a table"),
    ("weights", {"a": "x"}, "weights.a must be a number"),
])
def test_a_value_of_the_wrong_type_is_refused_naming_the_source_and_the_key(key, value, message):
    with pytest.raises(ValueError, match=f"^saved.json: --{message}"):
        Typed.from_dict({key: value}, source="saved.json")


def test_values_of_the_right_type_are_kept_or_widened():
    config = Typed.from_dict({"flag": True, "count": 3, "rate": 1, "splits": ["train", "val"], "limit": None,
                              "texts": "a dog, running", "weights": {"a": 2}})
    assert config == Typed(flag=True, count=3, rate=1.0, splits=("train", "val"), texts=("a dog, running",),
                           weights={"a": 2.0})
    assert isinstance(config.rate, float)
    assert Typed.from_dict({"splits": "train, val"}).splits == ("train", "val")  # as on the command line


def test_validate_refuses_what_the_command_line_and_python_callers_give():
    Typed().validate()
    with pytest.raises(ValueError, match="^--rate must be a finite number, got inf$"):
        Typed(rate=math.inf).validate()
    with pytest.raises(ValueError, match="^--count must be a whole number, got 2.5$"):
        Typed(count=2.5).validate()
    with pytest.raises(ValueError, match="^--flag must be true or false"):
        Typed(flag="false").validate()


def test_a_huge_value_is_never_echoed_whole():
    huge = "x" * 100_000
    with pytest.raises(ValueError) as raised:
        Typed.from_dict({"count": huge})
    assert len(str(raised.value)) < 200
    shared = ["lol"] * 9
    for _ in range(9):  # an alias bomb's shape: 9**9 items if expanded, shared lists here
        shared = [shared] * 9
    assert len(shown(shared)) < 100
    with pytest.raises(ValueError, match="splits\\[0\\] must be a string"):
        coerce_value(tuple[str, ...], shared, where="splits")
    with pytest.raises(ValueError, match="a config must be a table"):
        Typed.from_dict(["not", "a", "table"], source="x.json")
