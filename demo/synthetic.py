"""Synthetic image-caption dataset for the demo: coloured shapes on varied backgrounds, Karpathy JSON format."""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from common.files import atomic_write_text

logger = logging.getLogger(__name__)

DATASET_NAME = "demo"
JSON_NAME = "dataset_demo.json"
IMAGE_DIR = "images"
CAPTIONS_PER_IMAGE = 5
JPEG_QUALITY = 90
SUPERSAMPLE = 2  # shapes are drawn at 2x and downsampled, for anti-aliased edges

# Well separated hues; each image jitters every channel by up to COLOR_JITTER.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 90, 220),
    "yellow": (240, 210, 30),
    "purple": (140, 60, 180),
    "orange": (245, 135, 20),
}
COLOR_JITTER = 12
SHAPES = ("circle", "square", "triangle", "star", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", "cross": "crosses"}
SIZES = ("small", "large")
SIZE_DIAMETER_FRACTION = {"small": (0.12, 0.165), "large": (0.24, 0.30)}  # of the image side
BACKGROUNDS = ("white", "grey", "black", "gradient", "noisy")
PLAIN_BACKGROUNDS = {"white": (240, 240, 240), "grey": (125, 125, 125), "black": (25, 25, 25)}
POSITIONS = ("top", "middle", "bottom")  # vertical only: the ten-crop mean erases left/right (5 crops are flips)
RELATIONS = ("above", "below")
NONE = "none"

# Label vocabulary of the per-image attributes (what demo/pretrain.py classifies); stored in the JSON too.
ATTRIBUTE_CLASSES: dict[str, list[Any]] = {
    "color": list(COLORS),
    "shape": list(SHAPES),
    "count": [1, 2, 3],
    "size": list(SIZES),
    "background": list(BACKGROUNDS),
    "position": list(POSITIONS),
    "second_color": [NONE, *COLORS],
    "second_shape": [NONE, *SHAPES],
    "second_size": [NONE, *SIZES],
}

COUNT_WORDS = {1: ("a", "one", "a single"), 2: ("two", "a pair of"), 3: ("three",)}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
BACKGROUND_WORDS = {
    "white": ("white",), "grey": ("grey", "gray"), "black": ("black", "dark"),
    "gradient": ("gradient", "softly shaded"), "noisy": ("noisy", "speckled", "grainy"),
}
RELATION_WORDS = {"above": ("above", "over"), "below": ("below", "under", "beneath")}
POSITION_WORDS = {
    "top": ("at the top", "near the top of the image", "in the upper part of the picture"),
    "middle": ("in the middle", "in the centre of the image", "halfway down the picture"),
    "bottom": ("at the bottom", "near the bottom of the image", "in the lower part of the picture"),
}
SPLIT_KEYS = {"train": 0, "restval": 1, "val": 2, "test": 3}  # part of each image's RNG seed


def tokenize_caption(raw: str) -> list[str]:
    """Lowercase word tokens of a caption (letters only, punctuation dropped)."""
    return re.findall(r"[a-z]+", raw.lower())


def sample_scene(rng: np.random.Generator) -> dict[str, Any]:
    """Draw the attributes of one scene: a group of 1-3 identical shapes, maybe one other shape above/below it."""
    count = int(rng.integers(1, 4))
    scene: dict[str, Any] = {
        "color": str(rng.choice(list(COLORS))), "shape": str(rng.choice(SHAPES)), "count": count,
        "size": str(rng.choice(SIZES)), "background": str(rng.choice(BACKGROUNDS)),
        "second_color": NONE, "second_shape": NONE, "second_size": NONE, "relation": NONE,
    }
    if count < 3 and rng.random() < 0.5:  # at most three shapes in all
        while True:  # the other object must differ from the group in colour or kind
            color, shape = str(rng.choice(list(COLORS))), str(rng.choice(SHAPES))
            if (color, shape) != (scene["color"], scene["shape"]):
                break
        relation = str(rng.choice(RELATIONS))
        scene.update(second_color=color, second_shape=shape, second_size=str(rng.choice(SIZES)),
                     relation=relation, position="top" if relation == "above" else "bottom")
    else:
        scene["position"] = str(rng.choice(POSITIONS))
    return scene


def _shape_polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a square, triangle, star or cross of circumradius `radius`, rotated by `angle` radians."""
    if shape == "square":
        polar = [(radius, math.pi / 4 + k * math.pi / 2) for k in range(4)]
    elif shape == "triangle":
        polar = [(radius, -math.pi / 2 + k * 2 * math.pi / 3) for k in range(3)]
    elif shape == "star":
        polar = [(radius if k % 2 == 0 else radius * 0.45, -math.pi / 2 + k * math.pi / 5) for k in range(10)]
    elif shape == "cross":
        arm = radius * 0.34  # half the bar width; tips at distance `radius`
        corners = [(arm, radius), (-arm, radius), (-arm, arm), (-radius, arm), (-radius, -arm), (-arm, -arm),
                   (-arm, -radius), (arm, -radius), (arm, -arm), (radius, -arm), (radius, arm), (arm, arm)]
        polar = [(math.hypot(x, y), math.atan2(y, x)) for x, y in corners]
    else:
        raise ValueError(f"unknown polygon shape {shape!r}; expected one of {SHAPES[1:]}")
    return [(cx + r * math.cos(a + angle), cy + r * math.sin(a + angle)) for r, a in polar]


def _jitter_color(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    """`rgb` with every channel moved by up to `amount`, clipped to 0..255."""
    moved = np.clip(np.array(rgb) + rng.integers(-amount, amount + 1, size=3), 0, 255)
    return tuple(int(v) for v in moved)


def _render_background(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """RGB background: a plain colour, a light two-colour gradient, or mid-grey noise."""
    if kind in PLAIN_BACKGROUNDS:
        # Brightness jitter plus a faint tint: a "white" background must not look like a pastel gradient.
        shade = np.array(PLAIN_BACKGROUNDS[kind]) + int(rng.integers(-10, 11))
        return Image.new("RGB", (size, size), _jitter_color(tuple(shade), rng, 3))
    if kind == "gradient":
        start = rng.uniform(195, 245, size=3)
        direction = rng.normal(size=3)
        end = start + 60 * direction / np.linalg.norm(direction)  # always a visible change of colour
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
        t = (xs * math.cos(angle) + ys * math.sin(angle))
        t = (t - t.min()) / (t.max() - t.min())  # [size, size] in 0..1
        pixels = start + t[..., None] * (end - start)
    elif kind == "noisy":
        # Mostly grey blotches with a faint tint, so the noise does not look like a coloured shape.
        cells = size // 4
        coarse = rng.normal(140, 35, size=(cells, cells, 1)) + rng.normal(0, 8, size=(cells, cells, 3))
        pixels = np.asarray(Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize(
            (size, size), Image.Resampling.BILINEAR), dtype=np.float32)
        pixels = pixels + rng.normal(0, 10, size=(size, size, 1))
    else:
        raise ValueError(f"unknown background {kind!r}; expected one of {BACKGROUNDS}")
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _layout(scene: dict[str, Any], size: int, rng: np.random.Generator) -> list[tuple[str, str, float, float, float]]:
    """(shape, colour, cx, cy, diameter) of every object; the group sits in a row inside its vertical band."""
    def diameter(size_name: str) -> float:
        return size * rng.uniform(*SIZE_DIAMETER_FRACTION[size_name])

    if scene["relation"] == NONE:
        third = size / 3
        band = {"top": (0, third), "middle": (third, 2 * third), "bottom": (2 * third, size)}[scene["position"]]
    else:
        band = (0, size / 2) if scene["position"] == "top" else (size / 2, size)
    margin = size * 0.015
    objects = []
    slot = size / scene["count"]
    for k in range(scene["count"]):  # one horizontal slot per group member, so they never overlap
        d = diameter(scene["size"])
        cx = rng.uniform(k * slot + d / 2 + margin, max((k + 1) * slot - d / 2 - margin, k * slot + d / 2 + margin))
        cy = rng.uniform(band[0] + d / 2 + margin, max(band[1] - d / 2 - margin, band[0] + d / 2 + margin))
        objects.append((scene["shape"], scene["color"], cx, cy, d))
    if scene["relation"] != NONE:
        other_band = (size / 2, size) if scene["position"] == "top" else (0, size / 2)
        d = diameter(scene["second_size"])
        cx = rng.uniform(d / 2 + margin, size - d / 2 - margin)
        cy = rng.uniform(other_band[0] + d / 2 + margin, other_band[1] - d / 2 - margin)
        objects.append((scene["second_shape"], scene["second_color"], cx, cy, d))
    return objects


def render_scene(scene: dict[str, Any], *, image_size: int, rng: np.random.Generator) -> Image.Image:
    """Draw a scene as an RGB image of `image_size` x `image_size` pixels (anti-aliased shapes)."""
    background = _render_background(scene["background"], image_size, rng)
    big = image_size * SUPERSAMPLE
    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for shape, color, cx, cy, d in _layout(scene, image_size, rng):
        fill = (*_jitter_color(COLORS[color], rng, COLOR_JITTER), 255)
        cx, cy, radius = cx * SUPERSAMPLE, cy * SUPERSAMPLE, d * SUPERSAMPLE / 2
        if shape == "circle":
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
        else:
            draw.polygon(_shape_polygon(shape, cx, cy, radius, rng.uniform(-0.35, 0.35)), fill=fill)
    layer = layer.reduce(SUPERSAMPLE)  # box filter back to image_size
    return Image.alpha_composite(background.convert("RGBA"), layer).convert("RGB")


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _group_phrase(scene: dict[str, Any], rng: np.random.Generator, *, with_size: bool) -> str:
    """'two small red circles', 'a big blue square', ..."""
    words = [_pick(rng, COUNT_WORDS[scene["count"]])]
    if with_size:
        words.append(_pick(rng, SIZE_WORDS[scene["size"]]))
    words += [scene["color"], scene["shape"] if scene["count"] == 1 else PLURALS[scene["shape"]]]
    return " ".join(words)


def _second_phrase(scene: dict[str, Any], rng: np.random.Generator) -> str:
    """'a blue square' or 'a large blue square' (the other object)."""
    size = f"{_pick(rng, SIZE_WORDS[scene['second_size']])} " if rng.random() < 0.6 else ""
    return f"a {size}{scene['second_color']} {scene['second_shape']}"


def make_captions(scene: dict[str, Any], rng: np.random.Generator) -> list[str]:
    """Five distinct captions; the first names every attribute, all of them name the group's colour and shape."""
    has_second = scene["relation"] != NONE

    def place() -> str:
        if has_second:
            return f"{_pick(rng, RELATION_WORDS[scene['relation']])} {_second_phrase(scene, rng)}"
        return _pick(rng, POSITION_WORDS[scene["position"]])

    def background() -> str:
        return f"{_pick(rng, BACKGROUND_WORDS[scene['background']])} background"

    def group(full: bool = False) -> str:
        return _group_phrase(scene, rng, with_size=full or rng.random() < 0.8)

    def be() -> str:
        return "is" if scene["count"] == 1 else "are"

    def inverse() -> str:
        if not has_second:
            return f"just {group()} {place()}"
        relation = "below" if scene["relation"] == "above" else "above"
        return f"{_second_phrase(scene, rng)} {_pick(rng, RELATION_WORDS[relation])} {group()}"

    def adjectives_after() -> str:
        size = _pick(rng, SIZE_WORDS[scene["size"]])
        noun = scene["shape"] if scene["count"] == 1 else PLURALS[scene["shape"]]
        return f"{_pick(rng, COUNT_WORDS[scene['count']])} {noun}, {size} and {scene['color']}, {place()}"

    others = [
        lambda: f"{group()} {place()}",
        lambda: f"{group()} on a {background()}",
        lambda: f"there {be()} {group()} {place()}",
        lambda: f"a picture of {group()} {place()}",
        lambda: f"a {background()} with {group()} {place()}",
        inverse,
        lambda: f"an image showing {group()} against a {background()}",
        adjectives_after,
    ]
    captions = [f"{group(full=True)} {place()} on a {background()}"]
    for index in rng.permutation(len(others)):
        if len(captions) == CAPTIONS_PER_IMAGE:
            break
        caption = others[int(index)]()
        if caption not in captions:
            captions.append(caption)
    assert len(captions) == CAPTIONS_PER_IMAGE, captions
    # Surface variety as in human captions: sometimes capitalised, sometimes with a full stop.
    return [(c[0].upper() + c[1:] if rng.random() < 0.5 else c) + ("." if rng.random() < 0.5 else "")
            for c in captions]


def _scene_signature(attributes: dict[str, Any]) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in attributes.items()))


def duplicate_statistics(images: list[dict[str, Any]], split: str = "test") -> dict[str, int]:
    """How many images of `split` share their scene, their caption set, or any one caption with another image."""
    rows = [image for image in images if image["split"] == split]
    signatures = Counter(_scene_signature(image["attributes"]) for image in rows)
    caption_sets = Counter(frozenset(s["raw"] for s in image["sentences"]) for image in rows)
    caption_owners = Counter(tokens for image in rows
                             for tokens in {" ".join(s["tokens"]) for s in image["sentences"]})
    return {
        "images": len(rows),
        "distinct_scenes": len(signatures),
        "images_sharing_scene": sum(n for n in signatures.values() if n > 1),
        "images_sharing_caption_set": sum(n for n in caption_sets.values() if n > 1),
        "images_sharing_a_caption": sum(
            any(caption_owners[" ".join(s["tokens"])] > 1 for s in image["sentences"]) for image in rows),
    }


def _image_record(split: str, index: int, *, seed: int, image_size: int, image_dir: Path) -> dict[str, Any]:
    """Render and save one image; return its Karpathy record (sentids filled in later)."""
    # Seeded by (seed, split, index): an image does not change when other splits change size.
    rng = np.random.default_rng([seed, SPLIT_KEYS[split], index])
    scene = sample_scene(rng)
    filename = f"{split}_{index:05d}.jpg"
    render_scene(scene, image_size=image_size, rng=rng).save(image_dir / filename, quality=JPEG_QUALITY)
    attributes = {name: scene[name] for name in ATTRIBUTE_CLASSES} | {"relation": scene["relation"]}
    return {
        "filepath": IMAGE_DIR, "filename": filename, "split": split, "attributes": attributes,
        "sentences": [{"raw": raw, "tokens": tokenize_caption(raw)} for raw in make_captions(scene, rng)],
    }


def generate_demo_dataset(
    out_dir: str | Path,
    *,
    num_train: int = 400,
    num_val: int = 50,
    num_test: int = 50,
    num_restval: int = 0,
    image_size: int = 256,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Render the demo dataset into `out_dir` and return the path of its Karpathy JSON (`dataset_demo.json`).

    Images go to `out_dir/images/<split>_<index>.jpg` (JPEG, `image_size` square), so `out_dir` is the image
    root. Same arguments, same bytes. An existing dataset made with the same arguments is reused; one made
    with other arguments is an error unless `overwrite=True`, which deletes its images first.
    """
    counts = {"train": num_train, "restval": num_restval, "val": num_val, "test": num_test}
    _check_sizes(counts, image_size)
    out_dir = Path(out_dir)
    json_path = out_dir / JSON_NAME
    params = {"seed": seed, "image_size": image_size, "counts": counts}
    if _reuse_or_clear(out_dir, json_path, params, overwrite=overwrite):
        return json_path
    image_dir = out_dir / IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    images = [_image_record(split, index, seed=seed, image_size=image_size, image_dir=image_dir)
              for split in ("train", "restval", "val", "test") for index in range(counts[split])]
    num_captions = _number_records(images)
    dataset = {"dataset": DATASET_NAME, "generator_params": params,
               "attribute_classes": ATTRIBUTE_CLASSES, "images": images}
    atomic_write_text(json_path, json.dumps(dataset, indent=1))  # a reader never sees half a JSON
    logger.info("wrote %d images (%s) and %d captions to %s", len(images),
                ", ".join(f"{n} {s}" for s, n in counts.items() if n), num_captions, out_dir)
    if num_test:
        logger.info("test split duplicates: %s", duplicate_statistics(images, "test"))
    return json_path


def _check_sizes(counts: dict[str, int], image_size: int) -> None:
    """ValueError for a negative split size, no training image, or images too small to draw the shapes on."""
    for split, n in counts.items():
        if n < 0:
            raise ValueError(f"num_{split}={n} must be >= 0")
    if counts["train"] == 0:
        raise ValueError("num_train=0: the demo needs training images; pass num_train >= 1")
    if image_size < 64:
        raise ValueError(f"image_size={image_size} is too small to draw the shapes; use >= 64 (default 256)")


def _reuse_or_clear(out_dir: Path, json_path: Path, params: dict, *, overwrite: bool) -> bool:
    """True when `json_path` holds a complete dataset made with `params` (reuse it); an existing one made with
    other parameters is a ValueError, or with `overwrite` has its images deleted (False: render anew)."""
    if not json_path.exists():
        return False
    old = json.loads(json_path.read_text())
    old_files = [out_dir / im["filepath"] / im["filename"] for im in old.get("images", [])]
    if old.get("generator_params") == params and all(p.exists() for p in old_files):
        logger.info("reusing the demo dataset at %s (same parameters)", json_path)
        return True
    if not overwrite:
        raise ValueError(f"{json_path} holds a demo dataset made with other parameters "
                         f"({old.get('generator_params')}); pass overwrite=True or use another out_dir")
    logger.info("overwriting the demo dataset at %s", json_path)
    for path in old_files:
        path.unlink(missing_ok=True)
    return False


def _number_records(images: list[dict]) -> int:
    """Give every image its imgid and every caption its sentid (Karpathy's running numbers); return the captions."""
    sentid = 0
    for imgid, image in enumerate(images):
        image["imgid"] = imgid
        for sentence in image["sentences"]:
            sentence.update(imgid=imgid, sentid=sentid)
            sentid += 1
        image["sentids"] = [s["sentid"] for s in image["sentences"]]
    return sentid
