"""Weight files: resolution without downloads, sha256, strict loading with named key errors."""
from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import pytest
import torch
from torchvision import models

from extract.backbones import build_backbone
from extract.config import ExtractConfig
from extract.run import run_extract
from extract.backbones import load_state_dict_strict
from extract.weights import resolve_weights, sha256_of_file


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache: TORCH_HOME points into tmp_path; returns its checkpoints folder."""
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


@pytest.fixture
def resnet18_file(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A seeded random resnet18 saved as a state_dict file; returns (path, model)."""
    torch.manual_seed(11)
    model = models.resnet18(weights=None).eval()
    path = tmp_path / "my_resnet18.pth"
    torch.save(model.state_dict(), path)
    return path, model


def test_none_means_random_init() -> None:
    assert resolve_weights("resnet18", "none") == (None, "none", "")


def test_missing_default_names_file_and_folder(hub_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="resnet18-f37072fd.pth") as error:
        resolve_weights("resnet18", "default")
    assert str(hub_dir) in str(error.value) and "--weights PATH" in str(error.value)
    with pytest.raises(FileNotFoundError, match="resnet152-394f9c45.pth"):
        resolve_weights("resnet152", "IMAGENET1K_V1")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        resolve_weights("resnet18", "nope.pth")


def test_hub_file_with_wrong_hash_is_rejected(hub_dir: Path, resnet18_file: tuple[Path, torch.nn.Module]) -> None:
    hub_dir.mkdir(parents=True)
    (hub_dir / "resnet18-f37072fd.pth").write_bytes(resnet18_file[0].read_bytes())
    with pytest.raises(ValueError, match="corrupt or incomplete"):
        resolve_weights("resnet18", "default")


@pytest.mark.slow
def test_path_weights_are_hashed_and_loaded(resnet18_file: tuple[Path, torch.nn.Module]) -> None:
    path, model = resnet18_file
    resolved, name, sha256 = resolve_weights("resnet18", str(path))
    assert resolved == path.resolve() and name == "my_resnet18.pth"
    assert sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == sha256_of_file(path, chunk_bytes=4096)
    backbone = build_backbone("resnet18", resolved, seed=0)
    images = torch.randn(2, 3, 224, 224)
    model.fc = torch.nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(backbone(images), model(images), atol=1e-6, rtol=0)


@pytest.mark.slow
def test_mismatched_file_names_keys(tmp_path: Path, resnet18_file: tuple[Path, torch.nn.Module]) -> None:
    state = resnet18_file[1].state_dict()
    state["extra.weight"] = state.pop("fc.weight")
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing keys \['fc.weight'\].*unexpected keys \['extra.weight'\]"):
        load_state_dict_strict(models.resnet18(weights=None), tmp_path / "bad.pth")
    torch.save({"model": state}, tmp_path / "wrapped.pth")
    with pytest.raises(ValueError, match="not a plain state_dict"):
        build_backbone("resnet18", tmp_path / "wrapped.pth")


def test_run_records_weights_sha256(tiny_dataset: tuple[Path, Path], tmp_path: Path,
                                    resnet18_file: tuple[Path, torch.nn.Module]) -> None:
    dataset, root = tiny_dataset
    out = tmp_path / "store.h5"
    run_extract(ExtractConfig(dataset=str(dataset), image_root=str(root), out=str(out), backbone="resnet18",
                              weights=str(resnet18_file[0]), device="cpu", workers=0, max_batches=0))
    with h5py.File(out, "r") as h5file:
        assert h5file.attrs["weights_name"] == "my_resnet18.pth"
        assert h5file.attrs["weights_sha256"] == sha256_of_file(resnet18_file[0])


class _Exploit:
    """Unpickling it would create a file: the proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_weights_file_holding_pickled_code_is_an_error_and_the_code_never_runs(tmp_path: Path) -> None:
    import pickle

    marker = tmp_path / "pwned"
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"fc.weight": _Exploit(marker)}))
    torch.save({"fc.weight": _Exploit(marker)}, tmp_path / "evil_zip.pth")
    assert not marker.exists()
    for name in ("evil.pth", "evil_zip.pth"):
        with pytest.raises(ValueError, match="cannot be read as a state_dict of tensors"):
            build_backbone("resnet18", tmp_path / name)
    assert not marker.exists()
