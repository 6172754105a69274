"""Where the "nltk" tokenizer (no punkt) can differ from the reference's word_tokenize, counted on caption files.

    python bench/nltk_tokenize.py CAPTIONS.txt [...]      (one caption a line; "name<TAB>caption" lines too)

word_tokenize(text) = punkt's sentence split, then NLTKWordTokenizer on each sentence; "nltk" runs the word
tokenizer on the whole caption. The word tokenizer splits a period off only at the end of its input, so the two
can differ only where a caption holds a sentence end followed by more text: a token ending in "." inside the
caption ("hat." where word_tokenize, if punkt splits there, gives "hat", "."), counted below as `attached`. A
caption whose inner sentence end is already a separate " . " token tokenizes alike either way (`spaced`).
Also counted: captions where "basic" and "nltk" give different tokens (why an imported model needs "nltk").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import print_machine  # noqa: E402
from train.text import BASIC, NLTK, tokenize  # noqa: E402

SENTENCE_ENDS = (".", "?", "!")


def caption_lines(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [line.split("\t", 1)[-1].strip() for line in lines if line.strip()]


def counts(captions: list[str]) -> dict[str, int]:
    """Captions with an attached inner sentence end, with a spaced one, and with basic != nltk tokens."""
    attached = spaced = differ = 0
    for caption in captions:
        tokens = tokenize(caption, NLTK)
        inner = tokens[:-1]
        attached += any(len(token) > 1 and token.endswith(".") and token.strip(".").isalpha() for token in inner)
        spaced += any(token in SENTENCE_ENDS for token in inner)
        differ += tokens != tokenize(caption, BASIC)
    return {"captions": len(captions), "attached": attached, "spaced": spaced, "basic_differs": differ}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    print_machine()
    print("| file | captions | inner sentence end attached to a word | inner sentence end spaced | basic != nltk |")
    print("|---|---:|---:|---:|---:|")
    for path in args.files:
        found = counts(caption_lines(path))
        share = {key: f"{found[key]} ({100 * found[key] / max(found['captions'], 1):.2f}%)"
                 for key in ("attached", "spaced", "basic_differs")}
        print(f"| {path.name} | {found['captions']} | {share['attached']} | {share['spaced']} | "
              f"{share['basic_differs']} |")


if __name__ == "__main__":
    main()
