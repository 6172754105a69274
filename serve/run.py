"""`pipeline.py serve`: embed the gallery once (or read an encode file), then serve the search page until Ctrl-C."""

from __future__ import annotations

import contextlib
import logging
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from retrieval.encode import EncodeConfig, run_encode
from serve.config import LOOPBACK, ServeConfig
from serve.service import SearchService

if TYPE_CHECKING:
    import uvicorn

logger = logging.getLogger(__name__)


def embed_split(cfg: ServeConfig, folder: Path) -> Path:
    """The store split's embeddings, written once by the encode stage (with its progress) into `folder`."""
    out = folder / f"{cfg.split}.h5"
    logger.info("embedding the %s split once, before the page starts", cfg.split)
    run_encode(EncodeConfig(checkpoint=cfg.checkpoint, out=str(out), split=cfg.split, store=cfg.store,
                            image_root=cfg.image_root, weights=cfg.weights, batch_size=cfg.batch_size,
                            workers=cfg.workers, device=cfg.device))
    return out


def load_service(cfg: ServeConfig, folder: Path) -> SearchService:
    """The model and the gallery in memory: from --embeddings, or the --split embedded into `folder`."""
    start = time.perf_counter()
    embeddings = Path(cfg.embeddings) if cfg.embeddings else embed_split(cfg, folder)
    service = SearchService.load(cfg, embeddings)
    info = service.info()
    logger.info("gallery ready in %.1f s: %d images, %d captions (%s)", time.perf_counter() - start, info["images"],
                info["captions"], info["gallery"])
    return service


def server_for(cfg: ServeConfig, service: SearchService) -> "uvicorn.Server":
    """A uvicorn server of the page (logging through this process's handlers)."""
    import uvicorn  # the web stack is imported only to serve: every other command starts without it

    from serve.app import build_app

    if cfg.host not in (LOOPBACK, "localhost", "::1"):
        logger.warning("binding %s: anyone who can reach this machine on port %d can use the page", cfg.host, cfg.port)
    return uvicorn.Server(uvicorn.Config(build_app(service), host=cfg.host, port=cfg.port, log_config=None,
                                         access_log=False, timeout_graceful_shutdown=5))


def run_serve(cfg: ServeConfig) -> None:
    """Serve the search page on cfg.host:cfg.port until Ctrl-C or SIGTERM, both a normal stop."""
    cfg.validate()
    with _stop_signals():
        try:
            with tempfile.TemporaryDirectory(prefix="vsepp-serve-") as folder:
                service = load_service(cfg, Path(folder))
                # Each request's forward pass on one thread: concurrency comes from the requests, and a 2-thread
                # forward among busy threads spins (an upload took 1.8-2.6 s with 2 threads, 0.17 s with 1, on 2
                # loaded cores; bench/serve_load.py).
                torch.set_num_threads(1)
                server = server_for(cfg, service)
                host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
                print(f"search page: http://{host}:{cfg.port}/ (Ctrl-C stops it)", flush=True)
                server.run()  # uvicorn shuts down gracefully, then re-raises the signal it caught
        except KeyboardInterrupt:
            pass
    logger.info("the search page stopped")


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so the temporary embeddings are removed either way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
