"""`pipeline.py serve` in a real browser (headless Debian chromium): type a sentence, get the expected image first;
bad queries show a message; an uploaded image gets captions."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from retrieval.api import VSE
from tests.see_fixtures import SeenRun, keep_screenshot
from tests.test_architecture import ROOT

STARTUP_SECONDS = 120  # torch import + model + embedding the split, on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def serve_url(seen_run: SeenRun, tmp_path: Path) -> Iterator[str]:
    """`python pipeline.py serve` of the run's test split on a free loopback port; stopped after the test."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "pipeline.py", "serve", "--checkpoint", str(seen_run.checkpoint),
                                    "--split", "test", "--port", str(port), "--device", "cpu", "--k", "6"],
                                   cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"serve exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/api/info", timeout=2) as response:
                    json.load(response)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"serve did not answer within {STARTUP_SECONDS} s:\n{log_path.read_text()}")
                time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    assert process.returncode == 0, f"SIGTERM is a normal stop of serve:\n{log_path.read_text()}"
    assert "the search page stopped" in log_path.read_text()


def clear_query(seen_run: SeenRun) -> tuple[str, str]:
    """(sentence, image path): the test caption whose own image the model ranks first by the widest margin."""
    vse = VSE.load(seen_run.checkpoint, device="cpu")
    split = vse.encode_split("test")
    sims = vse.similarity(split.image_emb, split.caption_emb)  # [N, M]
    top2 = sims.topk(2, dim=0)
    own_first = torch.from_numpy(split.caption_image_index) == top2.indices[0]
    margin = (top2.values[0] - top2.values[1]).where(own_first, torch.tensor(-1.0))
    caption = int(margin.argmax())
    assert margin[caption] > 1e-4, "the fixture's model ranks no test caption's image first by a margin"
    return split.caption_texts[caption], split.image_paths[int(top2.indices[0, caption])]


def wait_until(page, expression: str, *, seconds: float = 20) -> None:
    """Poll a JavaScript expression with page.evaluate (page.wait_for_function evaluates strings with eval, which the
    page's Content-Security-Policy rightly forbids)."""
    deadline = time.monotonic() + seconds
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {seconds} s: {expression}"
        time.sleep(0.1)


def message_after(page, sentence: str) -> str:
    """The search message the page shows for `sentence` (the previous one hidden first: waiting for a visible
    message would otherwise return the last search's at once)."""
    page.evaluate("document.getElementById('search-message').hidden = true")
    page.fill("#query", sentence)
    page.press("#query", "Enter")
    page.wait_for_selector("#search-message:not([hidden])")
    return page.text_content("#search-message")


def test_typing_a_sentence_shows_the_expected_image_first(serve_url: str, seen_run: SeenRun, chromium,
                                                          tmp_path: Path):
    sentence, expected = clear_query(seen_run)
    page = chromium.new_page(viewport={"width": 1280, "height": 1000})
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    try:
        page.goto(serve_url, wait_until="load")
        page.wait_for_selector("#gallery figure")  # the page asked the server for its gallery
        assert "8 images, 40 captions" in page.text_content("#info")
        assert "type a sentence" in message_after(page, "   ")
        assert "none of the words" in message_after(page, "zzzqx blorpt")
        page.fill("#query", sentence)
        page.press("#query", "Enter")
        page.wait_for_selector("#search-message[hidden]", state="attached")
        page.wait_for_selector("#results figure")
        assert page.get_attribute("#results figure >> nth=0", "data-path") == expected
        assert page.locator("#results figure").count() == 6
        page.set_input_files("#upload", str(seen_run.image_root / expected))
        page.wait_for_selector("#captions li")
        assert page.locator("#captions li").count() == 6
        page.click("#gallery figure >> nth=2")  # a gallery image: its own captions are marked
        picked = page.get_attribute("#gallery figure >> nth=2", "title")
        page.locator("#captions-note", has_text=picked).wait_for()
        wait_until(page, "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        screenshot = tmp_path / "serve_screenshot.png"
        page.screenshot(path=str(screenshot), full_page=True)
        keep_screenshot(screenshot)
    finally:
        page.close()
    # the two bad queries' answers (HTTP 400) are the only errors the browser's console may show
    assert [text for text in problems if "status of 400" not in text] == [] and len(problems) == 2, problems
