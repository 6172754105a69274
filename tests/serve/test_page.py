"""What a person meets on the page (headless Debian chromium against in-process servers): a small gallery, a
gallery without captions, captions with bidi overrides and long paths; screenshots kept for a look."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.see_fixtures import keep_screenshot
from tests.serve.conftest import Served, running, variant
from tests.serve.test_browser import wait_until

IN_VIEW = ("(id) => { const r = document.getElementById(id).getBoundingClientRect(); "
           "return r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight; }")


@pytest.fixture
def page(chromium, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh page whose console errors fail the test; a full-page screenshot is kept after it."""
    page = chromium.new_page(viewport={"width": 1100, "height": 800})
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    try:
        yield page
        screenshot = tmp_path / f"serve_{request.node.name}.png"
        page.screenshot(path=str(screenshot), full_page=True)
        keep_screenshot(screenshot)
    finally:
        page.close()
    assert [text for text in problems if "status of 400" not in text] == [], problems


def test_a_small_gallery_gets_a_fitting_box_a_linkable_search_and_no_broken_image(served: Served, page):
    captions = set(served.service.galleries["captions"].labels)
    with running(variant(served.service, k=12)) as url:  # 12 asked by default, 8 images in the gallery
        page.goto(url, wait_until="load")
        page.wait_for_selector("#gallery figure")
        assert page.is_hidden("#image-query") and page.locator("img[alt='the query image']").is_hidden()
        assert page.input_value("#k") == "8"
        placeholder = page.get_attribute("#query", "placeholder")
        assert placeholder.startswith("e.g. ") and placeholder[5:] in captions
        page.fill("#query", "red circle")
        page.press("#query", "Enter")
        page.wait_for_selector("#results figure")
        assert page.locator("#results figure").count() == 8 and page.is_hidden("#search-message")
        assert "?q=red+circle&k=8" in page.url
        page.fill("#k", "30")
        page.press("#query", "Enter")
        page.locator("#search-note", has_text="30 asked; the gallery holds 8 images").wait_for()
        page.goto(f"{url}/?q=blue+square", wait_until="load")  # a linked search runs on load
        page.locator("#search-note", has_text="blue square").wait_for()
        assert page.input_value("#query") == "blue square" and page.locator("#results figure").count() == 8
        wait_until(page, "Array.from(document.images).every(i => !i.getAttribute('src') || "
                         "(i.complete && i.naturalWidth > 0))")


def test_a_gallery_without_captions_offers_no_image_search_and_shows_errors_by_the_action(served: Served, page):
    images = dataclasses.replace(served.service.galleries["images"], related=None)
    with running(variant(served.service, galleries={"images": images})) as url:
        page.goto(url, wait_until="load")
        page.wait_for_selector("#gallery figure")
        assert page.is_hidden("#image-search-form") and "not offered" in page.text_content("#gallery-heading")
        assert page.get_attribute("#query", "placeholder") == ""
        page.click("#gallery figure >> nth=3")
        page.wait_for_timeout(300)
        assert page.is_hidden("#image-query") and page.is_hidden("#image-message")
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        page.fill("#query", "zzzqx")
        page.press("#query", "Enter")
        page.wait_for_selector("#search-message:not([hidden])")
        assert "none of the words" in page.text_content("#search-message")
        assert page.evaluate(IN_VIEW, "search-message") and page.is_hidden("#message")


def test_an_upload_error_is_shown_beside_the_upload(served: Served, page, tmp_path: Path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_bytes(b"plain text, not a picture")
    page.set_viewport_size({"width": 1100, "height": 400})
    page.goto(served.url, wait_until="load")
    page.wait_for_selector("#gallery figure")
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.set_input_files("#upload", str(not_an_image))
    page.wait_for_selector("#image-message:not([hidden])")
    assert "not an image this page reads" in page.text_content("#image-message")
    assert page.evaluate(IN_VIEW, "image-message") and page.is_hidden("#message")


def test_captions_with_bidi_overrides_and_long_paths_stay_in_their_place(served: Served, page):
    service = served.service
    images, captions = service.galleries["images"], service.galleries["captions"]
    evil = ["\u202e" + text for text in captions.labels]  # RIGHT-TO-LEFT OVERRIDE before every caption
    long = [f"/home/someone/Pictures/a-very-long-folder-name-of-holidays-{row}/photographs-2026/{Path(label).name}"
            for row, label in enumerate(images.labels)]
    galleries = {"images": dataclasses.replace(images, labels=long,
                                               related=[["\u202e" + t for t in known] for known in images.related]),
                 "captions": dataclasses.replace(captions, labels=evil)}
    urls = {new: service.urls[old] for new, old in zip(long, images.labels)}
    with running(variant(service, galleries=galleries, urls=urls)) as url:
        page.goto(url, wait_until="load")
        page.fill("#query", "red circle")
        page.press("#query", "Enter")
        page.wait_for_selector("#results figure")
        assert page.locator("#results figure >> nth=0 >> .path wbr").count() == 6  # a break after each "/"
        widths = page.evaluate("Array.from(document.querySelectorAll('#results .path'), p => "
                               "[p.getBoundingClientRect().width, p.closest('figure').getBoundingClientRect().width])")
        assert all(width <= figure for width, figure in widths)
        page.click("#gallery figure >> nth=1")
        page.wait_for_selector("#captions li")
        isolation = page.evaluate("Array.from(document.querySelectorAll('#captions li bdi, #results bdi'), "
                                  "b => getComputedStyle(b).unicodeBidi)")
        assert isolation and set(isolation) == {"isolate"}
        # the score is drawn left of its caption, as in every other row
        left = page.evaluate("Array.from(document.querySelectorAll('#captions li'), li => "
                             "li.querySelector('.score').getBoundingClientRect().right <= "
                             "li.querySelector('bdi').getBoundingClientRect().left + 1)")
        assert left and all(left)
