"""What a new user meets on the command line (issue 21): --k beyond the gallery lists the gallery with a note, output
folders created, and the messages that name what to pass instead of a wrong file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from extract.config import ExtractConfig
from extract.run import run_extract
from features.datasets import load_dataset
from retrieval.encode import EncodeConfig, run_encode
from retrieval.export import ExportConfig, run_export
from tests.test_architecture import ROOT
from tests.train.finetune.fixtures import finetune_config
from train.finetune.run import run_finetune


@pytest.fixture(scope="module")
def embeddings(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cosine run's test split (12 images, 36 captions) encoded into a folder that did not exist."""
    out = tmp_path_factory.mktemp("enc") / "not" / "yet" / "test.h5"
    run_encode(EncodeConfig(checkpoint=str(trained["cosine"]), out=str(out), split="test", device="cpu"))
    return out


def test_encode_creates_its_output_folder(embeddings: Path):
    assert embeddings.is_file()


@pytest.mark.slow
def test_extract_creates_its_output_folder(images_setup, tmp_path: Path):
    out = tmp_path / "stores" / "new" / "feats.h5"
    run_extract(ExtractConfig(dataset=str(images_setup.dataset), image_root=str(images_setup.image_root),
                              out=str(out), backbone="resnet18", weights="none", crops=1, workers=0, device="cpu",
                              batch_size=16))
    assert out.is_file()


def test_search_k_beyond_the_gallery_lists_all_of_it_with_a_note(embeddings: Path, invoke):
    result = invoke("search", "--embeddings", embeddings, "--text", "a red square", "--k", "50", "--device", "cpu")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 12
    assert "note: --k 50 asked; the gallery holds 12 images, so all 12 are listed" in result.output


def test_eval_of_an_embeddings_file_says_what_it_is_and_what_to_pass(embeddings: Path, trained, invoke):
    result = invoke("eval", "--checkpoint", embeddings, "--device", "cpu")
    assert result.exit_code == 2
    assert "is an embeddings file of `encode` (vectors, not a model): pass the checkpoint that wrote it" in \
        result.output and str(trained["cosine"]) in result.output


def test_finetune_of_an_export_says_exports_hold_no_run_state(images_setup, tmp_path: Path):
    model = tmp_path / "model.pt"
    run_export(ExportConfig(checkpoint=str(images_setup.checkpoint), out=str(model)))
    with pytest.raises(ValueError, match=r"is an exported model .* no optimizer or run state; pass the train run's "
                                         r"checkpoint \(TRAIN_RUN/best.pt\) to finetune"):
        run_finetune(finetune_config(images_setup, tmp_path / "ft", checkpoint=str(model)))


def test_finetune_of_a_finetune_checkpoint_says_what_to_do(images_setup, finetuned: Path, tmp_path: Path):
    with pytest.raises(ValueError, match=r"fine-tuning starts from the train stage's checkpoint .*; to continue "
                                         r"this fine-tune, pass it as --resume"):
        run_finetune(finetune_config(images_setup, tmp_path / "ft", checkpoint=str(finetuned)))


def test_a_dataset_of_unknown_suffix_names_the_format_option(tmp_path: Path):
    path = tmp_path / "captions.csv"
    path.write_text("a,b\n")
    with pytest.raises(ValueError, match="pass --dataset-format karpathy or tsv"):
        load_dataset(path)


@pytest.mark.slow
def test_the_console_command_s_help_shows_its_own_name():
    code = "import sys; sys.argv = ['vsepp', '--help']; import pipeline; pipeline.main()"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "vsepp extract --dataset" in result.stdout
    assert "python pipeline.py" not in result.stdout and result.stdout.startswith("Usage: vsepp ")
