"""Load test of the search page: N clients (threads, one keep-alive connection each) for D seconds against
`pipeline.py serve` of a 300-image gallery on 127.0.0.1, a mix of what the page asks.

Run: python bench/serve_load.py [--clients 32] [--seconds 60] [--images 300]   (setup ~1-2 min, then D s)
Setup (in a temporary folder): the demo's generated images (test split of --images images, 64 px), a random-init
resnet18 store, a 30-step model; then `serve` in a child process (its own cores: the clients' GIL is not the
server's). Each client loops, without pause, over a weighted mix: a sentence search (one of the split's captions,
k=12) 50%, a gallery image's captions 20%, a gallery page 10%, an image file 15%, an uploaded 96 x 96 JPEG 5%.
Prints per request kind: count, errors (HTTP status other than 200, or a failed connection), p50 / p99 / max
latency in ms; and the machine's load average before and after. It stops by itself after --seconds.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from bench.machine import print_machine  # noqa: E402
from demo.synthetic import generate_demo_dataset  # noqa: E402
from extract.config import ExtractConfig  # noqa: E402
from extract.run import run_extract  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.run import run_train  # noqa: E402

MIX = (("search", 50), ("similar", 20), ("gallery", 10), ("image", 15), ("upload", 5))  # kind, weight (%)


def build_gallery(folder: Path, images: int) -> Path:
    """The demo's images (`images` in the test split), their store and a short-trained model; its best.pt."""
    dataset = generate_demo_dataset(folder / "data", num_train=64, num_val=16, num_test=images, image_size=64, seed=3)
    store = folder / "store.h5"
    run_extract(ExtractConfig(dataset=str(dataset), image_root=str(dataset.parent), out=str(store),
                              backbone="resnet18", weights="none", crops=1, workers=0, device="cpu", batch_size=64))
    run_train(TrainConfig(store=str(store), out_dir=str(folder / "run"), embed_dim=64, word_dim=32,
                          vocab_min_count=1, batch_size=32, epochs=3, log_every=10, device="cpu"))
    return folder / "run" / "best.pt"


def start_server(checkpoint: Path, port: int, log: Path) -> subprocess.Popen:
    """`pipeline.py serve` of the test split on 127.0.0.1:port, answering /api/info (within 5 minutes)."""
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, "pipeline.py", "serve", "--checkpoint", str(checkpoint),
                                    "--split", "test", "--port", str(port), "--device", "cpu"],
                                   cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=2):
                return process
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"serve did not answer within 300 s:\n{log.read_text()}") from None
            time.sleep(0.5)


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


class Client(threading.Thread):
    """One keep-alive connection sending the mix until `stop`; (kind, seconds, ok) per request."""

    def __init__(self, number: int, port: int, stop: float, *, captions: list[str], images: list[dict],
                 total: int) -> None:
        super().__init__(daemon=True)
        self.port, self.stop, self.captions, self.images, self.total = port, stop, captions, images, total
        self.random = random.Random(number)
        self.upload = jpeg(number)
        self.records: list[tuple[str, float, bool]] = []

    def request(self, kind: str) -> tuple[str, str, bytes | None]:
        pick = self.random
        if kind == "search":
            return "GET", "/api/search?" + urllib.parse.urlencode({"q": pick.choice(self.captions), "k": 12}), None
        if kind == "similar":
            return "GET", f"/api/similar?image={pick.randrange(self.total)}&k=12", None
        if kind == "gallery":
            return "GET", f"/api/gallery?offset={pick.randrange(0, self.total, 48)}", None
        if kind == "image":
            return "GET", pick.choice(self.images)["url"], None
        return "POST", "/api/search-image?k=12", self.upload

    def run(self) -> None:
        kinds, weights = zip(*MIX)
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while time.monotonic() < self.stop:
            kind = self.random.choices(kinds, weights)[0]
            method, target, body = self.request(kind)
            start = time.perf_counter()
            try:
                connection.request(method, target, body=body,
                                   headers={"Content-Type": "image/jpeg"} if body else {})
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.records.append((kind, time.perf_counter() - start, ok))
        connection.close()


def get_json(port: int, target: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{target}", timeout=30) as response:
        return json.load(response)


def run_load(port: int, *, clients: int, seconds: float, captions: list[str]) -> list[tuple[str, float, bool]]:
    """Every client's records after `seconds` of load."""
    total = get_json(port, "/api/info")["images"]
    images = []
    for offset in range(0, total, 48):
        images += get_json(port, f"/api/gallery?offset={offset}")["images"]
    stop = time.monotonic() + seconds
    threads = [Client(number, port, stop, captions=captions, images=images, total=total) for number in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)  # a request times out after 30 s: every thread ends
    return [record for thread in threads for record in thread.records]


def summary(records: list[tuple[str, float, bool]], seconds: float) -> list[str]:
    """One line per request kind and one for all: count, errors, p50 / p99 / max in ms."""
    lines = [f"{'kind':<8} {'count':>7} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"]
    for kind in [kind for kind, _ in MIX] + ["all"]:
        rows = [(latency, ok) for name, latency, ok in records if kind in (name, "all")]
        if not rows:
            continue
        latency = np.asarray([value for value, _ in rows]) * 1000
        errors = sum(not ok for _, ok in rows)
        lines.append(f"{kind:<8} {len(rows):>7} {errors:>6} {np.percentile(latency, 50):>8.1f} "
                     f"{np.percentile(latency, 99):>8.1f} {latency.max():>8.1f}")
    lines.append(f"{len(records) / seconds:.1f} requests/s")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    print_machine()
    with tempfile.TemporaryDirectory(prefix="serve-load-") as folder:
        checkpoint = build_gallery(Path(folder), args.images)
        process = start_server(checkpoint, args.port, Path(folder) / "serve.log")
        try:
            from features.reader import FeatureStore
            with FeatureStore(Path(folder) / "store.h5") as store:
                captions = [store.caption_texts[row] for row in store.caption_indices(["test"])]
            print(f"load before: {open('/proc/loadavg').read().strip()}; cores: {os.cpu_count()}", flush=True)
            records = run_load(args.port, clients=args.clients, seconds=args.seconds, captions=captions)
            print(f"load after:  {open('/proc/loadavg').read().strip()}")
            print(f"{args.clients} clients, {args.seconds:g} s, {args.images}-image gallery:")
            print("\n".join(summary(records, args.seconds)))
        finally:
            process.terminate()
            process.wait(30)


if __name__ == "__main__":
    main()
