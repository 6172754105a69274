"""What the server refuses to other sites and slow or heavy clients: other host names (DNS rebinding), cross-site
POSTs, gallery files as anything but images, strict query numbers, trickling bodies, many uploads at once."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from PIL import Image

from serve.config import UPLOADS_AT_ONCE
from serve.safety import ImageFiles
from tests.serve.conftest import Served, running, variant
from tests.serve.test_app import get_json, jpeg, request


def port_of(served: Served) -> int:
    return urlsplit(served.url).port


@pytest.mark.parametrize("host", ["attacker.example:{port}", "attacker.example", "127.0.0.1.nip.io:{port}",
                                  "127.0.0.1:1", "localhost:{port}@attacker.example", ""])
def test_a_request_for_another_host_name_is_refused(served: Served, host: str):
    for target in ("/api/search?q=red+circle&k=1", "/api/info", "/"):
        status, _, body = request(served, "GET", target, headers={"Host": host.format(port=port_of(served))})
        assert status == 403 and "answers only to" in json.loads(body)["error"], (host, target)


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}",
                                  "127.0.0.1"])
def test_the_bound_host_names_are_answered(served: Served, host: str):
    status, _, _ = request(served, "GET", "/api/info", headers={"Host": host.format(port=port_of(served))})
    assert status == 200


@pytest.mark.parametrize("headers", [{"Origin": "http://attacker.example"}, {"Origin": "null"},
                                     {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                                     {"Origin": "http://127.0.0.1:1"}])
def test_a_cross_site_post_is_refused_before_its_body_is_read(served: Served, headers: dict):
    status, _, body = request(served, "POST", "/api/search-image?k=1", jpeg((32, 32)),
                              {"Content-Type": "text/plain", **headers})
    assert status == 403 and "another site" in json.loads(body)["error"]


def test_a_same_origin_post_is_answered(served: Served):
    origin = f"http://127.0.0.1:{port_of(served)}"
    status, _, body = request(served, "POST", "/api/search-image?k=1", jpeg((32, 32)),
                              {"Content-Type": "image/jpeg", "Origin": origin, "Sec-Fetch-Site": "same-origin"})
    assert status == 200 and len(json.loads(body)["results"]) == 1


@pytest.mark.parametrize("target, message", [
    ("/api/search?q=red&k=%C2%B2", "k must be a whole number"),
    ("/api/search?q=red&k=--5", "k must be a whole number"),
    ("/api/search?q=red&k=-5", "k must be a whole number"),
    ("/api/search?q=red&k=" + "9" * 5000, "k must be a whole number"),
    ("/api/search?q=red&k=%D9%A3", "k must be a whole number"),  # an Arabic-Indic three
    ("/api/gallery?offset=%C2%B9", "offset must be a whole number"),
    ("/api/similar?image=1e3", "image must be a whole number"),
])
def test_a_number_that_is_not_plain_ascii_digits_is_a_400_with_a_message(served: Served, target: str, message: str):
    status, answer = get_json(served, target)
    assert status == 400 and message in answer["error"] and len(answer["error"]) < 200


def test_k_beyond_the_gallery_lists_the_whole_gallery_with_a_note(served: Served):
    status, answer = get_json(served, "/api/search?q=red+circle&k=50")
    assert status == 200 and len(answer["results"]) == 8
    assert answer["k_note"] == "50 asked; the gallery holds 8 images, all listed"
    status, answer = get_json(served, "/api/search?q=red+circle&k=3")
    assert len(answer["results"]) == 3 and answer["k_note"] == ""
    assert get_json(served, "/api/info")[1]["k"] == 5


def gif_polyglot() -> bytes:
    """A GIF that is also JavaScript (its header `GIF89a` parses as an identifier)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(buffer, format="GIF")
    return buffer.getvalue() + b"\n;alert(document.domain)//"


@pytest.fixture(scope="module")
def tricky_files(served: Served, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A server whose gallery files are a GIF named .html/.js/.svg, a page named .jpg, and a name with a backslash."""
    root = tmp_path_factory.mktemp("tricky")
    (root / "poly.html").write_bytes(gif_polyglot())
    (root / "poly.js").write_bytes(gif_polyglot())
    (root / "poly.svg").write_bytes(gif_polyglot())
    (root / "page.jpg").write_bytes(b"<html><script>alert(1)</script></html>")
    (root / "back\\slash.jpg").write_bytes(jpeg((16, 16)))
    names = ["poly.html", "poly.js", "poly.svg", "page.jpg", "back\\slash.jpg"]
    with running(variant(served.service, files=ImageFiles(root, names))) as url:
        yield url


@pytest.mark.parametrize("name", ["poly.html", "poly.js", "poly.svg"])
def test_a_gallery_file_is_served_as_the_image_it_is_whatever_its_name(tricky_files: str, name: str):
    status, headers, body = request(Served(tricky_files, None), "GET", f"/images/{name}")
    assert status == 200 and headers["content-type"] == "image/gif" and body.startswith(b"GIF8")
    assert "sandbox" in headers["content-security-policy"] and "default-src 'none'" in headers[
        "content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"


def test_a_gallery_file_that_is_no_image_is_a_download(tricky_files: str):
    status, headers, _ = request(Served(tricky_files, None), "GET", "/images/page.jpg")
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    assert headers["content-disposition"].startswith("attachment")


def test_a_file_name_with_a_backslash_has_a_working_url(tricky_files: str):
    status, headers, _ = request(Served(tricky_files, None), "GET", "/images/" + quote("back\\slash.jpg"))
    assert status == 200 and headers["content-type"] == "image/jpeg"


@pytest.mark.slow
def test_a_trickling_body_is_cut_off_after_the_upload_timeout(served: Served):
    """1 kB of a chunked upload, then silence: the server answers 408 after --upload-timeout-s (1 s here)."""
    parts = urlsplit(served.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as client:
        client.sendall(f"POST /api/search-image HTTP/1.1\r\nHost: 127.0.0.1:{parts.port}\r\n"
                       "Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                       + b"3e8\r\n" + b"x" * 1000 + b"\r\n")
        start = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = client.recv(4096)
            if not chunk:
                break
            answer += chunk
        waited = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"did not arrive within 1 s" in answer and 0.8 < waited < 5


@pytest.mark.slow
def test_uploads_are_decoded_a_few_at_a_time(served: Served):
    """Eight uploads at once: at most UPLOADS_AT_ONCE are inside the decoder together; all are answered."""
    service = served.service
    inside, most, guard = [0], [0], threading.Lock()
    original = service.upload_search

    def counting(data: bytes, k: str) -> dict:
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.2)
        try:
            return original(data, k)
        finally:
            with guard:
                inside[0] -= 1

    statuses: list[int] = []
    service.upload_search = counting
    try:
        threads = [threading.Thread(target=lambda: statuses.append(request(
            served, "POST", "/api/search-image?k=1", jpeg((40, 40)), {"Content-Type": "image/jpeg"})[0]))
            for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        del service.upload_search
    assert statuses == [200] * 8 and most[0] == UPLOADS_AT_ONCE


def test_the_pixel_limit_fits_the_model_and_says_so(served: Served):
    from serve.config import MAX_PIXELS, ServeConfig
    assert ServeConfig().max_pixels == MAX_PIXELS == 4096 * 4096
    buffer = io.BytesIO()
    Image.new("L", (1200, 1000)).save(buffer, format="PNG")  # 1.2 MP > the fixture's 1,000,000
    status, _, body = request(served, "POST", "/api/search-image", buffer.getvalue()[:50_000],
                              {"Content-Type": "image/png"})
    assert status == 413 and "the model sees every image at 256 x 256" in json.loads(body)["error"]


def test_the_image_route_keeps_its_own_policy_and_the_page_its_own(served: Served):
    path = Path(next(iter(served.service.files.allowed)))
    _, headers, _ = request(served, "GET", "/images/" + quote(path.as_posix()))
    assert "sandbox" in headers["content-security-policy"]
    _, headers, _ = request(served, "GET", "/")
    assert "sandbox" not in headers["content-security-policy"] and "default-src 'self'" in headers[
        "content-security-policy"]
