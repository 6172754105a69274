"""Tests of the import's refusals: one message naming the file and the fix, and no store left behind."""

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import pipeline
from features.importers.config import ImportConfig
from features.importers.run import run_import
from tests.features.importers.released import make_split, write_karpathy, write_precomp

DIM = 6


def folder_of(tmp_path: Path, *, row_shape=(DIM,), per_caption=(), with_ids=False, name="coco_precomp") -> Path:
    splits = {"train": make_split(4, row_shape=row_shape, seed=1), "dev": make_split(2, row_shape=row_shape, seed=2),
              "test": make_split(2, row_shape=row_shape, seed=3)}
    return write_precomp(tmp_path / name, splits, per_caption=per_caption, with_ids=with_ids)


def fails(tmp_path: Path, source: Path, error: type, match: str, **options) -> None:
    out = tmp_path / "out.h5"
    with pytest.raises(error, match=match):
        run_import(ImportConfig(source=str(source), out=str(out), block_mb=0.0001, **options))
    assert not out.exists() and not (tmp_path / "out.h5.partial").exists()


def test_captions_not_a_multiple_of_the_rows(tmp_path: Path):
    folder = folder_of(tmp_path)
    lines = (folder / "dev_caps.txt").read_text().splitlines()
    (folder / "dev_caps.txt").write_text("\n".join(lines[:-1]) + "\n")
    fails(tmp_path, folder, ValueError, r"dev_caps.txt has 9 captions, not a multiple of the 2 rows of .*dev_ims.npy")


def test_per_caption_rows_that_are_not_a_multiple_of_the_captions_per_image(tmp_path: Path):
    folder = folder_of(tmp_path, per_caption=("dev",))
    fails(tmp_path, folder, ValueError, r"dev_ims.npy has one row per caption \(10\), but 10 captions are not a "
          r"multiple of --captions-per-image 3", captions_per_image=3)


@pytest.mark.parametrize("value,split,row", [(np.nan, "dev", 7), (np.inf, "test", 1)])
def test_a_nan_or_inf_row_is_named_and_the_store_removed(tmp_path: Path, value: float, split: str, row: int):
    folder = folder_of(tmp_path, per_caption=("dev",))  # dev: one row per caption, a row of its second image
    features = np.load(folder / f"{split}_ims.npy")
    features[row, 3] = value
    np.save(folder / f"{split}_ims.npy", features)
    fails(tmp_path, folder, ValueError, rf"{split}_ims.npy: row {row} holds NaN or Inf; the file is damaged")


def test_repeated_rows_that_differ_are_not_one_image(tmp_path: Path):
    folder = folder_of(tmp_path, per_caption=("dev",))
    features = np.load(folder / "dev_ims.npy")
    features[7, 0] += 1e-6
    np.save(folder / "dev_ims.npy", features)
    fails(tmp_path, folder, ValueError, r"dev_ims.npy: rows 5..9 should repeat one image .* but differ")


def test_float16_overflow_names_the_row_and_float32(tmp_path: Path):
    folder = folder_of(tmp_path)
    features = np.load(folder / "train_ims.npy")
    features[3, 1] = 1e6
    np.save(folder / "train_ims.npy", features)
    fails(tmp_path, folder, ValueError, r"train_ims.npy: row 3 holds values beyond the range of float16; import "
          "with --dtype float32", dtype="float16")


def test_a_pickled_object_array_is_refused(tmp_path: Path):
    folder = folder_of(tmp_path)
    np.save(folder / "test_ims.npy", np.array([None, None], dtype=object), allow_pickle=True)
    fails(tmp_path, folder, ValueError, r"test_ims.npy holds Python objects .*allow_pickle stays off")


@pytest.mark.parametrize("shape", [(2, 3, 4, DIM), (2,)])
def test_wrong_dimensions_are_refused(tmp_path: Path, shape: tuple[int, ...]):
    folder = folder_of(tmp_path)
    np.save(folder / "test_ims.npy", np.ones(shape, dtype=np.float32))
    fails(tmp_path, folder, ValueError, r"test_ims.npy has shape .*expected \[N, D\] vectors, \[N, 10, D\] ten crops "
          r"or \[N, K, D\] regions")


def test_splits_of_different_row_shapes_are_refused(tmp_path: Path):
    folder = folder_of(tmp_path)
    np.save(folder / "test_ims.npy", np.ones((2, DIM + 1), dtype=np.float32))
    fails(tmp_path, folder, ValueError, r"test_ims.npy has rows of shape \(7,\).*every split must hold the same kind")


def test_an_ids_file_of_another_length(tmp_path: Path):
    folder = folder_of(tmp_path, row_shape=(3, DIM), with_ids=True)
    (folder / "dev_ids.txt").write_text("5\n6\n7\n")
    fails(tmp_path, folder, ValueError, r"dev_ids.txt has 3 ids for the 2 rows of .*dev_ims.npy")


def test_a_missing_split_file_names_it(tmp_path: Path):
    folder = folder_of(tmp_path)
    (folder / "dev_caps.txt").unlink()
    fails(tmp_path, folder, FileNotFoundError, r"dev_caps.txt does not exist; the folder lacks split 'dev'")
    fails(tmp_path, folder, ValueError, "test and testall both become the store's test split",
          splits=("train", "test", "testall"))


def test_a_matrix_without_its_dataset_or_with_other_rows(tmp_path: Path):
    matrix = tmp_path / "feats.npy"
    np.save(matrix, np.ones((3, DIM), dtype=np.float32))
    fails(tmp_path, matrix, ValueError, "is a matrix: pass --dataset")
    dataset = write_karpathy(tmp_path / "dataset.json", {"train": make_split(4, row_shape=(DIM,))})
    fails(tmp_path, matrix, ValueError, r"feats.npy has 3 rows but .*dataset.json lists 4 images",
          dataset=str(dataset))
    fails(tmp_path, matrix, ValueError, r"--splits applies to a precomp folder; .*drop it", dataset=str(dataset),
          splits=("train",))
    fails(tmp_path, tmp_path / "nowhere", FileNotFoundError, "nowhere' does not exist; pass a precomp folder")
    fails(tmp_path, folder_of(tmp_path), ValueError, "is a precomp folder, .*drop --dataset", dataset=str(dataset))


def test_the_cli_says_one_error_line_and_exits_2(tmp_path: Path):
    folder = folder_of(tmp_path)
    (folder / "train_caps.txt").write_text("one caption\n")
    result = CliRunner().invoke(pipeline.cli, ["import-features", "--source", str(folder), "--out",
                                               str(tmp_path / "out.h5")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "train_caps.txt has 1 captions, not a multiple of the 4 rows" in lines[0]
    assert not (tmp_path / "out.h5").exists()
