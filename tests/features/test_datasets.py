"""Tests for features.datasets: Karpathy JSON and TSV parsing and their error messages."""

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from features.datasets import (
    SPLITS, DatasetIndex, check_image_paths, hash_split, load_dataset, load_karpathy_json, load_tsv,
    validate_image_root,
)


def _image(filename: str, split: str, raws: list[str], *, filepath: str | None = None, tokens: bool = True) -> dict:
    sentences = [{"raw": raw, **({"tokens": raw.lower().split()} if tokens else {})} for raw in raws]
    entry = {"filename": filename, "split": split, "sentences": sentences}
    if filepath is not None:
        entry["filepath"] = filepath
    return entry


def _write_json(path: Path, images: list) -> Path:
    path.write_text(json.dumps({"images": images, "dataset": "coco"}), encoding="utf-8")
    return path


def test_karpathy_with_filepath_keeps_restval_and_tokens(tmp_path: Path) -> None:
    path = _write_json(tmp_path / "dataset_coco.json", [
        _image("1.jpg", "train", ["A cat.", "A small cat."], filepath="train2014"),
        _image("2.jpg", "restval", ["A dog."], filepath="val2014"),
        _image("3.jpg", "test", ["Two birds.", "Birds", "Sky", "Wings", "Fly", "Six"], filepath="val2014"),
    ])
    dataset = load_dataset(path)
    assert dataset.image_paths == ["train2014/1.jpg", "val2014/2.jpg", "val2014/3.jpg"]
    assert dataset.image_splits == ["train", "restval", "test"]
    assert dataset.caption_texts[:3] == ["A cat.", "A small cat.", "A dog."]
    assert dataset.caption_tokens[1] == ["a", "small", "cat."]
    assert dataset.caption_image_index.dtype == np.int64
    assert dataset.caption_image_index.tolist() == [0, 0, 1] + [2] * 6
    assert dataset.caption_splits[2] == "restval"


def test_karpathy_without_filepath_or_tokens(tmp_path: Path) -> None:
    path = _write_json(tmp_path / "dataset_flickr30k.json", [
        _image("1000.jpg", "val", ["One."], tokens=False), _image("1001.jpg", "train", ["Two."], tokens=False)])
    dataset = load_karpathy_json(path)
    assert dataset.image_paths == ["1000.jpg", "1001.jpg"]
    assert dataset.caption_tokens is None


@pytest.mark.parametrize("images, expected", [
    ([{"split": "train", "sentences": [{"raw": "x"}]}], "images[0]: missing key 'filename'"),
    ([_image("a.jpg", "train", ["x"]), {"filename": "b.jpg", "sentences": []}], "images[1]: missing key 'split'"),
    ([{"filename": "a.jpg", "split": "train"}], "missing key 'sentences'"),
    ([{"filename": "a.jpg", "split": "train", "sentences": [{"tokens": ["x"]}]}], "sentences[0]: missing key 'raw'"),
    ([_image("a.jpg", "training", ["x"])], "unknown split 'training'; valid splits: train, val, test, restval"),
    ([_image("a.jpg", "train", [])], "has no sentences"),
    ([], "has no images"),
    ([_image("a.jpg", "train", ["x"]), _image("a.jpg", "val", ["y"])], "already used by images[0]"),
    ([_image("a.jpg", "train", ["x"]), _image("b.jpg", "val", ["y"], tokens=False)], "'tokens' is given for some"),
    ([_image("a.jpg", "train", ["  "])], "empty caption"),
])
def test_karpathy_errors_name_the_problem(tmp_path: Path, images: list, expected: str) -> None:
    path = _write_json(tmp_path / "bad.json", images)
    with pytest.raises(ValueError) as error:
        load_karpathy_json(path)
    assert expected in str(error.value)
    assert str(path) in str(error.value)


def test_karpathy_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"images": [\n  {"filename": "a.jpg",,}\n]}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"invalid JSON at line 2, column \d+"):
        load_dataset(path)


def test_karpathy_wrong_top_level(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="'images' list"):
        load_dataset(path)


def test_missing_dataset_file_names_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_dataset(tmp_path / "nope.json")


def test_tsv_without_split_groups_images_and_hashes_splits(tmp_path: Path) -> None:
    path = tmp_path / "captions.tsv"
    path.write_text("b.png\tA red square.\na.png\tA blue circle.\nb.png\tSquare, \"red\".\n\n", encoding="utf-8")
    dataset = load_dataset(path)
    assert dataset.image_paths == ["b.png", "a.png"]
    assert dataset.caption_texts == ["A red square.", "A blue circle.", "Square, \"red\"."]
    assert dataset.caption_image_index.tolist() == [0, 1, 0]
    assert dataset.image_splits == [hash_split("b.png"), hash_split("a.png")]
    assert dataset.caption_tokens is None


def test_tsv_with_header_and_split_column(tmp_path: Path) -> None:
    path = tmp_path / "captions.tsv"
    path.write_text("image_path\tcaption\tsplit\nx/1.jpg\tOne.\ttest\nx/2.jpg\tTwo.\trestval\nx/1.jpg\tUno.\ttest\n",
                    encoding="utf-8")
    dataset = load_tsv(path)
    assert dataset.image_paths == ["x/1.jpg", "x/2.jpg"]
    assert dataset.image_splits == ["test", "restval"]
    assert dataset.caption_image_index.tolist() == [0, 1, 0]


def test_hash_split_is_stable_and_near_90_5_5() -> None:
    splits = [hash_split(f"images/{number:06d}.jpg") for number in range(4000)]
    assert hash_split("images/000007.jpg") == splits[7]
    shares = {split: splits.count(split) / len(splits) for split in ("train", "val", "test")}
    assert abs(shares["train"] - 0.90) < 0.02 and abs(shares["val"] - 0.05) < 0.015
    assert set(splits) <= set(SPLITS)


@pytest.mark.parametrize("text, expected", [
    ("a.jpg\tOne.\tdev\n", "line 1: unknown split 'dev'; valid splits: train, val, test, restval"),
    ("a.jpg\tOne.\ttrain\na.jpg\tTwo.\tval\n", "line 2: image 'a.jpg' has split 'val' but line 1 gave it 'train'"),
    ("a.jpg\tOne.\nb.jpg\n", "line 2: expected 2 or 3 tab-separated columns"),
    ("a.jpg\tOne.\na.jpg\tTwo.\ttrain\n", "line 2: found 3 columns but earlier rows have 2"),
    ("a.jpg\tOne\tx\ty\n", "found 4; a caption must not contain a tab"),
    ("a.jpg\t \n", "line 1: empty caption column"),
    ("image_path\tcaption\n\n", "has no images"),
])
def test_tsv_errors_name_the_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as error:
        load_tsv(path)
    assert expected in str(error.value)


def test_load_dataset_format_selection(tmp_path: Path) -> None:
    path = tmp_path / "captions.csv"
    path.write_text("a.jpg\tOne.\n", encoding="utf-8")
    with pytest.raises(ValueError, match="suffix '.csv'"):
        load_dataset(path)
    assert load_dataset(path, fmt="tsv").image_paths == ["a.jpg"]
    with pytest.raises(ValueError, match="unknown dataset format 'xml'"):
        load_dataset(path, fmt="xml")


def test_validate_image_root(tmp_path: Path) -> None:
    assert validate_image_root(tmp_path) == tmp_path
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        validate_image_root(tmp_path / "missing_dir")
    file_path = tmp_path / "file.txt"
    file_path.write_text("x")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        validate_image_root(file_path)


def _index(paths: list[str]) -> DatasetIndex:
    return DatasetIndex(image_paths=paths, image_splits=["train"] * len(paths), caption_texts=["x"] * len(paths),
                        caption_tokens=None, caption_image_index=np.arange(len(paths)))


def test_image_paths_must_stay_inside_the_root_after_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.jpg").write_bytes(b"x")
    (root / "inside.jpg").symlink_to(root / "a" / "x.jpg")
    (root / "out.jpg").symlink_to(tmp_path / "elsewhere.jpg")  # dangling, but pointing out
    (root / "outdir").symlink_to(tmp_path)
    (root / "alias").symlink_to(root / "a")
    missing = check_image_paths(_index(["a/x.jpg", "inside.jpg", "alias/x.jpg", "a/../a/x.jpg", "a/none.jpg",
                                        "a/x.jpg/deeper.jpg"]), root, source="d.json")
    assert missing.tolist() == [4, 5]
    for bad in ("../x.jpg", "/etc/passwd", "out.jpg", "outdir/elsewhere.jpg", "a/../../x.jpg"):
        with pytest.raises(ValueError, match=rf"d.json: image 1 path '{bad}' leads to .* outside --image-root"):
            check_image_paths(_index(["a/x.jpg", bad]), root, source="d.json")
    for bad in ("a/", "a/..", "x\x00.jpg"):
        with pytest.raises(ValueError, match="which is not a file name"):
            check_image_paths(_index([bad]), root, source="d.json")


def test_a_symlinked_root_is_fine(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "x.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "real", tmp_path / "link")
    assert check_image_paths(_index(["x.jpg"]), tmp_path / "link", source="d").tolist() == []


def test_a_hash_split_with_few_val_or_test_images_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    small = tmp_path / "small.tsv"
    small.write_text("".join(f"img{number}.jpg\tcaption {number}\n" for number in range(60)))
    with caplog.at_level(logging.WARNING):
        load_tsv(small)
    assert "the hash split leaves" in caplog.text and "fewer than 20" in caplog.text
    caplog.clear()
    large = tmp_path / "large.tsv"
    large.write_text("".join(f"img{number}.jpg\tcaption {number}\n" for number in range(1000)))
    with caplog.at_level(logging.WARNING):
        load_tsv(large)
    assert "hash split leaves" not in caplog.text
