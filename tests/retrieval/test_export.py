"""The export stage (retrieval/export.py): a weights-only file that eval and the API load like the checkpoint."""

from __future__ import annotations

import pytest
import torch

from retrieval import VSE
from retrieval.evaluate import EvalConfig, run_eval
from retrieval.export import ExportConfig, run_export
from retrieval.model import read_model_file


def test_an_exported_model_scores_and_embeds_like_its_checkpoint(trained, tmp_path):
    out = tmp_path / "model.pt"
    summary = run_export(ExportConfig(checkpoint=str(trained["order"]), out=str(out)))
    assert summary["bytes"] < summary["checkpoint_bytes"]
    exported = torch.load(out, weights_only=True)
    assert not {"optimizer", "rng", "scaler"} & set(exported)
    assert exported["source"]["checkpoint"] == str(trained["order"]) and exported["kind"] == "train"
    assert read_model_file(out)["format"] == "vsepp-model"
    results = [run_eval(EvalConfig(checkpoint=str(path), split="test", device="cpu", out=str(tmp_path / f"{n}.json"),
                                   store=str(trained["store"])))["protocols"] for n, path in
               (("checkpoint", trained["order"]), ("exported", out))]
    assert results[0] == results[1]
    original, copy = VSE.load(trained["order"], device="cpu"), VSE.load(out, device="cpu")
    assert original.model_sha256 == copy.model_sha256
    assert torch.equal(original.encode_text(["a red star"]), copy.encode_text(["a red star"]))


@pytest.mark.slow
def test_a_finetune_checkpoint_exports_without_its_optimizer(finetuned, tmp_path, invoke):
    result = invoke("export", "--checkpoint", finetuned, "--out", tmp_path / "ft.pt")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ft.pt").stat().st_size < 0.6 * finetuned.stat().st_size  # Adam keeps two moments per weight
    exported = VSE.load(tmp_path / "ft.pt", device="cpu")
    assert exported.kind == "finetune" and exported.model_sha256 == VSE.load(finetuned, device="cpu").model_sha256


def test_export_of_something_else_writes_nothing(tmp_path, invoke):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    result = invoke("export", "--checkpoint", tmp_path / "junk.pt", "--out", tmp_path / "model.pt")
    assert result.exit_code == 2 and "cannot be read as a checkpoint" in result.output
    assert not (tmp_path / "model.pt").exists()
