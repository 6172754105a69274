"""Read the reference VSE++ code's released files (model_best.pth.tar, vocabulary .pkl) without running their code.

The reference (fartashf/vsepp) saves with pickle: the checkpoint holds {'opt': argparse.Namespace, 'model':
[image encoder state, text encoder state], 'epoch', 'best_rsum', 'Eiters'}, the vocabulary is a pickled
`Vocabulary` object (fields word2idx, idx2word, idx). A pickle can name any importable callable, so neither is
read with plain pickle: the checkpoint goes through torch's weights-only unpickler with argparse.Namespace added
to its allow-list, the vocabulary through VocabularyUnpickler, whose find_class knows only the names a vocabulary
pickle uses and refuses every other one before anything is called.
"""

from __future__ import annotations

import argparse
import io
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from extract.weights import sha256_of_file

# The reference's vocab.py pickles `vocab.Vocabulary`; when vocab.py itself runs as a script (as the README's
# build step does), the class is recorded as `__main__.Vocabulary`, which its train.py finds by importing it.
VOCABULARY_CLASSES = (("vocab", "Vocabulary"), ("__main__", "Vocabulary"))
MAX_VOCABULARY_BYTES = 64 * 1024 * 1024  # the released COCO vocabulary is ~0.5 MB
REFERENCE_SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")  # vocab.py adds these first: ids 0..3
ALLOWED_IN_CHECKPOINT = "argparse.Namespace, dicts, lists, numbers, strings and tensors"


class UnsafePickleError(ValueError):
    """A pickle that names a global outside the allow-list; raised before that global is looked up or called."""


class PickledVocabulary:
    """Stands in for the reference's Vocabulary while unpickling: receives its fields, has no behaviour."""


def _reconstructor(cls: type, base: type, state: object) -> PickledVocabulary:
    """copyreg._reconstructor (protocol 0/1 pickles), limited to the vocabulary stand-in."""
    if cls is not PickledVocabulary or base is not object or state is not None:
        raise UnsafePickleError("the pickle rebuilds an object other than the vocabulary through copyreg")
    return object.__new__(PickledVocabulary)


class VocabularyUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the vocabulary class (to PickledVocabulary) and what older protocols need
    to build it; any other global is an UnsafePickleError, raised before anything is imported or called."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in VOCABULARY_CLASSES:
            return PickledVocabulary
        # protocols 0 and 1 build objects through copyreg (Python 2: copy_reg, __builtin__); names come raw here
        if module in ("copyreg", "copy_reg") and name == "_reconstructor":
            return _reconstructor
        if module in ("builtins", "__builtin__") and name == "object":
            return object
        raise UnsafePickleError(f"the pickle asks for {module}.{name}, which a vocabulary never holds")

    def persistent_load(self, pid: object) -> object:
        raise UnsafePickleError("the pickle refers to external objects (persistent ids), which a vocabulary never does")


def read_reference_vocabulary(path: str | Path) -> list[str]:
    """The words of a reference vocabulary pickle in id order (word i has id i); ValueError when it is not one.

    Checks: only the allowed names (UnsafePickleError otherwise, nothing run), an object of the vocabulary class
    with a word2idx dict of str -> int whose ids are exactly 0..n-1, the special tokens at 0..3, and idx2word
    and idx (when present) agreeing with it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no vocabulary pickle at {str(path)!r}; pass the file of the authors' vocab.tar "
                                "(vocab/<data_name>_vocab.pkl) that the checkpoint was trained with")
    if path.stat().st_size > MAX_VOCABULARY_BYTES:
        raise ValueError(f"{path} is {path.stat().st_size} bytes, not a vocabulary pickle (those are < 64 MB)")
    try:
        loaded = VocabularyUnpickler(io.BytesIO(path.read_bytes()), encoding="utf-8").load()
    except UnsafePickleError as err:
        raise UnsafePickleError(f"{path} was refused without running it: {err}; a reference vocabulary holds only "
                                "its Vocabulary object, dicts, strings and numbers: do not load this file") from None
    except Exception as err:  # pickle raises many types for a truncated or foreign file
        raise ValueError(f"{path} cannot be read as a vocabulary pickle ({type(err).__name__}: {err}); pass the "
                         ".pkl of the authors' vocab.tar") from None
    if not isinstance(loaded, PickledVocabulary) or not isinstance(getattr(loaded, "word2idx", None), dict):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not the reference's Vocabulary (a word2idx "
                         "dict); pass the .pkl of the authors' vocab.tar")
    return _vocabulary_words(loaded, source=str(path))


def _vocabulary_words(vocab: PickledVocabulary, *, source: str) -> list[str]:
    word2idx = vocab.word2idx
    if not all(isinstance(word, str) and isinstance(index, int) for word, index in word2idx.items()):
        raise ValueError(f"{source}: word2idx must map strings to ints; the vocabulary is corrupted")
    words = sorted(word2idx, key=word2idx.__getitem__)
    if [word2idx[word] for word in words] != list(range(len(words))):
        raise ValueError(f"{source}: the word ids are not exactly 0..{len(words) - 1}; the vocabulary is corrupted")
    if tuple(words[:len(REFERENCE_SPECIALS)]) != REFERENCE_SPECIALS:
        raise ValueError(f"{source}: the first ids are {words[:4]}, not {list(REFERENCE_SPECIALS)} as the "
                         "reference's vocab.py writes them; this vocabulary was built by other code")
    idx2word = getattr(vocab, "idx2word", None)
    if idx2word is not None and idx2word != dict(enumerate(words)):
        raise ValueError(f"{source}: idx2word disagrees with word2idx; the vocabulary is corrupted")
    if getattr(vocab, "idx", len(words)) != len(words):
        raise ValueError(f"{source}: idx is {vocab.idx} for {len(words)} words; the vocabulary is corrupted")
    return words


@dataclass
class ReferenceCheckpoint:
    """What a reference checkpoint holds, as plain values."""

    path: str
    sha256: str
    opt: dict  # the training options (argparse.Namespace as a dict of JSON values)
    image_state: dict[str, torch.Tensor]  # EncoderImagePrecomp / EncoderImageFull state dict
    text_state: dict[str, torch.Tensor]  # EncoderText state dict
    epoch: int | None  # epochs done when it was saved
    best_rsum: float | None  # the best validation R@1+5+10 sum of both directions
    iterations: int | None  # 'Eiters', training steps done


def _plain(value: object) -> object:
    """A JSON value of an option (the reference's options are numbers, strings, booleans and None)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return repr(value)


def _torch_reason(err: Exception) -> str:
    """The line of torch's weights-only error that says what failed (its other lines are advice that does not apply)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    advice = ("Weights only", "Please", "Check")
    detail = [line for line in lines if "error:" not in line and not line.startswith(advice)]
    return (detail or lines or [type(err).__name__])[0][:200]


def _torch_refusal(path: Path, err: Exception) -> UnsafePickleError:
    """torch's weights-only refusal as one line naming the global the file asked for."""
    asked = re.search(r"GLOBAL ([\w.]+)", str(err)).group(1)
    return UnsafePickleError(f"{path} was refused without running it: its pickle asks for {asked}, which a "
                             f"reference checkpoint never holds (allowed: {ALLOWED_IN_CHECKPOINT}); do not load "
                             "this file")


def read_reference_checkpoint(path: str | Path) -> ReferenceCheckpoint:
    """A reference model_best.pth.tar (torch's zip or pre-1.6 format) read through torch's weights-only
    unpickler with argparse.Namespace allowed; UnsafePickleError for anything else, ValueError for a file
    without the reference's structure."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}; pass the model_best.pth.tar of the authors' "
                                "runs.tar (runs/<run name>/model_best.pth.tar)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if re.search(r"GLOBAL ([\w.]+)", str(err)):  # torch's refusal of a name outside its allow-list
            raise _torch_refusal(path, err) from None
        raise ValueError(f"{path} cannot be read as a torch checkpoint ({_torch_reason(err)}); pass a "
                         "model_best.pth.tar") from None
    except Exception as err:  # torch raises many types for a corrupt or foreign file
        raise ValueError(f"{path} cannot be read as a torch checkpoint ({type(err).__name__}: "
                         f"{str(err).strip().splitlines()[0][:200]}); pass a model_best.pth.tar") from None
    return _checked_checkpoint(loaded, path)


def _checked_checkpoint(loaded: object, path: Path) -> ReferenceCheckpoint:
    if not isinstance(loaded, dict) or not isinstance(loaded.get("opt"), argparse.Namespace):
        keys = sorted(loaded)[:8] if isinstance(loaded, dict) else type(loaded).__name__
        raise ValueError(f"{path} is not a reference VSE++ checkpoint (no argparse 'opt'; top level: {keys}); a "
                         "checkpoint of this pipeline loads directly with --checkpoint")
    model = loaded.get("model")
    if (not isinstance(model, (list, tuple)) or len(model) != 2 or not all(isinstance(part, dict) for part in model)
            or not all(isinstance(value, torch.Tensor) for part in model for value in part.values())):
        raise ValueError(f"{path}: 'model' must be [image encoder state, text encoder state] (two dicts of "
                         "tensors) as the reference's VSE.state_dict() saves it; the file is not one of its models")
    numbers = {key: loaded.get(key) for key in ("epoch", "best_rsum", "Eiters")}
    return ReferenceCheckpoint(
        path=str(path), sha256=sha256_of_file(path),
        opt={key: _plain(value) for key, value in vars(loaded["opt"]).items()},
        image_state=dict(model[0]), text_state=dict(model[1]),
        epoch=None if numbers["epoch"] is None else int(numbers["epoch"]),
        best_rsum=None if numbers["best_rsum"] is None else float(numbers["best_rsum"]),
        iterations=None if numbers["Eiters"] is None else int(numbers["Eiters"]))
