"""`pipeline.py report`: the folder it writes for a run, for a cell of an ablation grid and for the grid itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import pipeline
from report.config import ReportConfig
from report.run import run_report
from tests.see_fixtures import SeenRun


def linked_files(index: Path) -> list[str]:
    """Every src of index.html, which must all be relative paths of files beside it."""
    return re.findall(r'src="([^"]+)"', index.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_a_run_s_report_holds_every_panel_and_every_file_it_links(seen_run: SeenRun, grid: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture):
    result = run_report(ReportConfig(run_dir=str(seen_run.run_dir), out_dir=str(tmp_path / "report"),
                                     ablation=str(grid / "ablation.json"), device="cpu"))
    index = Path(result["index"])
    assert index == tmp_path / "report" / "index.html"
    assert f"report: {index}" in capsys.readouterr().out
    html = index.read_text(encoding="utf-8")
    for section in ("training", "recall", "config", "captions", "images", "worst", "ablation"):
        assert f'<section id="{section}">' in html, section
    sources = linked_files(index)
    assert {"training.png", "recall_at_k.png", "ablation.png"} <= set(sources)
    for source in sources:
        assert not source.startswith(("/", "http")) and (index.parent / source).is_file(), source
        with Image.open(index.parent / source) as image:
            assert min(image.size) > 0
    # 8 sampled captions and 8 images, then the worst queries of each direction (those not ranked first)
    assert 8 * 2 + 2 <= html.count('class="query"') <= 8 * 4
    assert "&#10003; right image" in html and "sh_1c_last" in html
    assert "<script" not in html


@pytest.mark.slow
def test_the_report_of_a_grid_cell_charts_its_grid_and_of_the_grid_only_the_chart(grid: Path):
    cell = run_report(ReportConfig(run_dir=str(grid / "mh_1c_last"), device="cpu", examples=2))
    html = Path(cell["index"]).read_text(encoding="utf-8")
    assert '<section id="ablation">' in html and '<section id="training">' in html
    only = Path(run_report(ReportConfig(run_dir=str(grid), device="cpu"))["index"])
    html = only.read_text(encoding="utf-8")
    assert '<section id="ablation">' in html and '<section id="recall">' not in html
    assert linked_files(only) == ["ablation.png"]


@pytest.mark.slow
def test_a_folder_without_a_model_is_refused_with_the_fix(tmp_path: Path, seen_run: SeenRun):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*best.pt.*--checkpoint"):
        run_report(ReportConfig(run_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="--run-dir"):
        ReportConfig().validate()
    result = CliRunner().invoke(pipeline.cli, ["report", "--run-dir", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output


@pytest.mark.slow
def test_the_cli_writes_the_report_of_the_checkpoint_s_folder(seen_run: SeenRun, tmp_path: Path):
    out = tmp_path / "r"
    result = CliRunner().invoke(pipeline.cli, ["--log-level", "WARNING", "report", "--checkpoint",
                                               str(seen_run.checkpoint), "--out-dir", str(out), "--examples", "2",
                                               "--max-k", "10", "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"report: {out / 'index.html'}" in result.output
    assert (out / "recall_at_k.png").is_file() and len(list((out / "thumbs").glob("*.jpg"))) >= 2


@pytest.mark.slow
def test_the_run_folder_may_be_given_as_the_argument_with_options_after_it(seen_run: SeenRun, tmp_path: Path):
    out = tmp_path / "r"
    result = CliRunner().invoke(pipeline.cli, ["--log-level", "WARNING", "report", str(seen_run.run_dir),
                                               "--out-dir", str(out), "--examples", "2", "--max-k", "10",
                                               "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (out / "index.html").is_file()


@pytest.mark.parametrize("args, message", [
    (["report", "RUN", "--run-dir", "RUN"], "RUN_DIR given twice (as an argument and as --run-dir)"),
    (["report", "eval"], "'eval' is a stage, not a RUN_DIR: give --run-dir before chaining another stage"),
])
def test_the_run_folder_argument_is_refused_twice_or_as_a_stage_name(args: list[str], message: str):
    result = CliRunner().invoke(pipeline.cli, args)
    assert result.exit_code == 2 and message in result.output
