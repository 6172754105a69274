"""Caption tokenizer and the Vocabulary (built from training captions only), saved as JSON."""

from __future__ import annotations

import functools
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from common.choices import TOKENIZERS

logger = logging.getLogger(__name__)

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)  # ids 0, 1, 2, 3; <pad> must be 0 (padding value of batches)
# A word (letters/digits, with an inner apostrophe part such as "man's") or one punctuation character.
TOKEN_PATTERN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]|_")
# "basic": TOKEN_PATTERN (this project's own); "nltk": the reference VSE++ code's nltk word tokenizer, for its
# imported models. A vocabulary records its tokenizer, so a model always reads text as it was trained.
BASIC, NLTK = TOKENIZERS
MAX_TOKENS = 256  # tokens of a caption or query the model reads; the rest is cut (COCO's longest caption: ~50)


@functools.cache
def _nltk_word_tokenizer() -> object:
    from nltk.tokenize import NLTKWordTokenizer  # imported on first use: nltk takes ~1 s to import
    return NLTKWordTokenizer()


def tokenize(text: str, tokenizer: str = BASIC) -> list[str]:
    """Lowercase and split into tokens.

    "basic": words and single punctuation marks: "A dog, running." -> [a, dog, ",", running, "."].
    "nltk": nltk's NLTKWordTokenizer (Treebank rules: "isn't" -> [is, "n't"], '"' -> ``/'') over the whole
    text, as the reference's `word_tokenize(caption.lower())` minus its punkt sentence split, which needs a
    model that is not installed; only a caption of several sentences can differ (an inner "word." stays one
    token here; README, "Using the authors' released models").
    """
    if tokenizer == BASIC:
        return TOKEN_PATTERN.findall(text.lower())
    if tokenizer == NLTK:
        return _nltk_word_tokenizer().tokenize(text.lower())
    raise ValueError(f"unknown tokenizer {tokenizer!r}; valid: {', '.join(TOKENIZERS)}")


def caption_tokens(store: object, rows: Iterable[int], *, tokenizer: str = BASIC) -> list[list[str]]:
    """Tokens of the captions at `rows`: with "basic", the store's own tokens (lowercased) when it has them,
    else tokenize; with "nltk", always the text tokenized (the reference never reads a dataset's tokens)."""
    stored = getattr(store, "caption_tokens", None)
    if stored is not None and tokenizer == BASIC:
        return [[token.lower() for token in stored[row]] for row in rows]
    texts = store.caption_texts
    return [tokenize(texts[row], tokenizer) for row in rows]


class Vocabulary:
    """Word <-> id mapping with the special tokens first: <pad>=0, <start>=1, <end>=2, <unk>=3."""

    def __init__(self, words: Sequence[str], *, tokenizer: str = BASIC) -> None:
        """`words` in id order; must start with SPECIAL_TOKENS and hold no duplicates. `tokenizer`: how text
        becomes the words (TOKENIZERS)."""
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"unknown tokenizer {tokenizer!r} in a vocabulary; valid: {', '.join(TOKENIZERS)}")
        self.tokenizer = tokenizer
        words = list(words)
        if tuple(words[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"a vocabulary must start with {SPECIAL_TOKENS}, got {words[:4]}; "
                             "the vocabulary file is not ours or is corrupted")
        if len(set(words)) != len(words):
            raise ValueError("the vocabulary holds duplicate words; the vocabulary file is corrupted")
        self.words = words
        self.word_to_id = {word: index for index, word in enumerate(words)}

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], *, min_count: int, tokenizer: str = BASIC) -> "Vocabulary":
        """Words seen at least `min_count` times, most frequent first (ties alphabetical, deterministic);
        `tokenizer` is the one that made token_lists."""
        if min_count < 1:
            raise ValueError(f"vocab min count must be >= 1, got {min_count}")
        counts = Counter(token for tokens in token_lists for token in tokens)
        kept = sorted((word for word, count in counts.items() if count >= min_count and word not in SPECIAL_TOKENS),
                      key=lambda word: (-counts[word], word))
        logger.info("vocabulary: %d of %d distinct words seen >= %d times", len(kept), len(counts), min_count)
        return cls(list(SPECIAL_TOKENS) + kept, tokenizer=tokenizer)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.word_to_id

    @property
    def unk_id(self) -> int:
        """Id of <unk>."""
        return self.word_to_id[UNK]

    def encode(self, tokens: Sequence[str]) -> np.ndarray:
        """int64 ids of <start> tokens <end>; unknown words map to <unk>. Only the first MAX_TOKENS tokens are
        kept (the GRU reads a sequence step by step: 100,000 words took minutes), with a warning the first time."""
        if len(tokens) > MAX_TOKENS:
            if not self.__dict__.get("warned_long"):
                self.warned_long = True
                logger.warning("a caption or query of %d tokens is cut to its first %d (MAX_TOKENS); longer ones "
                               "are cut too, without another warning", len(tokens), MAX_TOKENS)
            tokens = tokens[:MAX_TOKENS]
        unk = self.unk_id
        ids = [self.word_to_id[START]] + [self.word_to_id.get(token, unk) for token in tokens]
        ids.append(self.word_to_id[END])
        return np.asarray(ids, dtype=np.int64)

    def tokenize(self, text: str) -> list[str]:
        """`text` split by this vocabulary's tokenizer."""
        return tokenize(text, self.tokenizer)

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of `ids` (for logs and tests)."""
        return [self.words[int(index)] for index in ids]

    def to_dict(self) -> dict:
        """JSON-able form, stored in checkpoints."""
        return {"words": list(self.words), "tokenizer": self.tokenizer}

    @classmethod
    def from_dict(cls, data: dict) -> "Vocabulary":
        """Inverse of to_dict (a dict without "tokenizer" was written before the choice existed: "basic")."""
        if not isinstance(data, dict) or not isinstance(data.get("words"), list):
            raise ValueError("a vocabulary dict needs a 'words' list; the file or checkpoint is corrupted")
        return cls(data["words"], tokenizer=data.get("tokenizer", BASIC))

    def save(self, path: str | Path) -> None:
        """Write vocab.json."""
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        """Read a vocab.json written by save."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no vocabulary file at {str(path)!r}; it is written in the train run folder")
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def build_vocabulary(store: object, *, splits: Sequence[str], min_count: int, tokenizer: str = BASIC) -> Vocabulary:
    """Vocabulary from the captions of `splits` only (the training splits: never val/test)."""
    rows = store.caption_indices(list(splits))
    if len(rows) == 0:
        raise ValueError(f"no captions in splits {list(splits)} of {getattr(store, 'path', 'the store')}; "
                         "check --train-splits")
    return Vocabulary.build(caption_tokens(store, rows.tolist(), tokenizer=tokenizer), min_count=min_count,
                            tokenizer=tokenizer)
