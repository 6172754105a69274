"""`pip install .` ships every project module and the `vsepp` console command (wheel built offline, inspected)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.test_architecture import ROOT, project_modules


def test_the_wheel_holds_every_module_and_the_console_command(tmp_path: Path):
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "tests", "bench", "__pycache__", "build",
                                                                "*.egg-info", "runs", "demo_out"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    wheel, = (tmp_path / "dist").glob("vsepp_pipeline-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(name).decode() for name in names if name.endswith("entry_points.txt"))
    expected = {str(path.relative_to(ROOT)) for path in project_modules().values()}
    assert expected - names == set(), "modules the wheel leaves out: add their packages to pyproject.toml"
    assert not {name for name in names if name.startswith(("tests/", "bench/"))}
    assert "vsepp = pipeline:main" in entry_points
