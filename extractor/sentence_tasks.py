"""Sentence-level probing tasks derived from any corpus, written as SentEval TSV.

Users without SentEval's data can still run the sentence-level analyses of
Mosbach et al. (2020, seed ``002_*``) on their own corpus.  Two of Conneau et
al.'s (ACL 2018, "What you can cram into a single vector") probing tasks need
nothing but the words:

``bigram-shift``
    In a seeded random half of the sentences (of each split) two adjacent
    words at a seeded random position are swapped; the label says whether
    the sentence was inverted (``I``) or left as it was (``O``), SentEval's
    class names.  The position is drawn among adjacent pairs of different
    words (swapping "no no" changes nothing); sentences with no such pair
    (fewer than two words, or one word repeated) cannot be inverted and are
    left out (and counted).
``sentence-length``
    The label is the bin of the sentence's word count; bins are half-open
    ranges between consecutive ``edges`` (SentEval's own bins by default:
    5-8, 9-12, 13-16, 17-20, 21-25, 26-28 words).  Sentences outside every
    bin are left out (and counted).

The output is SentEval's format, ``split<TAB>label<TAB>sentence``, with split
``tr``/``va``/``te`` taken from which input the sentence came from, and the
words joined by single spaces.  A word that itself contains whitespace would
read back as several words, so its whitespace is written as ``_`` (counted).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from extractor.readers import read_corpus
from store.errors import StrataError

TASKS = ("bigram-shift", "sentence-length")
SPLITS = {"train": "tr", "dev": "va", "test": "te"}
#: SentEval's sentence_length bins as edges: [5, 9) -> "5-8", ..., [26, 29) -> "26-28".
DEFAULT_LENGTH_EDGES = (5, 9, 13, 17, 21, 26, 29)
_WHITESPACE = re.compile(r"\s")


@dataclass
class TaskReport:
    """What was written, for the command's summary line and for tests."""

    written: dict = field(default_factory=dict)  # split -> sentences written
    left_out: dict = field(default_factory=dict)  # split -> sentences left out
    classes: dict = field(default_factory=dict)  # label -> sentences
    words_with_whitespace: int = 0


def bigram_shift(sentences: list[list[str]], rng: np.random.Generator) -> list[tuple[str, list[str]] | None]:
    """Per sentence ``(label, words)``, or None when no swap would change it.

    Exactly ``floor(m / 2)`` of the ``m`` eligible sentences are inverted
    (a seeded permutation picks them); each gets one seeded swap position among
    its adjacent pairs of different words."""
    pairs = [[j for j in range(len(s) - 1) if s[j] != s[j + 1]] for s in sentences]
    eligible = [i for i, p in enumerate(pairs) if p]
    inverted = set(rng.permutation(eligible)[: len(eligible) // 2].tolist())
    out: list[tuple[str, list[str]] | None] = [None] * len(sentences)
    for i in eligible:
        words = list(sentences[i])
        if i in inverted:
            j = pairs[i][int(rng.integers(0, len(pairs[i])))]
            words[j], words[j + 1] = words[j + 1], words[j]
            out[i] = ("I", words)
        else:
            out[i] = ("O", words)
    return out


def sentence_length(sentences: list[list[str]], edges) -> list[tuple[str, list[str]] | None]:
    """Per sentence ``(bin label, words)``, or None when its length is in no bin."""
    edges = list(edges)
    out: list[tuple[str, list[str]] | None] = []
    for words in sentences:
        k = int(np.searchsorted(edges, len(words), side="right")) - 1
        out.append((f"{edges[k]}-{edges[k + 1] - 1}", list(words)) if 0 <= k < len(edges) - 1 else None)
    return out


def parse_edges(text: str) -> tuple[int, ...]:
    try:
        edges = tuple(int(x) for x in text.split(","))  # an empty item is a typo, not a bin edge to drop
    except ValueError:
        raise StrataError(f"--length-bins: {text!r} is not a comma-separated list of integers") from None
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] < 1:
        raise StrataError(f"--length-bins: need at least two increasing word counts >= 1, got {text!r}")
    return edges


def write_task(task: str, inputs: dict[str, str], fmt: str, out: str, *, seed: int = 0,
               edges=DEFAULT_LENGTH_EDGES, columns=None) -> TaskReport:
    """Derive ``task`` from the corpora ``inputs`` (split -> path) into the TSV ``out``.

    Each split draws from its own generator, ``default_rng([seed, k])`` with k = 0, 1, 2
    for train, dev, test whichever are given, so adding or leaving out a file never
    changes another split's rows.  The file is written to a temporary name and
    renamed, so ``out`` is never left half-written (nor the temporary file left behind)."""
    if task not in TASKS:
        raise StrataError(f"task: unknown task {task!r}, expected one of {', '.join(TASKS)}")
    if not inputs:
        raise StrataError("--train: give at least one input corpus (--train, --dev, --test)")
    report = TaskReport()
    lines: list[str] = []
    for split, path in inputs.items():
        try:
            sentences = read_corpus(path, fmt, columns=columns).sentences
        except StrataError as e:  # which of --train, --dev and --test
            raise StrataError(f"--{split}: {e}") from None
        if task == "bigram-shift":
            rows = bigram_shift(sentences, np.random.default_rng([seed, list(SPLITS).index(split)]))
        else:
            rows = sentence_length(sentences, edges)
        kept = [r for r in rows if r is not None]
        report.written[split], report.left_out[split] = len(kept), len(rows) - len(kept)
        for label, words in kept:
            clean = [_WHITESPACE.sub("_", w) for w in words]
            report.words_with_whitespace += sum(a != b for a, b in zip(clean, words))
            report.classes[label] = report.classes.get(label, 0) + 1
            lines.append(f"{SPLITS[split]}\t{label}\t{' '.join(clean)}\n")
    if not lines:
        raise StrataError(f"{task}: no sentence qualifies (all were left out)")
    if os.path.isdir(out):
        raise StrataError(f"--out: {out} is a directory; give the TSV file to write")
    tmp = f"{out}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.replace(tmp, out)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise StrataError(f"--out: cannot write {out}: {e.strerror or e}") from None
    return report
