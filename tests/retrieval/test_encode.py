"""The encode stage (retrieval/encode.py) and its file (retrieval/embeddings.py): layout, provenance, resume, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from extract.weights import sha256_of_file
from features.reader import FeatureStore
from features.schema import Status
from retrieval import VSE
from retrieval.embeddings import EmbeddingsFile
from retrieval.encode import EncodeConfig, run_encode


def encode(checkpoint: Path, out: Path, **options) -> dict:
    return run_encode(EncodeConfig(checkpoint=str(checkpoint), out=str(out), device="cpu", workers=0, **options))


def test_a_store_split_is_written_with_its_tables_and_provenance(trained, tmp_path):
    out = tmp_path / "test.h5"
    summary = encode(trained["cosine"], out, split="test")
    assert summary["images"] == {"total": 12, "done": 12, "failed": 0, "pending": 0}
    split = VSE.load(trained["cosine"], device="cpu").encode_split("test")
    with EmbeddingsFile(out) as embeddings:
        assert embeddings.groups == ["images", "captions"]
        assert np.array_equal(embeddings.read("images", np.arange(12)), split.image_emb.numpy())
        assert np.array_equal(embeddings.read("captions", np.arange(36)), split.caption_emb.numpy())
        assert embeddings.ids("images").tolist() == split.image_rows.tolist()
        assert embeddings.ids("captions").tolist() == split.caption_rows.tolist()
        assert embeddings.image_index().tolist() == split.caption_image_index.tolist()
        assert list(embeddings.labels("captions")) == split.caption_texts
        attrs = embeddings.attrs
        assert attrs["source"] == "store-split" and attrs["split"] == "test"
        assert attrs["checkpoint"] == str(trained["cosine"])
        assert attrs["checkpoint_sha256"] == sha256_of_file(trained["cosine"])
        assert embeddings.config()["similarity"] == "cosine" and attrs["embed_dim"] == 16
        assert len(embeddings.fingerprint("images")) == 64


def test_an_interrupted_encode_continues_where_it_stopped(trained, tmp_path):
    out = tmp_path / "part.h5"
    first = encode(trained["cosine"], out, split="test", batch_size=5, max_batches=2)
    assert first["images"]["done"] == 10 and first["images"]["pending"] == 2
    with EmbeddingsFile(out) as embeddings:
        assert embeddings.fingerprint("images") == ""
        with pytest.raises(ValueError, match="2 of 12 images are not embedded yet"):
            embeddings.done_rows("images")
    second = encode(trained["cosine"], out, split="test", batch_size=5)
    assert second["images"]["done"] == 12 and second["captions"]["done"] == 36
    encode(trained["cosine"], tmp_path / "whole.h5", split="test", batch_size=5)
    with EmbeddingsFile(out) as resumed, EmbeddingsFile(tmp_path / "whole.h5") as whole:
        for group in ("images", "captions"):
            assert resumed.fingerprint(group) == whole.fingerprint(group)


def test_a_file_of_another_model_is_not_resumed_unless_overwritten(trained, tmp_path):
    out = tmp_path / "e.h5"
    encode(trained["cosine"], out, split="test")
    before = out.read_bytes()
    with pytest.raises(ValueError, match="another model or input.*--overwrite"):
        encode(trained["order"], out, split="test")
    with pytest.raises(ValueError, match="another model or input"):
        encode(trained["cosine"], out, split="val")
    assert out.read_bytes() == before
    encode(trained["order"], out, split="test", overwrite=True)
    with EmbeddingsFile(out) as embeddings:
        assert embeddings.config()["similarity"] == "order"


def test_sentences_of_a_text_file_keep_their_line_numbers(trained, tmp_path):
    texts = tmp_path / "queries.txt"
    texts.write_text("a big red circle\n\n  the star is blue, and small  \n")
    encode(trained["cosine"], tmp_path / "t.h5", texts=str(texts))
    with EmbeddingsFile(tmp_path / "t.h5") as embeddings:
        assert embeddings.groups == ["captions"] and embeddings.ids("captions").tolist() == [1, 3]
        assert list(embeddings.labels("captions")) == ["a big red circle", "the star is blue, and small"]
        expected = VSE.load(trained["cosine"], device="cpu").encode_text(list(embeddings.labels("captions")))
        assert np.array_equal(embeddings.read("captions", np.arange(2)), expected.numpy())


@pytest.mark.slow
def test_images_are_embedded_and_unreadable_ones_marked_failed(images_setup, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(images_setup.image_root / "imgs", folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (folder / "README.txt").write_text("not an image: skipped by suffix")
    out = tmp_path / "images.h5"
    summary = encode(images_setup.checkpoint, out, images=(str(folder),), batch_size=4)
    assert summary["images"] == {"total": 13, "done": 12, "failed": 1, "pending": 0}
    with EmbeddingsFile(out) as embeddings:
        paths, status = list(embeddings.labels("images")), embeddings.status("images")
        broken = paths.index(str(folder / "broken.jpg"))
        assert status[broken] == Status.FAILED and embeddings.done_rows("images").tolist() == [
            row for row in range(13) if row != broken]
        assert embeddings.file["images/error"].asstr()[broken].startswith("UnidentifiedImageError")
        good = 1 if broken == 0 else 0
        emb = embeddings.read("images", np.array([good]))
        assert json.loads(embeddings.attrs["cnn"])["backbone"] == "resnet18"
    expected = VSE.load(images_setup.checkpoint, device="cpu").encode_images([paths[good]])
    torch.testing.assert_close(torch.from_numpy(emb), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("options, message", [
    ({"images": ("notes.txt",)}, "not an image file"),
    ({"images": ("missing.jpg",)}, "does not exist"),
    ({"texts": "empty.txt"}, "holds no sentence"),
    ({"split": "test", "texts": "empty.txt"}, "exactly one input"),
    ({}, "exactly one input"),
])
def test_bad_input_writes_nothing(trained, tmp_path, monkeypatch, options, message):
    monkeypatch.chdir(tmp_path)
    Path("notes.txt").write_text("hello")
    Path("empty.txt").write_text("\n  \n")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        encode(trained["cosine"], tmp_path / "out.h5", **options)
    assert not list(tmp_path.glob("out.h5*"))


def test_the_cli_encodes_and_refuses_with_one_line(trained, tmp_path, invoke):
    out = tmp_path / "cli.h5"
    result = invoke("encode", "--checkpoint", trained["cosine"], "--split", "test", "--out", out, "--workers", "0",
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    with h5py.File(out) as h5file:
        assert h5file["images/embeddings"].shape == (12, 16) and h5file["captions/status"][()].min() == Status.DONE
    with FeatureStore(trained["store"]) as store:
        assert store.image_indices(["test"]).tolist() == h5py.File(out)["images/ids"][()].tolist()
    bad = invoke("encode", "--checkpoint", trained["cosine"], "--images", tmp_path / "nothing", "--out",
                 tmp_path / "bad.h5")
    assert bad.exit_code == 2 and bad.output.startswith("error: ") and bad.output.count("\n") == 1
    assert not (tmp_path / "bad.h5").exists()


@pytest.mark.slow
def test_a_finetuned_model_encodes_a_split_from_its_raw_images_and_a_text_gallery(images_setup, finetuned, tmp_path,
                                                                                   capsys):
    encode(finetuned, tmp_path / "val.h5", split="val", store=str(images_setup.store))
    split = VSE.load(finetuned, device="cpu", store=images_setup.store).encode_split("val")
    with EmbeddingsFile(tmp_path / "val.h5") as embeddings:
        assert embeddings.attrs["image_root"] == str(images_setup.image_root)
        assert np.array_equal(embeddings.read("images", np.arange(3)), split.image_emb.numpy())
    (tmp_path / "texts.txt").write_text("a red square\nthe square is blue\na green square\n")
    encode(finetuned, tmp_path / "texts.h5", texts=str(tmp_path / "texts.txt"))
    from retrieval.search import SearchConfig, run_search
    found = run_search(SearchConfig(embeddings=str(tmp_path / "texts.h5"), image=(str(images_setup.image_root / split.
                                    image_paths[0]),), k=3, device="cpu", index="faiss"))
    assert sorted(entry["text"] for entry in found["queries"][0]["results"]) == sorted(
        ["a red square", "the square is blue", "a green square"])
    assert "image query 1" in capsys.readouterr().out and (tmp_path / "texts.h5.captions.faiss-flat.index").is_file()
