"""FeatureRows: preadv batch reads equal the memmap, and memory stays one batch however much is read."""

import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from features.datasets import DatasetIndex
from features.reader import FeatureStore
from features.rows import FeatureRows, contiguous_runs
from features.store import FeatureStoreWriter


def test_contiguous_runs():
    assert contiguous_runs(np.array([], dtype=np.int64)) == []
    assert contiguous_runs(np.array([3])) == [(0, 1)]
    assert contiguous_runs(np.array([0, 1, 2, 5, 6, 9])) == [(0, 3), (3, 5), (5, 6)]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("kind", ["1c", "10c"])
def test_rows_equal_the_memmap(make_store, random_features, tiny_index, dtype, kind):
    writer = make_store(crops=10, dtype=dtype)
    feats_1c, feats_10c = random_features(tiny_index.num_images, 10, 3)
    writer.write_rows(np.arange(tiny_index.num_images), feats_1c, feats_10c)
    writer.close()
    with FeatureStore(writer.path) as store:
        memmap, rows = store.features(kind), store.feature_rows(kind)
        assert isinstance(rows, FeatureRows)
        for selection in ([0], [1, 2, 3], [0, 2, 4], [4], list(range(5)), []):
            block = rows[np.array(selection, dtype=np.int64)]
            assert block.dtype == np.dtype(dtype) and block.shape == (len(selection),) + memmap.shape[1:]
            np.testing.assert_array_equal(block, memmap[selection])


def test_rows_must_be_sorted_unique_and_in_range(make_store):
    writer = make_store(crops=1)
    writer.close()
    with FeatureStore(writer.path) as store:
        rows = store.feature_rows("1c")
        assert store.feature_rows("1c") is rows  # one reader per kind, reused by every batch
        for bad in ([2, 1], [1, 1], [-1], [5]):
            with pytest.raises(ValueError, match="sorted, unique"):
                rows[np.array(bad)]


def test_pickled_reader_reopens_its_file(make_store, random_features, tiny_index):
    writer = make_store(crops=1)
    feats_1c, _ = random_features(tiny_index.num_images, 1, 0)
    writer.write_rows(np.arange(tiny_index.num_images), feats_1c, None)
    writer.close()
    with FeatureStore(writer.path) as store:
        rows = store.feature_rows("1c")
        rows[np.array([0])]  # opens a descriptor, which must not travel with the pickle
        copy = pickle.loads(pickle.dumps(rows))
        np.testing.assert_array_equal(copy[np.array([1, 3])], feats_1c[[1, 3]])


def _rss_file_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"RssFile:\s+(\d+) kB", status).group(1))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for RSS")
def test_reading_every_row_does_not_keep_the_store_resident(tmp_path, config_attrs):
    """The memmap keeps what it touched mapped (RSS grows with the store); FeatureRows does not."""
    rows, dim = 3000, 2048  # 10c float32: 3000 x 10 x 2048 x 4 B = 234 MiB
    dataset = DatasetIndex(image_paths=[f"{i}.jpg" for i in range(rows)], image_splits=["train"] * rows,
                           caption_texts=["a caption"] * rows, caption_tokens=None,
                           caption_image_index=np.arange(rows, dtype=np.int64))
    path = tmp_path / "big.h5"
    with FeatureStoreWriter.create(path, dataset, attrs=config_attrs, feature_dim=dim, crops=10,
                                   dtype="float32") as writer:
        block = np.ones((500, 10, dim), dtype=np.float32)
        for start in range(0, rows, 500):
            writer.write_rows(np.arange(start, start + 500), block[:, 4], block)
    store_mib = rows * 10 * dim * 4 / 2**20

    def growth_mib(reader) -> float:
        before = _rss_file_kib()
        for start in range(0, rows, 128):
            reader[np.arange(start, min(start + 128, rows))].sum()
        return (_rss_file_kib() - before) / 1024

    with FeatureStore(path) as store:
        assert growth_mib(store.feature_rows("10c")) < 0.1 * store_mib
        assert growth_mib(store.features("10c")) > 0.5 * store_mib  # the failure mode this guards against
