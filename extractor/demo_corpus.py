"""A small tagged English corpus generated from templates, for the demo.

``make demo`` must run with no network and no files from outside the
repository, so the corpus is generated here: seeded, deterministic sentences
with UPOS and Penn Treebank tags, written as CoNLL-U.
"""

from __future__ import annotations

import random
from pathlib import Path

# (form, UPOS, XPOS) choices per slot
DET = [("the", "DET", "DT"), ("a", "DET", "DT"), ("every", "DET", "DT"), ("this", "DET", "DT")]
ADJ = [(w, "ADJ", "JJ") for w in ("small", "curious", "old", "bright", "quiet", "famous", "green", "heavy")]
NOUN = [(w, "NOUN", "NN") for w in ("dog", "teacher", "river", "machine", "garden", "student", "city", "letter",
                                    "model", "window", "farmer", "song")]
NOUNS = [(w, "NOUN", "NNS") for w in ("dogs", "teachers", "rivers", "machines", "students", "letters", "songs")]
PROPN = [(w, "PROPN", "NNP") for w in ("Alice", "Berlin", "Kofi", "Mumbai", "Ines", "Oslo")]
VERB_PAST = [(w, "VERB", "VBD") for w in ("found", "watched", "painted", "followed", "opened", "described")]
VERB_PRES = [(w, "VERB", "VBZ") for w in ("finds", "watches", "paints", "follows", "opens", "describes")]
ADV = [(w, "ADV", "RB") for w in ("quickly", "quietly", "often", "never", "carefully")]
ADP = [(w, "ADP", "IN") for w in ("near", "behind", "under", "with", "after")]
PRON = [(w, "PRON", "PRP") for w in ("she", "he", "they", "we")]
AUX = [("will", "AUX", "MD"), ("can", "AUX", "MD")]
VERB_BASE = [(w, "VERB", "VB") for w in ("find", "watch", "paint", "follow", "open", "describe")]
CCONJ = [("and", "CCONJ", "CC"), ("but", "CCONJ", "CC")]
PERIOD = ("." , "PUNCT", ".")


def _noun_phrase(rng: random.Random) -> list[tuple[str, str, str]]:
    if rng.random() < 0.2:
        return [rng.choice(PROPN)]
    phrase = [rng.choice(DET)]
    if rng.random() < 0.6:
        phrase.append(rng.choice(ADJ))
    phrase.append(rng.choice(NOUN))
    return phrase


def _clause(rng: random.Random) -> list[tuple[str, str, str]]:
    kind = rng.randrange(4)
    if kind == 0:
        words = _noun_phrase(rng) + [rng.choice(VERB_PAST)] + _noun_phrase(rng)
    elif kind == 1:
        words = [rng.choice(PRON), rng.choice(AUX), rng.choice(VERB_BASE)] + _noun_phrase(rng)
    elif kind == 2:
        words = _noun_phrase(rng) + [rng.choice(VERB_PRES)] + _noun_phrase(rng) + [rng.choice(ADP)] \
            + _noun_phrase(rng)
    else:
        words = [rng.choice(NOUNS), rng.choice(ADV), rng.choice(VERB_PAST)] + _noun_phrase(rng)
    return words


def sentence(rng: random.Random) -> list[tuple[str, str, str]]:
    words = _clause(rng)
    if rng.random() < 0.3:
        words += [rng.choice(CCONJ)] + _clause(rng)
    words.append(PERIOD)
    form, upos, xpos = words[0]
    words[0] = (form[0].upper() + form[1:], upos, xpos)
    return words


def write_demo_corpus(path: Path, n_sentences: int = 400, seed: int = 0) -> Path:
    """Write ``n_sentences`` generated sentences as CoNLL-U."""
    rng = random.Random(seed)
    lines = []
    for k in range(n_sentences):
        words = sentence(rng)
        lines.append(f"# sent_id = demo-{k}")
        lines.append("# text = " + " ".join(w for w, _, _ in words))
        for i, (form, upos, xpos) in enumerate(words, start=1):
            lines.append(f"{i}\t{form}\t{form.lower()}\t{upos}\t{xpos}\t_\t0\tdep\t_\t_")
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
