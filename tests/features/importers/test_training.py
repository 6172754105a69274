"""An imported store trains and evaluates exactly as a store holding the same features made another way; finetune
and image embedding refuse it in one line."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from nltk.tokenize import word_tokenize

from features.datasets import DatasetIndex, load_dataset
from features.importers.config import ImportConfig
from features.importers.run import run_import
from retrieval import VSE
from retrieval.evaluate import EvalConfig, run_eval
from tests.features.importers.released import expected_tables, make_split, write_karpathy, write_precomp
from tests.synthetic_store import write_features_store
from train.config import TrainConfig
from train.finetune.config import FinetuneConfig
from train.finetune.run import run_finetune
from train.run import run_train

DIM = 16
TIMING_KEYS = ("seconds", "steps_per_s", "captions_per_s", "time", "elapsed", "wall")


def val_records(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in record.items() if not any(word in key for word in TIMING_KEYS)}
            for record in records if record["event"] == "val"]


def written_directly(path: Path, splits: dict, *, with_ids: bool) -> Path:
    """The same features and captions written with FeatureStoreWriter from the arrays, as a script would."""
    tables = expected_tables(splits, with_ids=with_ids)
    dataset = DatasetIndex(image_paths=tables["paths"], image_splits=tables["splits"], caption_texts=tables["texts"],
                           caption_tokens=[word_tokenize(text.lower(), preserve_line=True) for text in tables["texts"]],
                           caption_image_index=np.asarray(tables["index"], dtype=np.int64))
    features = np.concatenate([split.features for split in splits.values()])
    return write_features_store(path, dataset, features, kind="regions" if features.ndim == 3 else "1c")


def imported_and_direct(tmp_path: Path, case: str) -> tuple[Path, Path, str]:
    """(an imported store, a store of the same features written directly, the feature mode to train) of `case`."""
    row_shape = {"precomp-1c": (DIM,), "scan-regions": (3, DIM), "dataset-10c": (10, DIM)}[case]
    splits = {"train": make_split(40, row_shape=row_shape, seed=1), "dev": make_split(8, row_shape=row_shape, seed=2),
              "test": make_split(8, row_shape=row_shape, seed=3)}
    imported, direct = tmp_path / "imported.h5", tmp_path / "direct.h5"
    if case == "dataset-10c":
        dataset_path = write_karpathy(tmp_path / "dataset.json", splits)
        features = np.concatenate([split.features for split in splits.values()])
        np.savez(tmp_path / "feats.npz", features=features)
        run_import(ImportConfig(source=str(tmp_path / "feats.npz"), dataset=str(dataset_path), out=str(imported)))
        write_features_store(direct, load_dataset(dataset_path), features)
        return imported, direct, "10c"
    folder = write_precomp(tmp_path / "precomp", splits, per_caption=("dev",), with_ids=case == "scan-regions")
    run_import(ImportConfig(source=str(folder), out=str(imported), block_mb=0.001))
    written_directly(direct, splits, with_ids=case == "scan-regions")
    return imported, direct, "regions" if case == "scan-regions" else "1c"


@pytest.mark.slow  # two trainings per case
@pytest.mark.parametrize("case", ["precomp-1c", "scan-regions", "dataset-10c"])
def test_training_on_an_imported_store_equals_training_on_the_same_features(tmp_path: Path, case: str):
    imported, direct, feature_mode = imported_and_direct(tmp_path, case)
    results = []
    for store in (imported, direct):
        cfg = TrainConfig(store=str(store), out_dir=str(tmp_path / store.stem), embed_dim=32, word_dim=16,
                          vocab_min_count=1, batch_size=16, epochs=2, lr=2e-3, device="cpu", log_every=1,
                          feature_mode=feature_mode)
        run_train(cfg)
        evaluated = run_eval(EvalConfig(checkpoint=str(tmp_path / store.stem / "best.pt"), protocol="all-images",
                                        device="cpu"))
        results.append((val_records(Path(cfg.out_dir)), evaluated["protocols"]))
    assert results[0][0] and results[0][1]["all-images"]["rsum"] > 0
    assert results[0] == results[1]


def test_finetune_refuses_an_imported_store_in_one_line(tmp_path: Path):
    splits = {"train": make_split(16, row_shape=(DIM,), seed=1), "dev": make_split(4, row_shape=(DIM,), seed=2)}
    folder = write_precomp(tmp_path / "precomp", splits)
    store = tmp_path / "imported.h5"
    run_import(ImportConfig(source=str(folder), out=str(store), splits=("train", "dev")))
    train = TrainConfig(store=str(store), out_dir=str(tmp_path / "run"), embed_dim=16, word_dim=8, vocab_min_count=1,
                        batch_size=16, epochs=1, device="cpu")
    run_train(train)
    finetune = FinetuneConfig(checkpoint=str(tmp_path / "run" / "best.pt"), out_dir=str(tmp_path / "ft"), device="cpu")
    with pytest.raises(ValueError, match=r"imported.h5 holds imported features .*no CNN to fine-tune; extract a "
                                         r"store from the images") as error:
        run_finetune(finetune)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "ft").exists()
    vse = VSE.load(tmp_path / "run" / "best.pt", device="cpu")
    assert vse.encode_text(["a red dog"]).shape == (1, 16)
    with pytest.raises(ValueError, match=r"imported.h5 holds imported features .*none can embed new images"):
        vse.encode_images([Image.new("RGB", (32, 32))])
