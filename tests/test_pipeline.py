"""The Click CLI: chained stages on tiny generated data, validation before any stage, config files, --help."""

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import pipeline
from cli.options import make_command

TINY_DATA = ["demo-data", "--num-train", "10", "--num-val", "4", "--num-test", "4", "--image-size", "64"]
TINY_EXTRACT = ["extract", "--backbone", "resnet18", "--weights", "none", "--crops", "10", "--workers", "0",
                "--batch-size", "6"]
TINY_TRAIN = ["--embed-dim", "16", "--word-dim", "8", "--batch-size", "8", "--epochs", "2", "--workers", "0"]


def invoke(args: list[str], cwd: Path):
    """Run the CLI in `cwd` (relative default paths land there) and return the click Result."""
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=cwd):
        result = runner.invoke(pipeline.cli, ["--log-level", "WARNING", *args], catch_exceptions=False)
        result.workdir = Path.cwd()
    return result


@pytest.mark.slow
def test_chain_runs_every_stage_and_passes_artifacts_along(tmp_path):
    args = [*TINY_DATA, "--out-dir", "data", *TINY_EXTRACT, "--out", "feats.h5",
            "train", "--out-dir", "run", "--feature-mode", "10c", *TINY_TRAIN,
            "finetune", "--out-dir", "ft", "--epochs", "1", "--max-steps", "1", "--batch-size", "4",
            "--unfreeze", "1", "--workers", "0",
            "eval", "--protocol", "all"]
    result = invoke(args, tmp_path)
    assert result.exit_code == 0, result.output
    work = result.workdir
    for artifact in ("data/dataset_demo.json", "feats.h5", "feats.h5.extract.json", "run/best.pt",
                     "run/config.json", "ft/best.pt", "ft/config.json", "ft/eval-test.json"):
        assert (work / artifact).is_file(), artifact
    finetune_cfg = json.loads((work / "ft/config.json").read_text())
    assert finetune_cfg["checkpoint"] == str(work / "run/best.pt") and finetune_cfg["store"] == str(work / "feats.h5")
    assert json.loads((work / "run/config.json").read_text())["store"] == str(work / "feats.h5")  # absolute paths
    results = json.loads((work / "ft/eval-test.json").read_text())
    assert results["kind"] == "finetune" and list(results["protocols"]) == ["all-images"]
    assert "i2t (caption retrieval)" in result.output


@pytest.mark.parametrize("bad_stage, message", [
    (["train", "--out-dir", "run", "--batch-size", "0"], "batch"),
    (["train", "--out-dir", "run", "--train-splits", "train,holdout"], "holdout"),
    (["eval", "--checkpoint", "missing.pt"], "missing.pt"),
])
def test_a_bad_option_stops_before_any_stage_runs(tmp_path, bad_stage, message):
    result = invoke([*TINY_DATA, "--out-dir", "data", *TINY_EXTRACT, "--out", "feats.h5", *bad_stage], tmp_path)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (result.workdir / "data").exists() and not (result.workdir / "feats.h5").exists()


def test_unknown_choice_is_a_usage_error(tmp_path):
    result = invoke(["extract", "--dataset", "d.json", "--image-root", ".", "--out", "f.h5",
                     "--backbone", "alexnet"], tmp_path)
    assert result.exit_code == 2 and "alexnet" in result.output


def test_missing_required_option_names_the_flag(tmp_path):
    result = invoke(["train", "--out-dir", "run"], tmp_path)
    assert result.exit_code == 2 and "--store" in result.output


def test_config_file_supplies_options_and_command_line_wins(tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text("demo-data:\n  num_train: 3\n  num_val: 1\n  num_test: 1\n  image_size: 64\n"
                      "  out_dir: from_file\n")
    result = invoke(["--config", str(config), "demo-data", "--num-test", "2"], tmp_path)
    assert result.exit_code == 0, result.output
    dataset = json.loads((result.workdir / "from_file" / "dataset_demo.json").read_text())
    splits = [image["split"] for image in dataset["images"]]
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (3, 1, 2)


def test_config_file_with_an_unknown_option_is_rejected(tmp_path):
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"train": {"epochs": 3, "learning_rate": 0.1}}))
    result = invoke(["--config", str(config), "train", "--store", str(config)], tmp_path)
    assert result.exit_code == 2 and "learning_rate" in result.output


def test_preset_sets_fields_and_explicit_options_win(tmp_path):
    store = tmp_path / "s.h5"
    store.touch()
    plan = pipeline.build_plan([("train", {"store": str(store), "preset": "order++", "margin": 0.1})], {})
    (_, cfg), = plan
    assert cfg.similarity == "order" and cfg.abs_embeddings and cfg.margin == 0.1 and cfg.loss == "mh"


@pytest.mark.parametrize("stage", sorted(pipeline.STAGES))
def test_every_option_says_its_default_or_that_it_is_required(stage):
    spec = pipeline.STAGES[stage]
    command = make_command(stage, spec)
    options = {param.name: param for param in command.params}
    for config_field in dataclasses.fields(spec.config):
        if config_field.name in spec.hidden:
            assert config_field.name not in options
            continue
        help_text = options[config_field.name].help
        default = (config_field.default_factory() if config_field.default_factory is not dataclasses.MISSING
                   else config_field.default)
        if config_field.metadata.get("required"):
            assert help_text.endswith("  [required]"), config_field.name
        elif default not in ("", None, ()):
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            assert help_text.endswith(f"  [default: {shown}]"), config_field.name
    assert CliRunner().invoke(pipeline.cli, [stage, "--help"]).exit_code == 0


def test_boolean_options_read_naturally():
    command = make_command("train", pipeline.STAGES["train"])
    image_norm = next(param for param in command.params if param.name == "image_norm")
    assert image_norm.opts == ["--image-norm"] and image_norm.secondary_opts == ["--no-image-norm"]


def test_config_file_keys_may_be_spelled_as_options_and_typos_get_a_suggestion(tmp_path):
    store = tmp_path / "s.h5"
    store.touch()
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"train": {"embed-dim": 64, "--word-dim": 32}}))
    (_, cfg), = pipeline.build_plan([("train", {"store": str(store)})], pipeline.read_config_file(str(config)))
    assert (cfg.embed_dim, cfg.word_dim) == (64, 32)
    with pytest.raises(ValueError, match="'embed_dimm' \\(did you mean 'embed_dim'\\?\\)"):
        pipeline.build_plan([("train", {"store": str(store)})], {"train": {"embed_dimm": 3}})


def test_finetune_hides_the_options_it_takes_from_the_checkpoint():
    result = CliRunner().invoke(pipeline.cli, ["finetune", "--help"])
    assert "--unfreeze" in result.output and "--text-pool" not in result.output


def test_bad_dataset_json_exits_2_and_writes_nothing(tmp_path):
    (tmp_path / "images").mkdir()
    bad = tmp_path / "dataset.json"
    bad.write_text('{"images": [{"filename": "a.jpg", "split": "train", "sentences": [{"raw": "x"}]},')
    result = invoke(["extract", "--dataset", str(bad), "--image-root", str(tmp_path / "images"),
                     "--out", str(tmp_path / "feats.h5"), "--backbone", "resnet18", "--weights", "none"], tmp_path)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and "dataset.json" in result.output
    assert not list(tmp_path.glob("feats.h5*"))
