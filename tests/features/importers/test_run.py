"""Tests of features/importers/run.py: each released layout, written by the test, imported into a store."""

import dataclasses
import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from nltk.tokenize import word_tokenize

from features.importers.arrays import ArraySource
from features.importers.config import ImportConfig
from features.importers.run import run_import
from features.reader import FeatureStore
from tests.features.importers.released import (ReleasedSplit, expected_tables, make_split, write_karpathy,
                                               write_precomp)

DIM = 6


def released(row_shape: tuple[int, ...] = (DIM,), *, test: str = "test", captions: int = 5) -> dict[str, ReleasedSplit]:
    return {"train": make_split(6, row_shape=row_shape, captions_per_image=captions, seed=1, first_id=100),
            "dev": make_split(3, row_shape=row_shape, captions_per_image=captions, seed=2, first_id=200),
            test: make_split(2, row_shape=row_shape, captions_per_image=captions, seed=3, first_id=300)}


def config(tmp_path: Path, source: Path, **options) -> ImportConfig:
    return ImportConfig(source=str(source), out=str(tmp_path / "imported.h5"), **options)


def assert_store_holds(path: Path, splits: dict[str, ReleasedSplit], *, kind: str, with_ids: bool = False) -> None:
    tables = expected_tables(splits, with_ids=with_ids)
    with FeatureStore(path) as store:
        assert store.image_paths.tolist() == tables["paths"]
        assert store.image_splits.tolist() == tables["splits"]
        assert store.caption_texts == tables["texts"]
        assert store.caption_image_index.tolist() == tables["index"]
        assert store.caption_tokens == [word_tokenize(text.lower(), preserve_line=True) for text in tables["texts"]]
        assert store.summary()["done"] == store.num_images
        expected = np.concatenate([split.features for split in splits.values()])
        assert np.array_equal(store.features(kind), expected)
        if kind == "10c":
            assert np.array_equal(store.features("1c"), expected[:, 4])
        assert store.attrs["origin"] == "import" and store.attrs["backbone"] == "none"
        assert store.attrs["weights_name"] == "" and store.attrs["weights_sha256"] == ""
        files = [Path(name) for name in store.attrs["source_files"]]
        assert store.attrs["source_sha256"] == [hashlib.sha256(file.read_bytes()).hexdigest() for file in files]


@pytest.mark.parametrize("per_caption", [(), ("train", "dev", "test")])
def test_a_vsepp_precomp_folder_in_either_layout_becomes_a_1c_store(tmp_path: Path, per_caption: tuple[str, ...]):
    splits = released()
    folder = write_precomp(tmp_path / "coco_precomp", splits, per_caption=per_caption)
    summary = run_import(config(tmp_path, folder, block_mb=0.0001))
    assert summary["done"] == 11 and summary["pending"] == 0 and summary["kind"] == "1c" and summary["blocks"] > 3
    assert_store_holds(tmp_path / "imported.h5", splits, kind="1c")
    with FeatureStore(tmp_path / "imported.h5") as store:
        layout = store.attrs["source_layout"]
        assert store.attrs["source_files"][:2] == [str((folder / "train_ims.npy").resolve()),
                                                  str((folder / "train_caps.txt").resolve())]
    assert "dev -> val" in layout
    assert ("one row per caption, 5 identical rows per image stored once" in layout) == bool(per_caption)
    assert ("one row per image, 5 captions each" in layout) != bool(per_caption)


def test_the_10crop_release_is_one_vector_per_image_and_says_so(tmp_path: Path):
    splits = released(test="testall")
    folder = write_precomp(tmp_path / "10crop_precomp", splits, per_caption=("train", "dev", "testall"))
    run_import(config(tmp_path, folder, splits=("train", "dev", "testall")))
    assert_store_holds(tmp_path / "imported.h5", splits, kind="1c")
    with FeatureStore(tmp_path / "imported.h5") as store:
        assert "the mean of the features of 10 crops" in store.attrs["source_layout"]
        assert "testall -> test" in store.attrs["source_layout"]


def test_ten_crop_arrays_become_a_10c_store_whose_1c_is_the_center_crop(tmp_path: Path):
    splits = released((10, DIM))
    folder = write_precomp(tmp_path / "crops", splits, per_caption=("dev",))
    assert run_import(config(tmp_path, folder))["kind"] == "10c"
    assert_store_holds(tmp_path / "imported.h5", splits, kind="10c")


def test_a_scan_region_folder_becomes_a_region_store(tmp_path: Path):
    splits = released((4, DIM))
    folder = write_precomp(tmp_path / "f30k_precomp", splits, per_caption=("dev",), with_ids=True)
    summary = run_import(config(tmp_path, folder, dtype="float16"))
    assert summary["kind"] == "regions" and summary["layout"] == "scan"
    with FeatureStore(tmp_path / "imported.h5") as store:
        assert store.regions == 4 and store.feature_kinds == ("regions",) and store.dtype == "float16"
        expected = np.concatenate([split.features for split in splits.values()]).astype(np.float16)
        assert np.array_equal(store.features("regions"), expected)
        assert store.image_paths.tolist() == expected_tables(splits, with_ids=True)["paths"]
        assert any(name.endswith("dev_ids.txt") for name in store.attrs["source_files"])


def test_a_karpathy_json_with_a_matrix_becomes_a_store_of_its_images(tmp_path: Path):
    splits = released((10, DIM))
    dataset = write_karpathy(tmp_path / "dataset.json", splits)
    matrix = tmp_path / "feats.npz"
    np.savez_compressed(matrix, feats=np.concatenate([split.features for split in splits.values()]))
    (tmp_path / "images").mkdir()
    summary = run_import(config(tmp_path, matrix, dataset=str(dataset), image_root=str(tmp_path / "images")))
    assert summary["kind"] == "10c" and summary["layout"] == "dataset"
    with FeatureStore(tmp_path / "imported.h5") as store:
        assert store.image_paths[0] == "imgs/train_000.jpg" and store.image_splits.tolist()[6:9] == ["val"] * 3
        assert store.caption_tokens is None  # the dataset's own captions, as extract stores them
        assert np.array_equal(store.features("1c"), np.concatenate([s.features[:, 4] for s in splits.values()]))
        assert store.attrs["image_root"] == str((tmp_path / "images").resolve())
        assert store.attrs["dataset_path"] == str(dataset.resolve())


def test_a_stopped_import_resumes_to_the_same_bytes(tmp_path: Path, monkeypatch):
    splits = released((4, DIM))
    folder = write_precomp(tmp_path / "coco_precomp", splits, per_caption=("dev",), with_ids=True)
    whole = dataclasses.replace(config(tmp_path, folder, block_mb=0.0002), out=str(tmp_path / "whole.h5"))
    run_import(whole)
    stopped = config(tmp_path, folder, block_mb=0.0002)
    assert run_import(dataclasses.replace(stopped, max_blocks=2))["pending"] > 0
    reads = []
    original = ArraySource.read

    def interrupted(self, begin, end):  # the second block of the rerun is killed as by Ctrl-C
        reads.append(begin)
        if len(reads) == 2:
            raise KeyboardInterrupt
        return original(self, begin, end)

    monkeypatch.setattr(ArraySource, "read", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_import(stopped)
    monkeypatch.setattr(ArraySource, "read", original)
    with FeatureStore(stopped.out) as store:
        assert 0 < store.summary()["pending"] < store.num_images
    summary = run_import(stopped)
    assert summary["pending"] == 0
    with h5py.File(whole.out, "r") as expected, h5py.File(stopped.out, "r") as resumed:
        for name in ("features/regions", "images/status", "captions/image_index"):
            assert expected[name][()].tobytes() == resumed[name][()].tobytes(), name
        for name in ("captions/text", "captions/tokens", "images/path", "images/split"):
            assert expected[name].asstr()[()].tolist() == resumed[name].asstr()[()].tolist(), name


def test_a_resume_from_other_files_is_refused(tmp_path: Path):
    folder = write_precomp(tmp_path / "coco_precomp", released())
    run_import(config(tmp_path, folder, max_blocks=0))
    features = np.load(folder / "test_ims.npy")
    np.save(folder / "test_ims.npy", features + 1)
    with pytest.raises(ValueError, match=r"imported.h5 was not imported from these files.*source_sha256.*--overwrite"):
        run_import(config(tmp_path, folder))
    assert run_import(config(tmp_path, folder, overwrite=True))["pending"] == 0
