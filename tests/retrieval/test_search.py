"""The search stage (retrieval/search.py): search and eval agree on every rank; bad input is one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.metrics import metrics_from_ranks
from eval.rank import retrieval_ranks
from features.reader import FeatureStore
from retrieval.evaluate import EvalConfig, embed_split, run_eval
from retrieval.model import load_model, read_model_file
from retrieval.search import SearchConfig, run_search
from train.losses.similarity import similarity_function


def eval_ranks(checkpoint: Path, store_path: Path, split: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(i2t ranks, t2i ranks, eval's all-images metrics) as the eval stage computes them."""
    cfg = EvalConfig(checkpoint=str(checkpoint), split=split, protocol="all-images", device="cpu", workers=0,
                     out=str(checkpoint.with_name(f"eval-{split}-search-test.json")))
    loaded = load_model(checkpoint)
    with FeatureStore(store_path) as store:
        image_emb, caption_emb, index = embed_split(cfg, loaded, store, torch.device("cpu"))
    i2t, t2i = retrieval_ranks(image_emb, caption_emb, index, sim_fn=similarity_function(loaded.config.similarity))
    return i2t.numpy(), t2i.numpy(), run_eval(cfg)["protocols"]["all-images"]


def search_json(capsys, **options) -> dict:
    run_search(SearchConfig(device="cpu", json=True, **options))
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("similarity", ["cosine", "order"])
@pytest.mark.parametrize("gallery", ["split", "embeddings"])
def test_the_rank_of_each_captions_image_in_search_is_evals(trained, tmp_path, capsys, similarity, gallery):
    checkpoint = trained[similarity]
    with FeatureStore(trained["store"]) as store:
        captions = store.caption_indices(["test"])
        texts = [store.caption_texts[row] for row in captions]
        own_image = store.caption_image_index[captions].tolist()  # store rows = search's image ids
    (tmp_path / "captions.txt").write_text("\n".join(texts) + "\n")
    source = {"checkpoint": str(checkpoint), "split": "test"}
    if gallery == "embeddings":
        from retrieval.encode import EncodeConfig, run_encode
        run_encode(EncodeConfig(checkpoint=str(checkpoint), out=str(tmp_path / "e.h5"), split="test", device="cpu"))
        source = {"embeddings": str(tmp_path / "e.h5")}
    found = search_json(capsys, text_file=str(tmp_path / "captions.txt"), k=12, **source)
    ranks = np.array([[entry["id"] for entry in query["results"]].index(image) + 1
                      for query, image in zip(found["queries"], own_image)])
    _, t2i, metrics = eval_ranks(checkpoint, trained["store"], "test")
    assert ranks.tolist() == t2i.tolist()
    from_search = metrics_from_ranks(np.ones(12), ranks, ks=(1, 5, 10))
    assert {key: from_search[key] for key in metrics if key.startswith("t2i")} == {
        key: value for key, value in metrics.items() if key.startswith("t2i")}
    assert 1 < len(set(ranks.tolist()))  # the ranks are spread: the check is not vacuous


@pytest.mark.slow
def test_image_queries_rank_their_own_captions_as_eval(images_setup, finetuned, capsys):
    with FeatureStore(images_setup.store) as store:
        rows = store.image_indices(["val"])
        paths = [str(images_setup.image_root / store.image_paths[row]) for row in rows]
        own = [set(np.flatnonzero(store.caption_image_index == row).tolist()) for row in rows]
    found = search_json(capsys, checkpoint=str(finetuned), split="val", image=tuple(paths), k=6,
                        store=str(images_setup.store))
    i2t, _, metrics = eval_ranks(finetuned, images_setup.store, "val")
    ranks = [next(entry["rank"] for entry in query["results"] if entry["id"] in mine)
             for query, mine in zip(found["queries"], own)]
    assert ranks == i2t.tolist()
    assert found["queries"][0]["results"][0]["image"].startswith("imgs/")  # each caption's image is named


def test_the_table_names_paths_and_captions(trained, capsys):
    run_search(SearchConfig(checkpoint=str(trained["cosine"]), text=("a big red circle", "a star, small"), k=2,
                            device="cpu"))
    out = capsys.readouterr().out
    assert "text query 2: 'a star, small' -> top 2 images (exact)" in out
    assert out.count("test/") == 4 and "near a zebra" in out


def test_faiss_indexes_answer_as_the_exact_search(trained, tmp_path, capsys):
    from retrieval.encode import EncodeConfig, run_encode
    run_encode(EncodeConfig(checkpoint=str(trained["cosine"]), out=str(tmp_path / "e.h5"), split="test",
                            device="cpu"))
    options = dict(embeddings=str(tmp_path / "e.h5"), text=("a big red circle", "there is a green star"), k=5)
    exact = search_json(capsys, **options)
    for kind in ("flat", "hnsw", "flat"):  # the second flat search reads the saved index
        approximate = search_json(capsys, index="faiss", faiss_index=kind, **options)
        for ours, theirs in zip(exact["queries"], approximate["queries"]):
            assert [e["id"] for e in ours["results"]] == [e["id"] for e in theirs["results"]]
            np.testing.assert_allclose([e["score"] for e in ours["results"]],
                                       [e["score"] for e in theirs["results"]], rtol=0, atol=1e-5)
    assert (tmp_path / "e.h5.images.faiss-flat.index").is_file()
    assert json.loads((tmp_path / "e.h5.images.faiss-hnsw.json").read_text())["build"]["hnsw_m"] == 32


@pytest.fixture
def cli_files(trained, tmp_path) -> dict[str, Path]:
    """An embeddings file of the cosine run, a text file, a checkpoint of an unknown kind, a fake image."""
    from retrieval.encode import EncodeConfig, run_encode
    run_encode(EncodeConfig(checkpoint=str(trained["cosine"]), out=str(tmp_path / "e.h5"), split="test",
                            device="cpu"))
    checkpoint = read_model_file(trained["cosine"])
    checkpoint["kind"] = "distilled"
    torch.save(checkpoint, tmp_path / "odd.pt")
    (tmp_path / "fake.jpg").write_text("not a picture")
    (tmp_path / "notes.txt").write_text("hello")
    return {"embeddings": tmp_path / "e.h5", "odd": tmp_path / "odd.pt", "fake": tmp_path / "fake.jpg",
            "notes": tmp_path / "notes.txt", "cosine": trained["cosine"], "order": trained["order"]}


@pytest.mark.parametrize("args, message", [
    (["--text", ""], "query 1 is empty"),
    (["--text", "a dog", "--checkpoint", "{order}"], "was encoded by another model"),
    (["--text", "a dog", "--checkpoint", "{odd}"], "kind 'distilled' is not one of train, finetune"),
    (["--text", "a dog", "--checkpoint", "{order}", "--index", "faiss"], "was encoded by another model"),
    (["--image", "{notes}"], "is not an image file"),
    (["--text", "a dog", "--split", "test"], "not both"),
])
def test_bad_search_input_is_one_line_and_exit_2(cli_files, invoke, args, message):
    args = [arg.format(**cli_files) for arg in args]
    result = invoke("search", "--embeddings", cli_files["embeddings"], "--device", "cpu", *args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1 and message in result.output
    assert sorted(path.name for path in cli_files["embeddings"].parent.glob("e.h5*")) == ["e.h5"]


def test_faiss_refuses_the_order_similarity_and_non_images(cli_files, images_setup, tmp_path, invoke):
    from retrieval.encode import EncodeConfig, run_encode
    run_encode(EncodeConfig(checkpoint=str(cli_files["order"]), out=str(tmp_path / "o.h5"), split="test",
                            device="cpu"))
    result = invoke("search", "--embeddings", tmp_path / "o.h5", "--text", "a dog", "--index", "faiss")
    assert result.exit_code == 2 and "cannot rank: use --index exact" in result.output
    assert not list(tmp_path.glob("o.h5.*"))
    fake = invoke("search", "--checkpoint", images_setup.checkpoint, "--split", "val", "--image", cli_files["fake"],
                  "--k", "3")
    assert fake.exit_code == 2 and "fake.jpg" in fake.output and "cannot be read as an image" in fake.output


def test_texts_are_repeatable_and_keep_their_commas(cli_files, invoke):
    result = invoke("search", "--embeddings", cli_files["embeddings"], "--text", "a star, small", "--text",
                    "a big red circle", "--k", "1", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert [query["query"] for query in document["queries"]] == ["a star, small", "a big red circle"]
    assert document["galleries"]["images"]["size"] == 12 and document["checkpoint"] == str(cli_files["cosine"])
