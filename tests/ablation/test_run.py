"""Tests of ablation/ on the tiny synthetic store: grid end to end, checks before runs, resume."""

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import ablation.run as ablation
import pipeline
from ablation.config import AblationConfig, plan_grid
from ablation.run import run_ablation


@pytest.fixture
def tiny_ablation(store_path: Path, tmp_path: Path) -> AblationConfig:
    """A 2 x 1 grid (sh, mh-warmup on 1c) of tiny models, 3 steps each (2 per epoch at batch 96)."""
    return AblationConfig(store=str(store_path), out_dir=str(tmp_path / "grid"), losses=("sh", "mh-warmup"),
                          image_features=("1c",), text_pools=("last",), warmup_epochs=1, epochs=2,
                          batch_size=96, embed_dim=16, word_dim=8, lr=2e-3, max_steps=3, device="cpu")


def test_grid_runs_end_to_end_and_writes_both_tables(tiny_ablation: AblationConfig, capsys):
    summary = run_ablation(tiny_ablation)
    out_dir = Path(tiny_ablation.out_dir)
    report = json.loads((out_dir / "ablation.json").read_text())
    names = ["sh_1c_last", "mh-warmup_1c_last"]
    assert [row["name"] for row in report["runs"]] == [row["name"] for row in summary["runs"]] == names
    assert summary["reused"] == []
    header = report["header"]
    assert (header["seed"], header["epochs"], header["batch_size"], header["crops"]) == (0, 2, 96, 10)
    assert header["torch_version"] and header["cpu_count"] >= 1
    for row in report["runs"]:
        assert row["steps"] == 3 and row["seconds"] > 0 and row["sessions"] == 1
        assert row["num_test_images"] == 8 and 0 <= row["i2t_r1"] <= row["i2t_r5"] <= row["i2t_r10"] <= 100
        assert row["rsum"] == pytest.approx(sum(row[k] for k in ablation.METRIC_KEYS[:6]))
        assert (Path(row["out_dir"]) / "best.pt").is_file()
    warmup_config = report["runs"][1]["config"]
    assert (warmup_config["loss"], warmup_config["warmup_epochs"], warmup_config["lr_decay_epochs"]) == ("mh", 1, 1)
    markdown = (out_dir / "ablation.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table] == ["| run", "| sh_1c_last", "| mh-warmup_1c_last"]
    assert "batch size 96" in markdown and "torch " in markdown
    assert table[1] in capsys.readouterr().out


def test_grid_order_and_image_feature_mapping(tiny_ablation: AblationConfig):
    cfg = dataclasses.replace(tiny_ablation, losses=("group", "sh"), image_features=("10c-adaptive", "1c", "10c"),
                              text_pools=("mean", "last"))
    cells = plan_grid(cfg)
    assert [cell.name for cell in cells[:3]] == ["group_10c-adaptive_mean", "group_10c-adaptive_last",
                                                 "group_1c_mean"]
    assert len(cells) == 12 and cells[-1].name == "sh_10c_last"
    modes = {cell.image_features: (cell.train_config.feature_mode, cell.train_config.image_pool) for cell in cells}
    assert modes == {"1c": ("1c", "mean"), "10c": ("10c", "mean"), "10c-adaptive": ("10c-set", "adaptive")}
    assert {cell.train_config.seed for cell in cells} == {0}
    assert {cell.train_config.warmup_epochs for cell in cells} == {0}


def test_ten_crop_cell_on_a_one_crop_store_fails_before_any_run(tiny_ablation: AblationConfig, make_train_store,
                                                               monkeypatch):
    monkeypatch.setattr(ablation, "run_train", lambda cfg: pytest.fail("a run started"))
    cfg = dataclasses.replace(tiny_ablation, store=str(make_train_store("one.h5", crops=1)),
                              image_features=("1c", "10c-adaptive"))
    with pytest.raises(ValueError, match=r"cell sh_10c-adaptive_last: .*holds 1c \(a CNN store, 1 crop per "
                                         r"image\); use --image-features 1c$"):
        run_ablation(cfg)
    assert not Path(cfg.out_dir).exists()


@pytest.mark.parametrize("changes,message", [
    ({"losses": ()}, "--losses is empty"),
    ({"text_pools": ("last", "last")}, "repeats a value"),
    ({"losses": ("hinge",)}, r"--losses hinge is not one of sh, mh, mh-warmup, group, lseh, infonce"),
    ({"warmup_epochs": 2}, r"mh-warmup needs 0 < --warmup-epochs \(2\) < --epochs \(2\)"),
    ({"split": "val"}, "evaluate on a held-out split"),
    ({"batch_size": 0}, "--batch-size must be >= 1"),
])
def test_bad_options_fail_before_any_run(tiny_ablation: AblationConfig, monkeypatch, changes: dict, message: str):
    monkeypatch.setattr(ablation, "run_train", lambda cfg: pytest.fail("a run started"))
    with pytest.raises(ValueError, match=message):
        run_ablation(dataclasses.replace(tiny_ablation, **changes))


def test_rerun_skips_finished_runs_and_resumes_an_interrupted_one(tiny_ablation: AblationConfig, monkeypatch):
    real_eval = ablation.run_eval

    def crash_on_second_run(cfg):
        if "mh-warmup" in cfg.checkpoint:
            raise KeyboardInterrupt  # as if Ctrl-C hit after the second run's training
        return real_eval(cfg)

    monkeypatch.setattr(ablation, "run_eval", crash_on_second_run)
    with pytest.raises(KeyboardInterrupt):
        run_ablation(tiny_ablation)
    out_dir = Path(tiny_ablation.out_dir)
    first = json.loads((out_dir / "sh_1c_last" / ablation.RESULT_FILE).read_text())
    assert [row["name"] for row in json.loads((out_dir / "ablation.json").read_text())["runs"]] == ["sh_1c_last"]
    assert not (out_dir / "mh-warmup_1c_last" / ablation.RESULT_FILE).exists()

    monkeypatch.setattr(ablation, "run_eval", real_eval)
    trained = []
    real_train = ablation.run_train
    monkeypatch.setattr(ablation, "run_train", lambda cfg: trained.append(cfg) or real_train(cfg))
    summary = run_ablation(tiny_ablation)
    assert summary["reused"] == ["sh_1c_last"]
    assert [Path(cfg.out_dir).name for cfg in trained] == ["mh-warmup_1c_last"]
    assert trained[0].resume.endswith("mh-warmup_1c_last/last.pt")  # continued, not restarted
    assert summary["runs"][0] == first
    assert summary["runs"][1]["sessions"] == 2 and summary["runs"][1]["steps"] == 3


def test_rerun_with_other_options_fails_before_any_run(tiny_ablation: AblationConfig, monkeypatch):
    run_ablation(dataclasses.replace(tiny_ablation, losses=("sh",)))
    monkeypatch.setattr(ablation, "run_train", lambda cfg: pytest.fail("a run started"))
    with pytest.raises(ValueError, match=r"cell sh_1c_last: .* \(margin: 0.2 -> 0.3\); use a new --out-dir"):
        run_ablation(dataclasses.replace(tiny_ablation, margin=0.3))


def test_every_field_documents_itself_for_the_generated_cli():
    for spec in dataclasses.fields(AblationConfig):
        assert spec.metadata.get("help"), spec.name
        choices = spec.metadata.get("choices")
        if spec.name in ("losses", "image_features", "text_pools", "split", "val_split", "device"):
            default = spec.default if isinstance(spec.default, tuple) else (spec.default,)
            assert choices and set(default) <= set(choices), spec.name
    saved = json.loads(json.dumps(AblationConfig(store="s.h5").to_dict()))
    assert AblationConfig(**saved) == AblationConfig(store="s.h5")  # JSON lists come back as tuples


def test_cli_builds_the_config_from_comma_lists(tiny_ablation: AblationConfig, monkeypatch):
    seen = []
    monkeypatch.setitem(pipeline.STAGES, "ablate", dataclasses.replace(pipeline.STAGES["ablate"], run=seen.append))
    args = ["ablate", "--store", tiny_ablation.store, "--out-dir", tiny_ablation.out_dir, "--losses", "sh,group",
            "--image-features", "1c,10c", "--text-pools", "last,gpo", "--epochs", "3"]
    result = CliRunner().invoke(pipeline.cli, args)
    assert result.exit_code == 0, result.output
    assert (seen[0].losses, seen[0].image_features, seen[0].text_pools) == (("sh", "group"), ("1c", "10c"),
                                                                            ("last", "gpo"))
    assert seen[0].epochs == 3
    bad = CliRunner().invoke(pipeline.cli, args[:6] + ["--image-features", "1c,5c"])
    assert bad.exit_code == 2 and "5c" in bad.output
