"""`encode --images` and `encode --texts` resume like `encode --split`; a file another process holds is named as such;
text files end their lines at \n only."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from features.disk import StoreInUseError
from retrieval.embeddings import EmbeddingsFile
from retrieval.encode import EncodeConfig, run_encode


def encode(checkpoint: Path, out: Path, **options) -> dict:
    return run_encode(EncodeConfig(checkpoint=str(checkpoint), out=str(out), device="cpu", workers=0, **options))


def embeddings_bytes(path: Path) -> dict[str, bytes]:
    with EmbeddingsFile(path) as embeddings:
        return {group: embeddings.read(group, embeddings.done_rows(group)).tobytes() + embeddings.fingerprint(
            group).encode() for group in embeddings.groups}


def test_texts_resume_after_max_batches_to_the_bytes_of_a_one_shot_run(trained, tmp_path):
    texts = tmp_path / "queries.txt"
    texts.write_text("".join(f"a {colour} circle number {n}\n" for n in range(7) for colour in ("red", "blue")))
    part = tmp_path / "part.h5"
    first = encode(trained["cosine"], part, texts=str(texts), batch_size=3, max_batches=2)
    assert first["captions"] == {"total": 14, "done": 6, "failed": 0, "pending": 8}
    second = encode(trained["cosine"], part, texts=str(texts), batch_size=3)
    assert second["captions"]["done"] == 14
    encode(trained["cosine"], tmp_path / "whole.h5", texts=str(texts), batch_size=3)
    assert embeddings_bytes(part) == embeddings_bytes(tmp_path / "whole.h5")


@pytest.mark.slow
def test_images_resume_after_max_batches_to_the_bytes_of_a_one_shot_run(images_setup, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(images_setup.image_root / "imgs", folder)
    part = tmp_path / "part.h5"
    first = encode(images_setup.checkpoint, part, images=(str(folder),), batch_size=4, max_batches=2)
    assert first["images"]["done"] == 8 and first["images"]["pending"] == 4
    second = encode(images_setup.checkpoint, part, images=(str(folder),), batch_size=4)
    assert second["images"] == {"total": 12, "done": 12, "failed": 0, "pending": 0}
    encode(images_setup.checkpoint, tmp_path / "whole.h5", images=(str(folder),), batch_size=4)
    assert embeddings_bytes(part) == embeddings_bytes(tmp_path / "whole.h5")


def test_a_file_held_by_another_process_is_named_as_in_use(trained, tmp_path):
    texts = tmp_path / "queries.txt"
    texts.write_text("a red circle\na blue star\n")
    out = tmp_path / "e.h5"
    encode(trained["cosine"], out, texts=str(texts), max_batches=0)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time, h5py
        handle = h5py.File({str(out)!r}, "r")
        print("open", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreInUseError, match=f"{out} is in use by another process .*loader workers of a killed"):
            encode(trained["cosine"], out, texts=str(texts))
    finally:
        holder.kill()
        holder.wait()
    assert encode(trained["cosine"], out, texts=str(texts))["captions"]["done"] == 2
    assert np.isfinite(np.frombuffer(embeddings_bytes(out)["captions"][:8 * 4], dtype=np.float32)).all()
def test_a_sentence_holding_a_line_separator_stays_one_sentence_with_its_line_number(trained, tmp_path):
    texts = tmp_path / "queries.txt"
    texts.write_bytes("\ufeffa red\u2028circle\r\n\na blue\x85star\n".encode("utf-8"))
    encode(trained["cosine"], tmp_path / "t.h5", texts=str(texts))
    with EmbeddingsFile(tmp_path / "t.h5") as embeddings:
        assert embeddings.ids("captions").tolist() == [1, 3]
        assert list(embeddings.labels("captions")) == ["a red\u2028circle", "a blue\x85star"]
