"""The Python API (retrieval/api.py): sentences, images and store splits embedded as eval and extract do."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from features.reader import FeatureStore
from retrieval import VSE
from retrieval.model import load_model, model_from_checkpoint, read_model_file
from train.encode import encode_split
from train.finetune.data import encode_split_from_images


def test_encode_text_gives_the_split_caption_embeddings_eval_uses(trained):
    vse = VSE.load(trained["cosine"], device="cpu")
    split = vse.encode_split("test")
    loaded = load_model(trained["cosine"])
    with FeatureStore(trained["store"]) as store:
        image_emb, caption_emb, index, rows = encode_split(loaded.model, store, splits=["test"], feature_mode="10c",
                                                           vocab=loaded.vocab, batch_size=256, device="cpu")
    assert torch.equal(split.image_emb, image_emb) and torch.equal(split.caption_emb, caption_emb)
    assert split.caption_image_index.tolist() == index.tolist() and split.image_rows.tolist() == rows.tolist()
    assert len(split.caption_texts) == 36 and split.image_paths[0].startswith("test/")
    text_emb = vse.encode_text(split.caption_texts)  # the synthetic tokens are the lowercased words
    torch.testing.assert_close(text_emb, caption_emb, rtol=0, atol=1e-6)
    assert text_emb.shape == (36, vse.embed_dim) and text_emb.dtype == torch.float32
    torch.testing.assert_close(text_emb.norm(dim=1), torch.ones(36))
    small_batches = VSE.load(trained["cosine"], device="cpu", batch_size=5).encode_text(split.caption_texts)
    torch.testing.assert_close(small_batches, text_emb, rtol=0, atol=1e-5)
    assert not vse.loaded.model.training and vse.similarity_name == "cosine" and vse.kind == "train"


@pytest.mark.parametrize("texts, message", [([], "non-empty list"), ("a dog", "non-empty list"),
                                            (["a dog", "  "], "sentence 1"), ([3], "not a string")])
def test_encode_text_refuses_empty_or_odd_input(trained, texts, message):
    with pytest.raises(ValueError, match=message):
        VSE.load(trained["cosine"], device="cpu").encode_text(texts)


@pytest.mark.slow
def test_images_of_a_train_checkpoint_go_through_the_stores_cnn_as_extract(images_setup):
    vse = VSE.load(images_setup.checkpoint, device="cpu")
    with FeatureStore(images_setup.store) as store:
        rows = store.image_indices(["val"])
        paths = [images_setup.image_root / store.image_paths[row] for row in rows]
        stored = vse.loaded.model.encode_images(torch.from_numpy(store.features("1c")[rows].copy()))
    from_files = vse.encode_images(paths)
    torch.testing.assert_close(from_files, stored, rtol=0, atol=1e-5)  # CNN + head = head on the 1c feature
    with Image.open(paths[0]) as image:
        pil = vse.encode_images([image.convert("L").convert("RGB"), Image.open(paths[1])])
    torch.testing.assert_close(pil[1], from_files[1], rtol=0, atol=1e-6)
    assert vse.cnn_provenance()["weights_name"] == "none"


def test_a_train_checkpoint_without_its_cnn_names_what_is_missing(images_setup, tmp_path, monkeypatch):
    image = next((images_setup.image_root / "imgs").glob("*.jpg"))
    with pytest.raises(FileNotFoundError, match="feature store"):
        VSE.load(images_setup.checkpoint, device="cpu", store=tmp_path / "gone.h5").encode_images([image])
    store = tmp_path / "store.h5"
    shutil.copy(images_setup.store, store)
    with h5py.File(store, "r+") as h5file:  # as if extracted with ImageNet weights that are not here
        h5file.attrs.update(weights_name="resnet18-f37072fd.pth", weights_sha256="ab" * 32, weights_seed="")
    with pytest.raises(ValueError, match="another CNN"):  # not the store the model was trained on
        VSE.load(images_setup.checkpoint, device="cpu", store=store).encode_images([image])
    checkpoint = read_model_file(images_setup.checkpoint)
    checkpoint["config"]["store"] = str(store)  # trained on that store, on a machine that had the weights
    checkpoint["model_spec"]["store_cnn"].update(weights_name="resnet18-f37072fd.pth", weights_sha256="ab" * 32,
                                                 weights_seed="")
    torch.save(checkpoint, tmp_path / "elsewhere.pt")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="resnet18-f37072fd.pth"):
        VSE.load(tmp_path / "elsewhere.pt", device="cpu").encode_images([image])


@pytest.mark.slow
def test_a_finetuned_model_carries_its_cnn(images_setup, finetuned, tmp_path):
    vse = VSE.load(finetuned, device="cpu", store=tmp_path / "no-store.h5")  # the store is not needed
    loaded = load_model(finetuned)
    with FeatureStore(images_setup.store) as store:
        image_emb, *_ , rows = encode_split_from_images(loaded.model, store, splits=["val"], vocab=loaded.vocab,
                                                        image_root=images_setup.image_root, batch_size=256,
                                                        workers=0, device="cpu")
        paths = [images_setup.image_root / store.image_paths[row] for row in rows]
    torch.testing.assert_close(vse.encode_images(paths), image_emb, rtol=0, atol=1e-6)
    assert vse.kind == "finetune" and vse.cnn_provenance()["source"] == "checkpoint"


def test_encode_images_refuses_missing_and_non_image_files(images_setup, tmp_path):
    vse = VSE.load(images_setup.checkpoint, device="cpu")
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="notes.jpg.*cannot be read as an image"):
        vse.encode_images([tmp_path / "notes.jpg"])
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        vse.encode_images([tmp_path / "missing.jpg"])
    with pytest.raises(ValueError, match="non-empty list"):
        vse.encode_images([])


def test_an_unknown_checkpoint_kind_is_refused(trained):
    checkpoint = read_model_file(trained["cosine"])
    checkpoint["kind"] = "distilled"
    with pytest.raises(ValueError, match="kind 'distilled' is not one of train, finetune"):
        model_from_checkpoint(checkpoint)


def test_provenance_names_the_checkpoint_and_its_weights(trained):
    vse = VSE.load(trained["order"], device="cpu")
    info = vse.provenance()
    assert info["checkpoint"] == str(trained["order"]) and len(info["checkpoint_sha256"]) == 64
    assert info["similarity"] == "order" and info["config"]["abs_embeddings"] is True
    assert info["model_sha256"] != VSE.load(trained["cosine"], device="cpu").model_sha256
    sims = vse.similarity(torch.rand(3, vse.embed_dim), torch.rand(4, vse.embed_dim))
    assert sims.shape == (3, 4) and (sims <= 0).all()
    assert np.isfinite(sims.numpy()).all()
