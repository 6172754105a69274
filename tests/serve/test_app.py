"""The server's answers over HTTP: searches, clear messages for bad queries and uploads, and which files it serves."""

from __future__ import annotations

import http.client
import io
import json
from urllib.parse import quote, urlsplit

import pytest
from PIL import Image

from retrieval.api import VSE
from serve.config import MAX_QUERY_CHARS, ServeConfig
from tests.see_fixtures import SeenRun
from tests.serve.conftest import Served


def request(served: Served, method: str, target: str, body: object = None, headers: dict | None = None,
            *, chunked: bool = False) -> tuple[int, dict, bytes]:
    """One raw HTTP request (the target is sent as written: no client-side ../ clean-up)."""
    parts = urlsplit(served.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request(method, target, body=body, headers=headers or {}, encode_chunked=chunked)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def get_json(served: Served, target: str) -> tuple[int, dict]:
    status, headers, body = request(served, "GET", target)
    assert headers["content-type"].startswith("application/json"), (target, headers)
    return status, json.loads(body)


@pytest.mark.slow
def test_a_sentence_finds_the_images_the_api_ranks_first(served: Served, seen_run: SeenRun):
    vse = VSE.load(seen_run.checkpoint, device="cpu")
    split = vse.encode_split("test")
    sentence = split.caption_texts[3]
    expected = split.image_paths[int(vse.similarity(split.image_emb, vse.encode_text([sentence]))[:, 0].argmax())]
    status, answer = get_json(served, f"/api/search?q={quote(sentence)}&k=4")
    assert status == 200 and answer["query"] == sentence and len(answer["results"]) == 4
    top = answer["results"][0]
    assert top["path"] == expected and top["url"] == f"/images/{quote(expected)}"
    assert [entry["rank"] for entry in answer["results"]] == [1, 2, 3, 4]
    status, headers, body = request(served, "GET", top["url"])
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert body == (seen_run.image_root / expected).read_bytes()


@pytest.mark.parametrize("target, message", [
    ("/api/search?q=", "type a sentence"),
    ("/api/search?q=%20%20%20", "type a sentence"),
    ("/api/search?q=zzzqx+blorpt", "none of the words"),
    ("/api/search?q=" + "a" * (MAX_QUERY_CHARS + 1), f"the limit is {MAX_QUERY_CHARS}"),
    ("/api/search?q=red&k=0", "k must be a whole number from 1 to 100"),
    ("/api/search?q=red&k=abc", "k must be a whole number"),
    ("/api/similar?image=99", "image must be a whole number from 0 to 7"),
    ("/api/similar", "image is missing"),
])
def test_a_bad_query_gets_a_message_not_a_traceback(served: Served, target: str, message: str):
    status, answer = get_json(served, target)
    assert status == 400 and message in answer["error"] and "Traceback" not in answer["error"]


def test_unknown_words_are_named_and_the_known_ones_searched(served: Served):
    status, answer = get_json(served, "/api/search?q=a+red+zzzqx")
    assert status == 200 and answer["unknown_words"] == ["zzzqx"]


@pytest.mark.parametrize("target", [
    "/images/../../../../etc/passwd", "/images/..%2F..%2F..%2Fetc%2Fpasswd", "/images/%2e%2e/%2e%2e/etc/passwd",
    "/images//etc/passwd", "/images/images/../../data/dataset_demo.json", "/images/dataset_demo.json",
    "/images/images/no_such.jpg", "/static/../config.py", "/static/index.html.bak", "/nowhere",
])
def test_nothing_but_gallery_images_is_served(served: Served, target: str):
    status, headers, body = request(served, "GET", target)
    assert status == 404 and json.loads(body) == {"error": "not found"}


def test_the_page_and_its_assets_carry_a_strict_content_policy(served: Served):
    status, headers, body = request(served, "GET", "/")
    assert status == 200 and b'<input id="query"' in body
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert request(served, "GET", "/static/app.js")[1]["content-type"].startswith("text/javascript")


def test_a_picked_gallery_image_finds_captions_and_marks_its_own(served: Served):
    status, page = get_json(served, "/api/gallery?limit=3")
    assert status == 200 and page["total"] == 8 and len(page["images"]) == 3
    status, answer = get_json(served, f"/api/similar?image={page['images'][1]['position']}&k=8")
    assert status == 200 and answer["query"] == page["images"][1]["path"] and len(answer["results"]) == 8
    assert all(entry["own"] == (entry["image"] == answer["query"]) for entry in answer["results"])


def jpeg(size: tuple[int, int], color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_an_upload_is_embedded_and_bad_uploads_get_messages(served: Served):
    status, headers, body = request(served, "POST", "/api/search-image?k=3", jpeg((64, 48)),
                                    {"Content-Type": "image/jpeg"})
    answer = json.loads(body)
    assert status == 200 and answer["query"] == "uploaded image (64 x 48)" and len(answer["results"]) == 3
    cases = [(b"%PDF-1.4 not an image", 400, "not an image this page reads"),
             (b"\xff\xd8\xff" + b"\x00" * 100, 400, "not an image|could not be decoded"),
             (b"", 400, "the upload is empty"),
             (b"x" * 60_000, 413, "the limit is 50,000")]
    for data, expected_status, message in cases:
        status, _, body = request(served, "POST", "/api/search-image", data, {"Content-Type": "image/png"})
        assert status == expected_status and any(part in json.loads(body)["error"] for part in message.split("|"))


def test_a_body_without_content_length_is_still_cut_at_the_limit(served: Served):
    chunks = (b"y" * 10_000 for _ in range(6))  # 60,000 bytes, chunked: the server counts as it reads
    status, _, body = request(served, "POST", "/api/search-image", chunks, {"Transfer-Encoding": "chunked"},
                              chunked=True)
    assert status == 413 and "larger than the limit" in json.loads(body)["error"]


def test_a_host_that_is_not_an_address_is_refused():
    with pytest.raises(ValueError, match="--host 'example.org' is not an IP address"):
        ServeConfig(checkpoint="x.pt", host="example.org").validate()
    with pytest.raises(ValueError, match="--checkpoint"):
        ServeConfig().validate()
    ServeConfig(checkpoint="x.pt", host="localhost").validate()
