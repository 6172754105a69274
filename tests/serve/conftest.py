"""Fixtures of the serve tests: the search page of the session's run, served in this process on a free port."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from serve.config import ServeConfig
from serve.run import load_service, server_for
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


@pytest.fixture(scope="module")
def served(seen_run: SeenRun, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The test split of the session's run, embedded at start, behind a live server (stopped after the module)."""
    cfg = ServeConfig(checkpoint=str(seen_run.checkpoint), split="test", port=0, device="cpu", k=5,
                      max_upload_mb=0.05, max_pixels=1_000_000)
    service = load_service(cfg, tmp_path_factory.mktemp("serve"))
    server, thread, url = start_server(cfg, service)
    try:
        yield Served(url, service)
    finally:
        server.should_exit = True
        thread.join(10)
        assert not thread.is_alive(), "the server did not stop"
