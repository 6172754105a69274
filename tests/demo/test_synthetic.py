"""Tests of the synthetic demo dataset: determinism, Karpathy JSON validity, captions that match the images."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from demo.synthetic import (
    ATTRIBUTE_CLASSES, BACKGROUND_WORDS, COLORS, COUNT_WORDS, PLURALS, SIZE_WORDS, duplicate_statistics,
    generate_demo_dataset, render_scene, sample_scene, tokenize_caption,
)

from .conftest import TINY


def _load(json_path: Path) -> dict:
    return json.loads(json_path.read_text())


def _image_files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "images").iterdir())}


def test_same_seed_gives_identical_bytes(tmp_path: Path, demo_dataset_json: Path) -> None:
    again = generate_demo_dataset(tmp_path, **TINY)
    assert again.read_bytes() == demo_dataset_json.read_bytes()
    assert _image_files(tmp_path) == _image_files(demo_dataset_json.parent)


def test_other_seed_gives_other_images(tmp_path: Path, demo_dataset_json: Path) -> None:
    other = generate_demo_dataset(tmp_path, **(TINY | {"seed": TINY["seed"] + 1}))
    assert _image_files(tmp_path) != _image_files(demo_dataset_json.parent)
    assert other.read_bytes() != demo_dataset_json.read_bytes()


def test_images_of_a_split_do_not_depend_on_other_split_sizes(tmp_path: Path, demo_dataset_json: Path) -> None:
    generate_demo_dataset(tmp_path, **(TINY | {"num_train": 5}))
    old, new = _image_files(demo_dataset_json.parent), _image_files(tmp_path)
    assert all(new[name] == old[name] for name in new if name.startswith(("test_", "val_")))
    assert len([name for name in new if name.startswith("train_")]) == 5


def test_json_is_valid_karpathy_format(demo_dataset_json: Path) -> None:
    dataset = _load(demo_dataset_json)
    assert dataset["dataset"] == "demo"
    images = dataset["images"]
    splits = [image["split"] for image in images]
    for split in ("train", "val", "test", "restval"):
        assert splits.count(split) == TINY[f"num_{split}"]
    assert [image["imgid"] for image in images] == list(range(len(images)))
    sentids = [s["sentid"] for image in images for s in image["sentences"]]
    assert sentids == list(range(len(images) * 5))
    for image in images:
        assert (demo_dataset_json.parent / image["filepath"] / image["filename"]).is_file()
        assert len(image["sentences"]) == 5
        assert len({s["raw"].lower().rstrip(".") for s in image["sentences"]}) == 5  # five different captions
        assert image["sentids"] == [s["sentid"] for s in image["sentences"]]
        for sentence in image["sentences"]:
            assert sentence["imgid"] == image["imgid"]
            assert sentence["tokens"] == tokenize_caption(sentence["raw"])
            assert all(token.islower() and token.isalpha() for token in sentence["tokens"])
            assert "".join(sentence["tokens"]) == re.sub("[^a-z]", "", sentence["raw"].lower())  # no word lost
        for name, value in image["attributes"].items():
            assert name == "relation" or value in ATTRIBUTE_CLASSES[name]


def test_captions_mention_the_attributes(demo_dataset_json: Path) -> None:
    for image in _load(demo_dataset_json)["images"]:
        attributes = image["attributes"]
        captions = [" " + " ".join(s["tokens"]) + " " for s in image["sentences"]]
        shape_words = (attributes["shape"], PLURALS[attributes["shape"]])
        for caption in captions:  # every caption names the group's colour and kind
            assert f" {attributes['color']} " in caption
            assert any(f" {word} " in caption for word in shape_words)
        everything = " ".join(captions)
        assert any(f" {word} " in everything for word in COUNT_WORDS[attributes["count"]])
        assert any(f" {word} " in everything for word in SIZE_WORDS[attributes["size"]])
        assert any(f" {word} " in everything for word in BACKGROUND_WORDS[attributes["background"]])
        if attributes["relation"] != "none":
            assert f" {attributes['second_color']} {attributes['second_shape']} " in everything
        assert " left " not in everything and " right " not in everything  # 10-crop features cannot see it


def test_images_open_as_rgb_of_the_stated_size(demo_dataset_json: Path) -> None:
    for image in _load(demo_dataset_json)["images"]:
        with Image.open(demo_dataset_json.parent / image["filepath"] / image["filename"]) as opened:
            assert opened.format == "JPEG"
            assert opened.mode == "RGB"
            assert opened.size == (TINY["image_size"], TINY["image_size"])


def _color_mask(pixels: np.ndarray, color: str) -> np.ndarray:
    """[H, W] bool: pixels close to the named colour (shape colours are jittered by at most 12 per channel)."""
    return np.abs(pixels.astype(int) - np.array(COLORS[color])).max(axis=-1) <= 16


@pytest.mark.parametrize("seed", range(12))
def test_rendered_image_matches_its_scene(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scene = sample_scene(rng)
    pixels = np.asarray(render_scene(scene, image_size=128, rng=rng))
    main = _color_mask(pixels, scene["color"])
    assert main.sum() > 50, scene  # the group's colour is drawn
    rows = np.nonzero(main)[0]
    if scene["relation"] == "none":
        band = {"top": (0, 43), "middle": (42, 86), "bottom": (85, 128)}[scene["position"]]
        assert band[0] <= rows.min() and rows.max() < band[1], scene
    elif scene["second_color"] != scene["color"]:
        other_rows = np.nonzero(_color_mask(pixels, scene["second_color"]))[0]
        above = rows.max() < other_rows.min()
        assert above if scene["relation"] == "above" else rows.min() > other_rows.max(), scene


def test_existing_dataset_is_reused_or_refused(tmp_path: Path) -> None:
    params = {"num_train": 3, "num_val": 1, "num_test": 1, "image_size": 64}
    json_path = generate_demo_dataset(tmp_path, **params)
    stamp = json_path.stat().st_mtime_ns
    assert generate_demo_dataset(tmp_path, **params) == json_path
    assert json_path.stat().st_mtime_ns == stamp  # reused, not rewritten
    with pytest.raises(ValueError, match="overwrite=True"):
        generate_demo_dataset(tmp_path, **(params | {"num_train": 2}))
    generate_demo_dataset(tmp_path, **(params | {"num_train": 2}), overwrite=True)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        "test_00000.jpg", "train_00000.jpg", "train_00001.jpg", "val_00000.jpg"]


@pytest.mark.parametrize("bad", [{"num_train": 0}, {"num_val": -1}, {"image_size": 32}])
def test_bad_arguments_are_rejected(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(ValueError):
        generate_demo_dataset(tmp_path, **bad)
    assert not (tmp_path / "dataset_demo.json").exists()


def test_duplicate_statistics_counts_shared_scenes_and_captions() -> None:
    def record(split: str, color: str, captions: list[str]) -> dict:
        sentences = [{"raw": c, "tokens": tokenize_caption(c)} for c in captions]
        return {"split": split, "attributes": {"color": color}, "sentences": sentences}

    images = [record("test", "red", ["a red circle", "one red circle"]),
              record("test", "red", ["A red circle.", "one red circle"]),
              record("test", "blue", ["a blue star", "x"]),
              record("train", "blue", ["a blue star", "x"])]
    stats = duplicate_statistics(images, "test")
    assert stats == {"images": 3, "distinct_scenes": 2, "images_sharing_scene": 2,
                     "images_sharing_caption_set": 0, "images_sharing_a_caption": 2}
