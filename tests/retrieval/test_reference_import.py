"""import-checkpoint: a model file written here with the reference's structure imports, and this project's eval of it
ranks exactly as the reference's encode_data + i2t / t2i (tests/retrieval/reference_oracle.py); unsafe pickles are
refused without running; what this project cannot express is refused with its reason."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.metrics import ranks_i2t, ranks_t2i
from features.datasets import DatasetIndex
from features.reader import FeatureStore
from features.schema import CNN_ATTRS
from retrieval.api import VSE
from retrieval.evaluate import EvalConfig, run_eval
from retrieval.reference_files import UnsafePickleError, read_reference_checkpoint, read_reference_vocabulary
from retrieval.reference_import import ImportCheckpointConfig, import_reference_model, run_import_checkpoint
from tests.retrieval import reference_oracle as ref
from tests.synthetic_store import write_features_store

IMG_DIM, EMBED, WORD = 12, 16, 8
SUBJECTS = ("a man's dog", "two \"small\" cats", "the woman", "a red bus", "children", "an old train")
ACTIONS = ("isn't running on the beach", "sits near a window,", "rides a bike (slowly)", "waits at the stop;",
           "plays with a ball", "crosses the bridge")
PLACES = ("in the park.", "at night!", "by the sea.", "downtown?", "", "in New York.")


RARE_WORDS = ("zebra", "kayak", "tuba")  # seen too rarely for the vocabulary: read as <unk>


def captions_of(count: int, seed: int) -> list[str]:
    """`count` distinct captions (distinct combinations of known words: no two captions embed alike, so the
    reference's arbitrary tie order never matters); some end with a word the vocabulary lacks."""
    generator = np.random.default_rng(seed)
    combos = [(s, a, p) for s in SUBJECTS for a in ACTIONS for p in PLACES]
    chosen = generator.choice(len(combos), size=count, replace=False)
    captions = []
    for number in chosen:
        subject, action, place = combos[number]
        rare = RARE_WORDS[number % 4] + " " if number % 4 < len(RARE_WORDS) else ""
        captions.append(f"{subject} {rare}{action} {place}".strip().capitalize())
    return captions


@pytest.fixture(scope="module")
def reference_files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A test store of 24 images x 5 captions, the reference's vocabulary pickle (built from other captions, so
    some words are <unk>), and its features as the reference's precomp arrays."""
    folder = tmp_path_factory.mktemp("reference")
    captions = captions_of(24 * ref.CAPTIONS_PER_IMAGE, seed=1)
    features = np.random.default_rng(2).standard_normal((24, IMG_DIM)).astype(np.float32)
    dataset = DatasetIndex(image_paths=[f"test/{row:03d}.jpg" for row in range(24)], image_splits=["test"] * 24,
                           caption_texts=captions, caption_tokens=[text.split() for text in captions],
                           caption_image_index=np.repeat(np.arange(24), ref.CAPTIONS_PER_IMAGE))
    store = write_features_store(folder / "store.h5", dataset, features, kind="1c")
    vocab = ref.build_vocab(captions_of(200, seed=3) + [" ".join(RARE_WORDS)] * 3, threshold=4)
    vocab_path = folder / "coco_precomp_vocab.pkl"
    ref.pickle_vocab(vocab, vocab_path)
    return {"folder": folder, "store": store, "captions": captions, "features": features, "vocab": vocab,
            "vocab_path": vocab_path}


def write_reference_checkpoint(files: dict, name: str, *, legacy: bool = False, **options) -> tuple:
    opt = ref.reference_options(**{"img_dim": IMG_DIM, "embed_size": EMBED, "word_dim": WORD,
                                   "vocab_size": len(files["vocab"]), **options})
    image, text = ref.build_encoders(opt, seed=len(name))
    path = files["folder"] / f"{name}.pth.tar"
    ref.save_checkpoint(path, opt, image, text, legacy=legacy)
    return path, opt, image, text


OPTIONS = {"cosine": {}, "order": {"measure": "order", "use_abs": True, "margin": 0.05},
           "no-imgnorm": {"no_imgnorm": True, "max_violation": False}}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_imported_model_ranks_exactly_as_the_reference_evaluation(reference_files, name, tmp_path):
    files = reference_files
    checkpoint, opt, image, text = write_reference_checkpoint(files, name, legacy=name == "cosine", **OPTIONS[name])
    out = tmp_path / "model.pt"
    summary = import_reference_model(checkpoint, files["vocab_path"], out, store=files["store"])
    assert summary["vocab_size"] == len(files["vocab"]) and summary["check_max_difference"] < 1e-5

    img_embs, cap_embs = ref.encode_data(image, text, files["vocab"], files["features"], files["captions"],
                                         batch_size=32)
    (i2t_scores, i2t_ranks), (t2i_scores, t2i_ranks) = (ref.i2t(img_embs, cap_embs, measure=opt.measure),
                                                        ref.t2i(img_embs, cap_embs, measure=opt.measure))
    results = run_eval(EvalConfig(checkpoint=str(out), split="test", protocol="all-images", device="cpu"))
    scores = results["protocols"]["all-images"]
    for direction, expected in (("i2t", i2t_scores), ("t2i", t2i_scores)):
        found = [scores[f"{direction}_{key}"] for key in ("r1", "r5", "r10", "medr", "meanr")]
        assert found == pytest.approx(list(expected), abs=1e-9), direction

    vse = VSE.load(out, device="cpu")
    split = vse.encode_split("test")
    sims = vse.similarity(split.image_emb, split.caption_emb)
    np.testing.assert_array_equal(ranks_i2t(sims, split.caption_image_index) - 1, i2t_ranks)
    np.testing.assert_array_equal(ranks_t2i(sims, split.caption_image_index) - 1, t2i_ranks)
    # the Python API reads new text with the reference's tokenizer and vocabulary
    np.testing.assert_allclose(vse.encode_text(files["captions"][:3]).numpy(), cap_embs[:3], atol=1e-5)


def test_the_model_file_records_its_source_and_the_reference_options(reference_files, tmp_path):
    checkpoint, opt, _, _ = write_reference_checkpoint(reference_files, "source")
    out = tmp_path / "model.pt"
    import_reference_model(checkpoint, reference_files["vocab_path"], out, store=reference_files["store"])
    payload = torch.load(out, weights_only=True)
    source = payload["source"]
    assert source["checkpoint"] == str(checkpoint) and len(source["sha256"]) == 64
    assert (source["epoch"], source["best_rsum"], source["reference"]["iterations"]) == (7, 321.5, 4321)
    assert source["reference"]["opt"] == vars(opt) and source["reference"]["vocab_sha256"]
    assert payload["vocab"]["tokenizer"] == "nltk" and payload["config"]["store"] == str(reference_files["store"])
    with FeatureStore(reference_files["store"]) as store:
        assert payload["model_spec"]["store_cnn"] == {key: store.attrs.get(key) for key in CNN_ATTRS}
    config = payload["config"]
    assert (config["embed_dim"], config["word_dim"], config["similarity"], config["loss"], config["margin"],
            config["epochs"], config["lr"]) == (EMBED, WORD, "cosine", "mh", 0.2, 30, 0.0002)


def test_a_checkpoint_without_counters_imports_and_loads(reference_files, tmp_path):
    path, opt, image, text = write_reference_checkpoint(reference_files, "bare")
    torch.save({"opt": opt, "model": [image.state_dict(), text.state_dict()]}, path)
    out = tmp_path / "model.pt"
    summary = import_reference_model(path, reference_files["vocab_path"], out, store=reference_files["store"])
    assert summary["epoch"] is None and summary["best_rsum"] is None
    assert "epoch" not in torch.load(out, weights_only=True)["source"]
    assert VSE.load(out, device="cpu").encode_text(["a dog"]).shape == (1, EMBED)


def test_a_legacy_checkpoint_of_cuda_tensors_reads_on_the_cpu(reference_files, tmp_path):
    """The released files were saved from the GPU in torch's pre-1.6 format: storages of torch.cuda.FloatStorage at
    'cuda:0' (made here from a CPU save by renaming the class and location in the pickle)."""
    path, opt, image, _ = write_reference_checkpoint(reference_files, "cuda", legacy=True)
    raw = path.read_bytes()
    assert raw.count(b"ctorch\nFloatStorage\n") == 1 and raw.count(b"X\x03\x00\x00\x00cpu") == 1
    path.write_bytes(raw.replace(b"ctorch\nFloatStorage\n", b"ctorch.cuda\nFloatStorage\n")
                     .replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"))
    reference = read_reference_checkpoint(path)
    assert reference.opt == vars(opt) and reference.epoch == 7
    torch.testing.assert_close(reference.image_state["fc.weight"], image.state_dict()["fc.weight"])


@pytest.mark.parametrize("module, protocol", [("vocab", 0), ("vocab", 2), ("vocab", 5), ("__main__", 2)])
def test_vocabulary_pickles_of_each_protocol_and_module_read_the_same(reference_files, tmp_path, module, protocol):
    path = tmp_path / "vocab.pkl"
    ref.pickle_vocab(reference_files["vocab"], path, module=module, protocol=protocol)
    words = read_reference_vocabulary(path)
    assert words == [reference_files["vocab"].idx2word[i] for i in range(len(reference_files["vocab"]))]


class WritesAFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


class RunsAShell:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def assert_payload_is_live(payload: type, folder: Path) -> None:
    """Plain pickle does run the payload (so the refusals below are tested against a real attack)."""
    result = pickle.loads(pickle.dumps(payload(folder / "live")))
    if hasattr(result, "close"):
        result.close()
    assert (folder / "live").exists()


@pytest.mark.parametrize("payload", [WritesAFile, RunsAShell])
def test_a_vocabulary_pickle_that_would_run_code_is_refused_and_never_runs(reference_files, tmp_path, payload):
    assert_payload_is_live(payload, tmp_path)
    marker = tmp_path / "ran"
    vocab = ref.build_vocab(["a dog"] * 4, threshold=1)
    vocab.word2idx["dog"] = payload(marker)  # hidden inside the vocabulary, as an attacker would
    path = tmp_path / "vocab.pkl"
    ref.pickle_vocab(vocab, path)
    with pytest.raises(UnsafePickleError, match=r"refused without running it: the pickle asks for (io\.open|"
                                                r"posix\.system)"):
        read_reference_vocabulary(path)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [WritesAFile, RunsAShell])
def test_a_checkpoint_that_would_run_code_is_refused_and_never_runs(reference_files, tmp_path, payload):
    assert_payload_is_live(payload, tmp_path)
    marker = tmp_path / "ran"
    path = tmp_path / "model_best.pth.tar"
    torch.save({"opt": ref.reference_options(), "model": [{}, {}], "epoch": payload(marker)}, path)
    with pytest.raises(UnsafePickleError, match=r"refused without running it: its pickle asks for "
                                                r"(io\.open|posix\.system)"):
        read_reference_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("options, state_edit, message", [
    ({"num_layers": 2}, None, "num_layers 2: this project's caption encoder is a 1-layer GRU"),
    ({"data_name": "coco", "cnn_type": "resnet18"},  # a full-image model without its CNN weights
     lambda image, text: [image.pop(key) for key in list(image) if key.startswith("cnn.")],
     r"the CNN weights do not fit resnet18 cut as the reference cuts it: missing \['bn1.bias'"),
    ({"measure": "dot"}, None, "measure 'dot' is neither"),
    ({"img_dim": 10}, None, "holds 12-d features, the checkpoint's image encoder reads 10-d ones"),
    ({}, lambda image, text: image.update({"cnn.features.module.0.weight": torch.zeros(1)}),
     r"the CNN weights do not fit vgg19 .* missing \['classifier.0.bias'"),
    ({}, lambda image, text: text.update({"rnn.weight_ih_l1": torch.zeros(1)}),
     r"text encoder's weights do not fit .* unexpected \['rnn.weight_ih_l1'\]"),
    ({}, lambda image, text: image.pop("fc.bias"), r"missing \['fc.bias'\]"),
    ({}, lambda image, text: text.update({"embed.weight": torch.zeros(3, WORD)}),
     r"embed.weight has shape \(3, 8\).* the checkpoint and the vocabulary do not belong together"),
])
def test_what_this_project_cannot_express_is_refused_with_its_reason(reference_files, tmp_path, options, state_edit,
                                                                     message):
    path, opt, image, text = write_reference_checkpoint(reference_files, "bad", **options)
    if state_edit is not None:
        image_state, text_state = image.state_dict(), text.state_dict()
        state_edit(image_state, text_state)
        torch.save({"opt": opt, "model": [image_state, text_state], "epoch": 1, "best_rsum": 0.0}, path)
    out = tmp_path / "model.pt"
    with pytest.raises(ValueError, match=message):
        import_reference_model(path, reference_files["vocab_path"], out, store=reference_files["store"])
    assert not out.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # a plain pickle handed to torch.load on purpose
def test_a_vocabulary_of_another_size_or_a_foreign_pickle_is_refused(reference_files, tmp_path):
    path, _, _, _ = write_reference_checkpoint(reference_files, "sizes")
    small = tmp_path / "small.pkl"
    ref.pickle_vocab(ref.build_vocab(["a dog runs"] * 4, threshold=1), small)
    with pytest.raises(ValueError, match=r"trained with \d+ words, .* holds 7"):
        import_reference_model(path, small, tmp_path / "model.pt", store=reference_files["store"])
    foreign = tmp_path / "foreign.pkl"
    foreign.write_bytes(pickle.dumps({"word2idx": {"a": 0}}))
    with pytest.raises(ValueError, match="holds a dict, not the reference's Vocabulary"):
        read_reference_vocabulary(foreign)
    with pytest.raises(ValueError, match="cannot be read as a torch checkpoint"):
        read_reference_checkpoint(foreign)
    with pytest.raises(ValueError, match="is one of the input files"):
        run_import_checkpoint(ImportCheckpointConfig(checkpoint=str(path), vocab=str(small), out=str(path),
                                                     store=str(reference_files["store"])))


def test_cli_import_checkpoint_then_eval(reference_files, invoke, tmp_path):
    checkpoint, _, _, _ = write_reference_checkpoint(reference_files, "cli")
    out = tmp_path / "model.pt"
    result = invoke("import-checkpoint", "--checkpoint", str(checkpoint), "--vocab",
                    str(reference_files["vocab_path"]), "--out", str(out), "--store", str(reference_files["store"]))
    assert result.exit_code == 0, result.output
    result = invoke("eval", "--checkpoint", str(out), "--protocol", "all-images", "--device", "cpu")
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "eval-test.json").read_text())["protocols"]["all-images"]
    assert scores["num_images"] == 24 and scores["num_captions"] == 120

    unsafe = tmp_path / "unsafe.pkl"
    vocab = ref.build_vocab(["a dog"] * 4, threshold=1)
    vocab.word2idx["dog"] = RunsAShell(tmp_path / "ran")
    ref.pickle_vocab(vocab, unsafe)
    result = invoke("import-checkpoint", "--checkpoint", str(checkpoint), "--vocab", str(unsafe), "--out",
                    str(tmp_path / "other.pt"), "--store", str(reference_files["store"]))
    assert result.exit_code == 2 and "error: " in result.output and "refused without running it" in result.output
    assert not (tmp_path / "ran").exists() and not (tmp_path / "other.pt").exists()


def test_readme_chain_import_features_then_import_checkpoint_then_eval_equals_the_reference(reference_files, invoke,
                                                                                          tmp_path):
    """The README's commands on a precomp folder as the reference reads it (one feature row per caption)."""
    files = reference_files
    folder = tmp_path / "coco_precomp"
    folder.mkdir()
    np.save(folder / "test_ims.npy", np.repeat(files["features"], ref.CAPTIONS_PER_IMAGE, axis=0))
    (folder / "test_caps.txt").write_text("\n".join(files["captions"]) + "\n", encoding="utf-8")
    checkpoint, opt, image, text = write_reference_checkpoint(files, "chain", measure="order", use_abs=True)
    result = invoke("import-features", "--source", folder, "--splits", "test", "--out", tmp_path / "precomp.h5",
                    "import-checkpoint", "--checkpoint", checkpoint, "--vocab", files["vocab_path"],
                    "--out", tmp_path / "model.pt", "eval", "--split", "test", "--protocol", "all-images",
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "eval-test.json").read_text())["protocols"]["all-images"]
    img_embs, cap_embs = ref.encode_data(image, text, files["vocab"], files["features"], files["captions"])
    for direction, oracle in (("i2t", ref.i2t), ("t2i", ref.t2i)):
        expected, _ = oracle(img_embs, cap_embs, measure="order")
        found = [scores[f"{direction}_{key}"] for key in ("r1", "r5", "r10", "medr", "meanr")]
        assert found == pytest.approx(list(expected), abs=1e-9), direction
