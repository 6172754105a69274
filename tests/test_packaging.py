"""`pip install .` ships every project module and the `vsepp` console command (wheel built offline, inspected), and
the Python API works from outside the repository once the wheel is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.test_architecture import ROOT, project_modules

pytestmark = pytest.mark.slow  # builds and installs a wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built offline from a copy of the tree without tests/ and bench/."""
    folder = tmp_path_factory.mktemp("wheel")
    source = folder / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "tests", "bench", "__pycache__", "build",
                                                                "*.egg-info", "runs", "demo_out"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(folder / "dist"), str(source)], check=True, capture_output=True)
    built, = (folder / "dist").glob("vsepp_pipeline-*.whl")
    return built


def test_the_wheel_holds_every_module_and_the_console_command(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(name).decode() for name in names if name.endswith("entry_points.txt"))
    expected = {str(path.relative_to(ROOT)) for path in project_modules().values()}
    assert expected - names == set(), "modules the wheel leaves out: add their packages to pyproject.toml"
    assert {f"serve/static/{name}" for name in ("index.html", "app.js", "style.css")} <= names, "the search page"
    assert not {name for name in names if name.startswith(("tests/", "bench/"))}
    assert "vsepp = pipeline:main" in entry_points


API_SCRIPT = """
import sys
from pathlib import Path
import retrieval
from retrieval import VSE
assert Path(retrieval.__file__).is_relative_to(Path(sys.argv[2])), retrieval.__file__
vse = VSE.load(sys.argv[1], device="cpu")
emb = vse.encode_text(["a big red circle", "a small blue star"])
print(tuple(emb.shape), round(float(emb.norm(dim=1).min()), 4))
"""


def test_the_installed_api_works_from_outside_the_repository(wheel: Path, tiny_config, tmp_path: Path):
    import dataclasses

    from train.run import run_train

    checkpoint = run_train(dataclasses.replace(tiny_config, epochs=1, max_steps=1))["last"]
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    done = subprocess.run([sys.executable, "-c", API_SCRIPT, checkpoint, str(target)], cwd=outside, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(2,", "32)", "1.0"]
