"""serve.safety: which image paths are served (never a ../ path or a link out of the root) and which uploads decode."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from serve.safety import ImageFiles, QueryError, decode_upload, relative_inside


def png_bytes(size: tuple[int, int] = (8, 6), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root" / "imgs").mkdir(parents=True)
    (tmp_path / "root" / "imgs" / "a.png").write_bytes(png_bytes())
    (tmp_path / "root" / "notes.txt").write_text("not in the gallery")
    (tmp_path / "secret.png").write_bytes(png_bytes())
    (tmp_path / "root" / "imgs" / "escape.png").symlink_to(tmp_path / "secret.png")
    return tmp_path / "root"


def test_only_gallery_files_inside_the_root_are_served(root: Path):
    files = ImageFiles(root, ["imgs/a.png", "imgs/escape.png", "notes.txt"])
    assert files.file("imgs/a.png") == (root / "imgs" / "a.png").resolve()
    refused = ["../secret.png", "imgs/../../secret.png", "/etc/passwd", str(root / "imgs" / "a.png"), "imgs/b.png",
               "imgs/escape.png", "imgs\\..\\..\\secret.png", "imgs/a.png\x00.txt", "", "."]
    assert [path for path in refused if files.file(path) is not None] == []
    assert ImageFiles(root, ["imgs/a.png"]).file("notes.txt") is None  # a file of the root, but not of the gallery


def test_relative_inside_resolves_links_before_deciding(root: Path):
    assert relative_inside(root, root / "imgs" / "a.png") == "imgs/a.png"
    assert relative_inside(root, root / "imgs" / "escape.png") is None
    assert relative_inside(root, root / ".." / "secret.png") is None


def test_uploads_decode_to_rgb_within_the_pixel_limit():
    image = decode_upload(png_bytes((20, 10), "RGBA"), max_pixels=200)
    assert image.mode == "RGB" and image.size == (20, 10)
    with pytest.raises(QueryError, match="20 x 10 = 200 pixels; the limit is 199") as error:
        decode_upload(png_bytes((20, 10)), max_pixels=199)
    assert error.value.status == 413


@pytest.mark.parametrize("data, message", [
    (b"", "the upload is empty"),
    (b"just some text, not an image", "not an image this page reads"),
    (png_bytes((64, 64))[:60], "could not be decoded|not an image"),  # truncated
])
def test_what_is_not_a_readable_image_is_refused_with_a_message(data: bytes, message: str):
    with pytest.raises(QueryError, match=message) as error:
        decode_upload(data, max_pixels=10_000)
    assert error.value.status == 400


def test_a_format_outside_the_photo_formats_is_refused():
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="TIFF")
    with pytest.raises(QueryError, match="not an image this page reads"):
        decode_upload(buffer.getvalue(), max_pixels=10_000)


def test_a_wildcard_bind_answers_to_its_addresses_but_never_to_a_host_name():
    from serve.safety import host_allowed, host_names
    names = host_names("0.0.0.0")
    assert host_allowed("192.168.1.5:8000", names=names, port=8000)
    assert host_allowed("[fe80::1]:8000", names=names, port=8000)
    assert not host_allowed("attacker.example:8000", names=names, port=8000)
    assert not host_allowed("192.168.1.5:8000", names=host_names("127.0.0.1"), port=8000)
    assert host_allowed("10.0.0.7:8000", names=host_names("10.0.0.7"), port=8000)
