"""Fixtures of the serve tests: the search page of the session's run, served in this process on a free port."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from serve.config import ServeConfig
from serve.run import load_service, server_for
from serve.safety import ImageFiles
from serve.service import SearchService
from tests.see_fixtures import SeenRun


@dataclass
class Served:
    """A running server: its base URL and the service behind it."""

    url: str
    service: SearchService


def start_server(cfg: ServeConfig, service: SearchService) -> tuple[object, threading.Thread, str]:
    """uvicorn on 127.0.0.1, port chosen by the system, in a thread; (server, thread, base URL)."""
    server = server_for(cfg, service)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):  # up to 10 s
        if server.started or not thread.is_alive():
            break
        thread.join(0.05)
    assert server.started, "the server did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def running(service: SearchService) -> Iterator[str]:
    """The service behind a live server on a free loopback port; its base URL, stopped on exit."""
    server, thread, url = start_server(service.cfg, service)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)
        assert not thread.is_alive(), "the server did not stop"


def variant(service: SearchService, *, galleries: dict | None = None, files: ImageFiles | None = None,
            urls: dict | None = None, **cfg_changes) -> SearchService:
    """Another service over the same model: other galleries, image files or options."""
    return SearchService(service.vse, service.galleries if galleries is None else galleries,
                         files=files or service.files, urls=service.urls if urls is None else urls,
                         cfg=dataclasses.replace(service.cfg, **cfg_changes), source=service.source)


@pytest.fixture(scope="module")
def served(seen_run: SeenRun, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The test split of the session's run, embedded at start, behind a live server (stopped after the module)."""
    cfg = ServeConfig(checkpoint=str(seen_run.checkpoint), split="test", port=0, device="cpu", k=5,
                      max_upload_mb=0.05, max_pixels=1_000_000, upload_timeout_s=1.0)
    service = load_service(cfg, tmp_path_factory.mktemp("serve"))
    with running(service) as url:
        yield Served(url, service)
