"""LSEH semantic caption vectors: letters-only text, stop words out, Porter stems, TF-IDF, truncated SVD."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import snowballstemmer
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer

from common.files import atomic_write

logger = logging.getLogger(__name__)

# Dimension of the semantic vectors (paper and authors' code: 400 singular vectors).
DEFAULT_DIM = 400
# Power iterations of the randomized SVD. The authors' script uses 100; the leading subspace has
# converged long before that for a TF-IDF matrix, and the vectors only scale a margin term of weight
# lambda = 0.025; each iteration costs two dense factorisations of a [num_captions, dim + 10] matrix.
SVD_N_ITER = 10
# Tokens shorter than this are dropped: the authors feed their stemmed text to sklearn's default
# token pattern (\b\w\w+\b), which keeps words of two or more characters.
MIN_TOKEN_LEN = 2
# Bumped whenever preprocessing or fitting changes, so old caches are not reused.
CACHE_FORMAT_VERSION = 1

_NON_LETTERS = re.compile(r"[^a-z]+")
# sklearn's built-in English list (318 words, frozenset). It is not NLTK's list (which the authors
# remove before stemming); but the authors' TfidfVectorizer(stop_words="english") removes exactly
# this list after stemming, and it needs no data download.
_STOP_WORDS: frozenset[str] = frozenset(ENGLISH_STOP_WORDS)
# The original Porter (1980) algorithm, pure Python. The authors use NLTK's PorterStemmer, whose
# default mode adds a few extensions (e.g. "dying": NLTK "die", here "dy"); both map inflections of the
# caption vocabulary ("running dogs" -> "run dog") the same way.
_STEMMER = snowballstemmer.stemmer("porter")


class CaptionStore(Protocol):
    """What this module reads from a feature store (features.reader.FeatureStore satisfies it)."""

    caption_texts: list[str]
    caption_splits: np.ndarray
    attrs: dict


@dataclass(frozen=True)
class SemanticModel:
    """A fitted TF-IDF vectorizer plus truncated SVD; `dim` may be below the requested size."""

    vectorizer: TfidfVectorizer
    svd: TruncatedSVD
    dim: int
    vocabulary_size: int
    num_train_captions: int


def preprocess_caption(text: str) -> list[str]:
    """Caption -> stemmed content words, as the LSEH authors prepare descriptions.

    Non-letters become spaces (digits, punctuation, accented letters), the text is lower-cased, English
    stop words (sklearn's ENGLISH_STOP_WORDS) are removed, the rest is Porter-stemmed. As in the authors'
    pipeline (which tokenizes the stemmed text again with sklearn's defaults), stems that are stop words
    and tokens shorter than two letters are then dropped too. "Two running dogs!" -> ["run", "dog"].
    """
    words = _NON_LETTERS.sub(" ", text.lower()).split()
    stems = _STEMMER.stemWords([w for w in words if w not in _STOP_WORDS])
    return [s for s in stems if len(s) >= MIN_TOKEN_LEN and s not in _STOP_WORDS]


def fit_semantic_model(train_texts: Sequence[str], *, dim: int = DEFAULT_DIM, seed: int = 0) -> SemanticModel:
    """Fit TF-IDF (smoothed idf, l2 rows, as the authors) and a randomized truncated SVD on training captions.

    The SVD keeps `dim` components, or fewer when the training captions cannot support that many:
    `min(vocabulary size, number of captions) - 1` (logged). Raises ValueError when there are no
    captions, or fewer than two distinct stems in them.
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if len(train_texts) == 0:
        raise ValueError("no training captions to fit the semantic model on; check the train splits")
    vectorizer = TfidfVectorizer(analyzer=preprocess_caption, smooth_idf=True, norm="l2", dtype=np.float64)
    try:
        tfidf = vectorizer.fit_transform(train_texts)  # sparse [num_train, vocab]
    except ValueError as err:  # sklearn: "empty vocabulary; perhaps the documents only contain stop words"
        raise ValueError(f"the {len(train_texts)} training captions contain no content words: {err}") from err
    num_captions, vocabulary_size = tfidf.shape
    max_dim = min(vocabulary_size, num_captions) - 1
    if max_dim < 1:
        raise ValueError(
            f"training captions give {vocabulary_size} distinct stems in {num_captions} captions; "
            "an SVD needs at least two of each"
        )
    fit_dim = dim
    if dim > max_dim:
        fit_dim = max_dim
        logger.info(
            "semantic vectors: %d requested dimensions reduced to %d (vocabulary %d stems, %d captions)",
            dim, fit_dim, vocabulary_size, num_captions,
        )
    svd = TruncatedSVD(n_components=fit_dim, algorithm="randomized", n_iter=SVD_N_ITER, random_state=seed)
    svd.fit(tfidf)
    logger.info(
        "semantic model: %d captions, %d stems, %d dims, explained variance %.3f",
        num_captions, vocabulary_size, fit_dim, float(svd.explained_variance_ratio_.sum()),
    )
    return SemanticModel(vectorizer, svd, fit_dim, vocabulary_size, num_captions)


def transform(model: SemanticModel, texts: Sequence[str]) -> np.ndarray:
    """Semantic vectors of `texts`: float32 [len(texts), model.dim], NOT L2-normalised.

    The authors' loss uses the raw LSA vectors and rescales their dot products by the row maximum,
    S[i, j] = (v_i . v_j) / max_j (v_i . v_j), so no normalisation is applied here. Stems unseen in
    training are ignored; a caption with no known stem gets the zero vector (its dot products are all
    0, so the loss must guard the division, as the authors' code does by dividing by 1 instead).
    """
    if len(texts) == 0:
        return np.zeros((0, model.dim), dtype=np.float32)
    return model.svd.transform(model.vectorizer.transform(texts)).astype(np.float32)


def _cache_key(train_splits: tuple[str, ...], created: str, dim: int, seed: int) -> dict[str, Any]:
    """Everything that determines the cached vectors (besides the store contents named by `created`)."""
    return {
        "version": CACHE_FORMAT_VERSION,
        "train_splits": list(train_splits),
        "store_created": created,
        "requested_dim": dim,
        "seed": seed,
        "svd_n_iter": SVD_N_ITER,
    }


def semantic_cache_paths(store_path: str | Path, key: dict[str, Any]) -> tuple[Path, Path]:
    """(vectors .npy, description .json) beside the store: `<store>.semantic-<dim>-<hash>.npy`."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    stem = f"{Path(store_path)}.semantic-{key['requested_dim']}-{digest}"
    return Path(stem + ".npy"), Path(stem + ".json")


def _load_cache(npy_path: Path, json_path: Path, key: dict[str, Any], num_captions: int) -> np.ndarray | None:
    """The cached vectors if both files exist and agree with `key` and the store, else None (logged)."""
    if not (npy_path.exists() and json_path.exists()):
        return None
    try:
        meta = json.loads(json_path.read_text())
        vectors = np.load(npy_path, allow_pickle=False)
    except (OSError, ValueError) as err:
        logger.warning("semantic cache %s unreadable (%s); refitting", npy_path, err)
        return None
    expected_shape = [num_captions, meta.get("dim")]
    problems = [name for name, value in key.items() if meta.get(name) != value]
    if list(vectors.shape) != expected_shape or vectors.dtype != np.float32:
        problems.append(f"array {vectors.dtype}{list(vectors.shape)} != float32{expected_shape}")
    if problems:
        logger.warning("semantic cache %s inconsistent (%s); refitting", npy_path, ", ".join(map(str, problems)))
        return None
    return vectors


def load_or_fit_semantic_vectors(
    store_path: str | Path,
    store: CaptionStore,
    *,
    train_splits: Sequence[str] = ("train",),
    dim: int = DEFAULT_DIM,
    seed: int = 0,
) -> np.ndarray:
    """Semantic vectors of ALL captions of the store, float32 [num_captions, d] with d <= dim (row = caption row).

    The model is fitted on the captions of `train_splits` only (test words have no column). The result
    is cached beside the store as `<store>.semantic-<dim>-<hash>.npy` plus a `.json` saying how it was
    made; the hash covers the train splits, the store's `created` attr, dim, seed and the fitting
    settings. A cache whose JSON or array disagrees is refitted (logged); writes are atomic.
    """
    splits = tuple(sorted(set(train_splits)))
    if not splits:
        raise ValueError("train_splits is empty; give the splits the semantic model is fitted on, e.g. ('train',)")
    created = store.attrs.get("created")
    if not created:
        raise ValueError(f"store {store_path} has no 'created' attr; rebuild it with the extract stage")
    caption_splits = np.asarray(store.caption_splits).astype(str)
    num_captions = len(store.caption_texts)
    if caption_splits.shape != (num_captions,):
        raise ValueError(f"store {store_path}: {caption_splits.shape} caption splits for {num_captions} captions")
    present = sorted(set(caption_splits.tolist()))
    missing = [s for s in splits if s not in present]
    if missing:
        raise ValueError(f"train splits {missing} have no captions in {store_path}; the store has {present}")

    key = _cache_key(splits, str(created), dim, seed)
    npy_path, json_path = semantic_cache_paths(store_path, key)
    cached = _load_cache(npy_path, json_path, key, num_captions)
    if cached is not None:
        logger.info("semantic vectors reused from %s", npy_path)
        return cached

    start = time.perf_counter()
    train_rows = np.flatnonzero(np.isin(caption_splits, splits))
    model = fit_semantic_model([store.caption_texts[i] for i in train_rows], dim=dim, seed=seed)
    vectors = transform(model, store.caption_texts)
    meta = {
        **key,
        "dim": model.dim,
        "num_captions": num_captions,
        "num_train_captions": model.num_train_captions,
        "vocabulary_size": model.vocabulary_size,
        "l2_normalised": False,
        "preprocessing": "letters only, lowercase, sklearn ENGLISH_STOP_WORDS, Porter stem (snowballstemmer)",
        "store_path": str(store_path),
        "fit_seconds": round(time.perf_counter() - start, 3),
    }
    atomic_write(npy_path, lambda f: np.save(f, vectors, allow_pickle=False))
    # The JSON goes last: a cache without it (an interrupted write) is never read.
    atomic_write(json_path, lambda f: f.write(json.dumps(meta, indent=2).encode()))
    logger.info("semantic vectors %s written to %s", list(vectors.shape), npy_path)
    return vectors
