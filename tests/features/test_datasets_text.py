"""TSV text details: a UTF-8 byte-order mark, header rows, CRLF, NEL and U+2028 inside captions, line numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from features.datasets import load_karpathy_json, load_tsv

BOM = "\ufeff"


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


@pytest.mark.parametrize("header", ["", "image_path\tcaption\tsplit\n", "Image_Path\tCaption\tSplit\r\n"])
def test_a_byte_order_mark_is_dropped_and_a_header_row_is_not_data(tmp_path, header):
    path = write(tmp_path / "d.tsv", BOM + header + "img00.jpg\ta red circle\ttrain\nimg01.jpg\ta blue star\ttest\n")
    dataset = load_tsv(path)
    assert dataset.image_paths == ["img00.jpg", "img01.jpg"] and dataset.image_splits == ["train", "test"]


def test_a_byte_order_mark_before_a_two_column_file_and_a_karpathy_json(tmp_path):
    dataset = load_tsv(write(tmp_path / "d.tsv", BOM + "image_path\tcaption\nimg00.jpg\ta red circle\n"))
    assert dataset.image_paths == ["img00.jpg"] and dataset.caption_texts == ["a red circle"]
    karpathy = write(tmp_path / "k.json", BOM + '{"images": [{"filename": "a.jpg", "split": "train", '
                                                '"sentences": [{"raw": "a dog"}]}]}')
    assert load_karpathy_json(karpathy).image_paths == ["a.jpg"]


@pytest.mark.parametrize("separator", ["\u0085", "\u2028", "\u2029", "\x0b", "\x0c", "\x1c"])
def test_unicode_line_separators_inside_a_caption_are_text_and_line_numbers_stay_true(tmp_path, separator):
    text = (f"img00.jpg\ta red{separator}circle\ttrain\r\n"
            f"img01.jpg\ta blue{separator}star\ttest\n"
            "img02.jpg\tno split column here\n")
    with pytest.raises(ValueError, match=r"d.tsv: line 3: found 2 columns but earlier rows have 3"):
        load_tsv(write(tmp_path / "d.tsv", text))
    dataset = load_tsv(write(tmp_path / "d.tsv", text.rsplit("img02", 1)[0]))
    assert dataset.caption_texts == [f"a red{separator}circle", f"a blue{separator}star"]
    assert dataset.image_splits == ["train", "test"]


def test_a_line_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_bytes(b"img00.jpg\ta red circle\ttrain\nimg01.jpg\ta bl\xffe star\ttest\n")
    with pytest.raises(ValueError, match=r"d.tsv: line 2 is not UTF-8 text"):
        load_tsv(path)
