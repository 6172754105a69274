"""--config files read safely and strictly (cli/plan.py): one `error:` line naming the file, the key or the line."""

from __future__ import annotations

import json
import time

import pytest

import pipeline
from tests.test_pipeline import invoke

BOMB = "".join(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9 if prev else ['lol'] * 9)}]\n"
               for prev, name in zip([""] + list("abcdefgh"), "abcdefghi"))


@pytest.mark.parametrize("name, text, message", [
    ("c.json", '{"train": {"overwrite": "false"}}', r"c.json: train.overwrite must be true or false .* got 'false'"),
    ("c.json", '{"train": {"overwrite": 7}}', "train.overwrite must be true or false"),
    ("c.json", '{"train": {"epochs": 2.5}}', "train.epochs must be a whole number, got 2.5"),
    ("c.yaml", "train:\n  epochs: .inf\n", "train.epochs must be a whole number, got inf"),
    ("c.json", '{"train": {"batch_size": 1e30}}', "train.batch_size must be a whole number"),
    ("c.yaml", "train:\n  train_splits: {train: 1}\n", "train.train_splits must be a list"),
    ("c.json", '{"train": {"lr": NaN}}', "train.lr must be a finite number, got nan"),
    ("c.yaml", "train:\n  loss: mh\n  epochs: [1\n", "c.yaml: invalid YAML at line 4, column 1"),
    ("c.yaml", "train:\n\tepochs: 3\n", r"c.yaml: invalid YAML at line 2, column 1: .*found character '\\t'"),
    ("c.yaml", "train:\n  epochs: !!python/object/apply:os.system ['touch pwned']\n",
     "c.yaml: invalid YAML at line 2, column 11: could not determine a constructor .*python/object/apply"),
    ("c.yaml", "a: " + "[" * 50_000 + "]" * 50_000 + "\n", "c.yaml: invalid YAML at line 1, .*nested deeper than 20"),
    ("c.json", '{"train": ' + "[" * 50_000 + "]" * 50_000 + "}", "c.json: nested too deeply"),
    ("c.json", '{"train": {"epochs": 3,}}', "c.json: invalid JSON at line 1, column 24"),
    ("c.yaml", BOMB, "c.yaml: invalid YAML at line 5, .*more than 32 aliases"),
    ("c.yaml", "train:\n  preset: [a]\n", "train.preset must be the name of a preset"),
])
def test_a_bad_config_file_is_one_line_naming_the_file_and_the_key_or_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message) as raised:
        pipeline.read_config_file(str(path))
    assert time.perf_counter() - start < 2 and "\n" not in str(raised.value) and len(str(raised.value)) < 400
    assert not (tmp_path / "pwned").exists()


def test_an_oversized_or_binary_config_file_is_refused_before_it_is_parsed(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("train:\n  store: '" + "x" * (2 << 20) + "'\n")
    with pytest.raises(ValueError, match="big.yaml is 2097171 bytes, over the 1048576"):
        pipeline.read_config_file(str(big))
    binary = tmp_path / "bin.json"
    binary.write_bytes(b'{"train": {"store": "\xff"}}')
    with pytest.raises(ValueError, match="bin.json is not UTF-8 text"):
        pipeline.read_config_file(str(binary))


def test_a_long_value_is_not_echoed_back_whole(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train": {"epochs": "9" * 100_000}}))
    with pytest.raises(ValueError, match="train.epochs must be a whole number") as raised:
        pipeline.read_config_file(str(path))
    assert len(str(raised.value)) < 300


def test_good_values_are_typed_and_the_command_line_still_wins(tmp_path):
    store = tmp_path / "s.h5"
    store.touch()
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n  margin: 0\n  overwrite: true\n  train_splits: [train]\n")
    sections = pipeline.read_config_file(str(path))
    assert sections == {"train": {"epochs": 3, "margin": 0.0, "overwrite": True, "train_splits": ("train",)}}
    (_, cfg), = pipeline.build_plan([("train", {"store": str(store), "epochs": 5})], sections)
    assert (cfg.epochs, cfg.margin, cfg.overwrite) == (5, 0.0, True)


@pytest.mark.parametrize("option, value", [("--lr", "inf"), ("--margin", "nan"), ("--lr", "-inf")])
def test_a_non_finite_number_on_the_command_line_is_one_error_line_before_anything_is_written(tmp_path, option, value):
    store = tmp_path / "s.h5"
    store.touch()
    result = invoke(["train", "--store", str(store), "--out-dir", "run", option, value], tmp_path)
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {option} must be a finite number, got {value}"
    assert not (result.workdir / "run").exists()
