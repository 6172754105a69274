"""Ctrl-C in extract ends with an `interrupted:` line that says what to do, not an empty one."""

from pathlib import Path

import pytest
from click.testing import CliRunner

import extract.run
import pipeline


def test_ctrl_c_in_extract_says_how_to_resume(images, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    dataset, root = images

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # what Ctrl-C raises: no message

    monkeypatch.setattr(extract.run, "_extract_rows", interrupted)
    result = CliRunner().invoke(pipeline.cli, ["extract", "--dataset", str(dataset), "--image-root", str(root),
                                               "--out", str(tmp_path / "feats.h5"), "--backbone", "resnet18",
                                               "--weights", "none", "--crops", "1", "--workers", "0",
                                               "--device", "cpu"])
    assert result.exit_code == 130
    assert result.output.strip().splitlines()[-1] == "interrupted: rerun the same command to resume"
