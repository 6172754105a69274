"""ImageNet weights on first use: downloaded from a server the test starts on 127.0.0.1, hash-checked, offline switch."""
from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import h5py
import pytest
import torch
from torchvision import models

from extract import weights as weights_module
from extract.config import ExtractConfig
from extract.run import run_extract
from extract.weights import resolve_weights, sha256_of_file
from train.finetune import cnn as cnn_module
from train.finetune.cnn import store_weights_file


class _WeightServer:
    """Serves files from a folder on 127.0.0.1 and counts the requests it answered."""

    def __init__(self, folder: Path) -> None:
        served = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self) -> None:  # noqa: N802  (http.server's name)
                served.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        self.requests: list[str] = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[_WeightServer]:
    (tmp_path / "served").mkdir()
    running = _WeightServer(tmp_path / "served")
    yield running
    running.close()


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache with downloads allowed (the suite forbids them by default)."""
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("VSEPP_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "torch_home" / "hub" / "checkpoints"


@pytest.fixture
def published(tmp_path: Path, server: _WeightServer, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A seeded resnet18 state_dict published as torchvision publishes weights: named '<arch>-<sha256 prefix>.pth'
    on the test server; resnet18's 'default' weights point at it. Returns (file name, sha256)."""
    torch.manual_seed(5)
    staged = tmp_path / "staged.pth"
    torch.save(models.resnet18(weights=None).state_dict(), staged)
    sha256 = sha256_of_file(staged)
    name = f"resnet18-{sha256[:8]}.pth"
    staged.rename(tmp_path / "served" / name)
    monkeypatch.setattr(weights_module, "torchvision_weights_file", lambda backbone, enum_name="default": name)
    monkeypatch.setattr(weights_module, "torchvision_weights_url",
                        lambda file_name: f"{server.url}/{file_name}")
    return name, sha256


@pytest.mark.slow
def test_default_weights_are_downloaded_once_into_the_hub_cache(hub_dir: Path, server: _WeightServer,
                                                                published: tuple[str, str]) -> None:
    name, sha256 = published
    path, weights_name, found = resolve_weights("resnet18", "default")
    assert path == hub_dir / name and weights_name == name and found == sha256
    assert sorted(p.name for p in hub_dir.iterdir()) == [name]  # no temporary file left beside it
    assert resolve_weights("resnet18", "default") == (path, name, sha256)
    assert server.requests == [f"/{name}"]  # the second call read the cache


def test_offline_switches_forbid_the_download(hub_dir: Path, server: _WeightServer, published: tuple[str, str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    name, _ = published
    with pytest.raises(FileNotFoundError) as error:
        resolve_weights("resnet18", "default", offline=True)
    message = str(error.value)
    assert f"{server.url}/{name}" in message and name in message and str(hub_dir) in message
    for variable in ("VSEPP_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(variable, "1")
        with pytest.raises(FileNotFoundError, match="downloads are off"):
            resolve_weights("resnet18", "default")
        monkeypatch.delenv(variable)
    assert server.requests == [] and not hub_dir.exists()


@pytest.mark.slow
def test_a_file_whose_hash_differs_from_its_name_is_refused_and_not_kept(hub_dir: Path, server: _WeightServer,
                                                                        published: tuple[str, str],
                                                                        tmp_path: Path) -> None:
    name, _ = published
    served = tmp_path / "served" / name
    served.write_bytes(served.read_bytes()[:-10] + b"0123456789")  # a corrupted mirror
    with pytest.raises(FileNotFoundError, match=f"downloading '{name}' from .* failed .*invalid hash value"):
        resolve_weights("resnet18", "default")
    assert not hub_dir.exists() or list(hub_dir.iterdir()) == []


def test_a_failed_download_is_one_line_naming_url_file_and_folder(hub_dir: Path, server: _WeightServer,
                                                                 published: tuple[str, str], tmp_path: Path) -> None:
    name, _ = published
    (tmp_path / "served" / name).unlink()  # the server answers 404
    with pytest.raises(FileNotFoundError) as error:
        resolve_weights("resnet18", "default")
    message = str(error.value)
    assert "\n" not in message and "404" in message
    assert f"{server.url}/{name}" in message and str(hub_dir) in message and "--weights PATH" in message
    server.close()  # nothing listens any more: connection refused
    with pytest.raises(FileNotFoundError, match="URLError"):
        resolve_weights("resnet18", "default")


@pytest.mark.slow
def test_extract_fetches_the_default_weights_and_records_their_hash(hub_dir: Path, published: tuple[str, str],
                                                                    tiny_dataset: tuple[Path, Path],
                                                                    tmp_path: Path) -> None:
    dataset, root = tiny_dataset
    out = tmp_path / "store.h5"
    run_extract(ExtractConfig(dataset=str(dataset), image_root=str(root), out=str(out), backbone="resnet18",
                              weights="default", crops=1, device="cpu", workers=0))
    with h5py.File(out, "r") as h5file:
        assert (h5file.attrs["weights_name"], h5file.attrs["weights_sha256"]) == published


@pytest.mark.slow
def test_finetune_fetches_a_store_cnn_missing_from_the_cache(hub_dir: Path, published: tuple[str, str],
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name, sha256 = published
    monkeypatch.setattr(cnn_module, "torchvision_weights_url", weights_module.torchvision_weights_url)
    attrs = {"weights_name": name, "weights_sha256": sha256}
    store = tmp_path / "elsewhere" / "store.h5"
    store.parent.mkdir()
    path = store_weights_file(attrs, weights="", store_path=store)
    assert path == hub_dir / name and hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    path.unlink()
    monkeypatch.setenv("VSEPP_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="downloads are off"):
        store_weights_file(attrs, weights="", store_path=store)
