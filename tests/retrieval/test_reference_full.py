"""import-checkpoint of the reference's full-image models (EncoderImageFull: CNN weights under DataParallel names):
this project's embeddings of raw images equal the reference encoder's with its eval transform, its eval ranks as
the reference's i2t / t2i, and the VGG19 / ResNet152 files' names and shapes map onto this project's backbones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from features.datasets import DatasetIndex
from retrieval.api import VSE
from retrieval.evaluate import EvalConfig, run_eval
from retrieval.reference_cnn import cnn_state_of
from retrieval.reference_import import import_reference_model
from extract.backbones import build_backbone
from extract.transforms import crop_image
from tests.retrieval import reference_oracle as ref
from tests.retrieval.test_reference_import import EMBED, RARE_WORDS, WORD, captions_of
from tests.synthetic_store import STORE_ATTRS, write_features_store
from train.finetune.cnn import CNNBackbone

IMAGES = 8
SIZES = ((300, 200), (200, 320), (256, 256), (410, 240), (240, 410), (500, 300), (230, 260), (333, 222))


def write_images(folder) -> list[str]:
    """Eight RGB PNGs of other sizes and aspect ratios: noise with a bright block at a different place each."""
    generator = np.random.default_rng(5)
    names = []
    for number, (width, height) in enumerate(SIZES):
        pixels = generator.integers(0, 120, (height, width, 3), dtype=np.uint8)
        top, left = generator.integers(0, height // 2), generator.integers(0, width // 2)
        pixels[top:top + height // 3, left:left + width // 3] = generator.integers(120, 256, 3, dtype=np.uint8)
        names.append(f"{number:02d}.png")
        Image.fromarray(pixels).save(folder / names[-1])
    return names


@pytest.fixture(scope="module")
def full_files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Raw images with 5 captions each in a store written as extract writes one (its image_root), the reference's
    vocabulary pickle, and a full-image resnet18 reference checkpoint with its encoders."""
    folder = tmp_path_factory.mktemp("full")
    names = write_images(folder)
    captions = captions_of(IMAGES * ref.CAPTIONS_PER_IMAGE, seed=7)
    dataset = DatasetIndex(image_paths=names, image_splits=["test"] * IMAGES, caption_texts=captions,
                           caption_tokens=[text.split() for text in captions],
                           caption_image_index=np.repeat(np.arange(IMAGES), ref.CAPTIONS_PER_IMAGE))
    store = write_features_store(folder / "store.h5", dataset, np.zeros((IMAGES, 4), np.float32), kind="1c",
                                 attrs=dict(STORE_ATTRS, image_root=str(folder)))
    vocab = ref.build_vocab(captions_of(200, seed=3) + [" ".join(RARE_WORDS)] * 3, threshold=4)
    vocab_path = folder / "coco_vocab.pkl"
    ref.pickle_vocab(vocab, vocab_path)
    opt = ref.reference_options(data_name="coco", cnn_type="resnet18", finetune=True, embed_size=EMBED,
                                word_dim=WORD, vocab_size=len(vocab), measure="order", use_abs=True, margin=0.05)
    image, text = ref.build_encoders(opt, seed=11)
    with torch.no_grad():  # as trained: with fc's bias at its init 0, the l2norm after fc would undo the one before
        image.fc.bias.copy_(torch.linspace(-0.3, 0.3, EMBED))
    checkpoint = folder / "model_best.pth.tar"
    ref.save_checkpoint(checkpoint, opt, image, text, legacy=True)
    return {"folder": folder, "paths": [folder / name for name in names], "store": store, "captions": captions,
            "vocab": vocab, "vocab_path": vocab_path, "checkpoint": checkpoint, "opt": opt, "image": image,
            "text": text}


def test_keep_aspect_resize_is_the_reference_eval_transform():
    generator = np.random.default_rng(0)
    crop = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.PILToTensor()])
    for width, height in SIZES + ((225, 900), (257, 257), (640, 427)):
        image = Image.fromarray(generator.integers(0, 256, (height, width, 3), dtype=np.uint8))
        assert torch.equal(crop_image(image, 1, resize="keep-aspect")[0], crop(image)), (width, height)
    with pytest.raises(ValueError, match="keep-aspect resize gives one center crop, not 10"):
        crop_image(image, 10, resize="keep-aspect")
    with pytest.raises(ValueError, match="unknown image resize 'stretch'"):
        crop_image(image, 1, resize="stretch")


@pytest.mark.slow
def test_imported_full_model_embeds_images_and_ranks_as_the_reference(full_files, tmp_path):
    files = full_files
    out = tmp_path / "model.pt"
    summary = import_reference_model(files["checkpoint"], files["vocab_path"], out, store=files["store"])
    assert summary["feature_dim"] == 512 and summary["check_max_difference"] < 1e-5

    pixels = ref.load_images(files["paths"])
    with torch.no_grad():
        expected = files["image"](torch.from_numpy(pixels)).numpy()
    vse = VSE.load(out, device="cpu")
    assert vse.loaded.image_resize == "keep-aspect" and vse.loaded.config.feature_norm
    np.testing.assert_allclose(vse.encode_images(files["paths"]).numpy(), expected, atol=2e-5)
    pil = [Image.open(path).convert("RGB") for path in files["paths"][:2]]  # serve's and the API's other input
    np.testing.assert_allclose(vse.encode_images(pil).numpy(), expected[:2], atol=2e-5)

    img_embs, cap_embs = ref.encode_data(files["image"], files["text"], files["vocab"], pixels, files["captions"])
    results = run_eval(EvalConfig(checkpoint=str(out), split="test", protocol="all-images", device="cpu", workers=0))
    scores = results["protocols"]["all-images"]
    for direction, oracle in (("i2t", ref.i2t), ("t2i", ref.t2i)):
        reference_scores, _ = oracle(img_embs, cap_embs, measure="order")
        found = [scores[f"{direction}_{key}"] for key in ("r1", "r5", "r10", "medr", "meanr")]
        assert found == pytest.approx(list(reference_scores), abs=1e-9), direction


@pytest.mark.slow
def test_the_full_model_file_is_a_finetuned_model_with_the_reference_options(full_files, tmp_path):
    out = tmp_path / "model.pt"
    import_reference_model(full_files["checkpoint"], full_files["vocab_path"], out, store=full_files["store"])
    payload = torch.load(out, weights_only=True)
    assert payload["kind"] == "finetune" and payload["vocab"]["tokenizer"] == "nltk"
    assert payload["model_spec"]["backbone"] == "resnet18" and payload["model_spec"]["image_resize"] == "keep-aspect"
    config = payload["config"]
    assert (config["feature_norm"], config["unfreeze"], config["rc"], config["similarity"], config["tokenizer"],
            config["checkpoint"]) == (True, "all", "resized", "order", "nltk", str(full_files["checkpoint"]))


def meta_reference_state(cnn_type: str) -> dict[str, torch.Tensor]:
    """The image encoder state of a reference full-image model, shapes only (meta tensors: no memory)."""
    with torch.device("meta"):
        return ref.EncoderImageFull(EMBED, cnn_type=cnn_type, use_abs=False, no_imgnorm=False).state_dict()


def meta_backbone_shapes(cnn_type: str) -> dict[str, tuple]:
    """This project's fine-tuned model's CNN keys and shapes (VSEModel's image_encoder.backbone.*)."""
    with torch.device("meta"):
        cnn = CNNBackbone(build_backbone(cnn_type), channels_last=False)
    return {f"image_encoder.backbone.{key}": tuple(value.shape) for key, value in cnn.state_dict().items()}


@pytest.mark.parametrize("cnn_type, edit", [
    ("vgg19", None),
    ("vgg19", "old-classifier"),  # saved before torchvision renumbered VGG's classifier (fc6 at 1, fc7 at 4)
    ("resnet152", "no-batch-counters"),  # saved before torch 0.4.1 (no num_batches_tracked)
])
def test_vgg19_and_resnet152_names_and_shapes_map_onto_this_projects_backbones(cnn_type, edit):
    state = meta_reference_state(cnn_type)
    assert any(".module." in key or key.startswith("cnn.module.") for key in state)  # DataParallel's names
    if edit == "old-classifier":
        state = {key.replace("classifier.0.", "classifier.1.").replace("classifier.3.", "classifier.4."): value
                 for key, value in state.items()}
    if edit == "no-batch-counters":
        state = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    mapped = cnn_state_of(state, cnn_type=cnn_type, path="model_best.pth.tar")
    assert {key: tuple(value.shape) for key, value in mapped.items()} == meta_backbone_shapes(cnn_type)
    assert tuple(state["fc.weight"].shape) == (EMBED, 4096 if cnn_type == "vgg19" else 2048)


@pytest.mark.parametrize("edit, message", [
    (lambda state: state.pop("cnn.module.layer4.1.conv2.weight"), r"missing \['layer4.1.conv2.weight'\]"),
    (lambda state: state.update({"cnn.module.layer1.0.conv1.weight": torch.zeros(3, 3)}),
     r"layer1.0.conv1.weight has shape \(3, 3\), resnet18 has \(64, 64, 3, 3\)"),
    (lambda state: state.update({"cnn.module.conv1.weight_orig": torch.zeros(1)}),
     r"unexpected \['conv1.weight_orig'\]"),
])
def test_a_cnn_state_that_does_not_fit_is_refused(full_files, edit, message):
    state = dict(full_files["image"].state_dict())
    edit(state)
    with pytest.raises(ValueError, match=message):
        cnn_state_of(state, cnn_type="resnet18", path="model_best.pth.tar")


def test_an_unknown_cnn_or_a_store_without_images_is_refused(full_files, tmp_path):
    files = full_files
    opt = ref.reference_options(**{**vars(files["opt"]), "cnn_type": "alexnet"})
    checkpoint = tmp_path / "alexnet.pth.tar"
    ref.save_checkpoint(checkpoint, opt, files["image"], files["text"])
    with pytest.raises(ValueError, match="cnn_type 'alexnet' is not one of this project's backbones"):
        import_reference_model(checkpoint, files["vocab_path"], tmp_path / "a.pt", store=files["store"])
    imported = tmp_path / "imported.h5"
    dataset = DatasetIndex(image_paths=["a.jpg"], image_splits=["test"], caption_texts=["a dog"],
                           caption_tokens=[["a", "dog"]], caption_image_index=np.zeros(1, np.int64))
    write_features_store(imported, dataset, np.zeros((1, 4), np.float32), kind="1c",
                         attrs=dict(STORE_ATTRS, origin="import"))
    with pytest.raises(ValueError, match="holds imported features without their images"):
        import_reference_model(files["checkpoint"], files["vocab_path"], tmp_path / "b.pt", store=imported)
    assert not (tmp_path / "a.pt").exists() and not (tmp_path / "b.pt").exists()
