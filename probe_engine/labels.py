"""Class indices shared by the train, dev and test stores.

Stores list their classes by name, each in its own sorted order, so a probe's
classes are the *names* present in the training rows, and dev/test codes are
mapped to them by name.  A dev/test token whose class never occurs in training
keeps index -2: the probe cannot predict it, so it counts as an error in
accuracy (and as nobody's true positive in the per-class metrics); its count is
reported, and such a class gets its own per-class entry (recall 0, support its count,
``in_training: false``), so the per-class supports add up to the rows scored.  Tokens
without a label (-1) are not rows at all.
"""

from __future__ import annotations

import numpy as np

from probe_engine.stores import ProbeStore
from store.errors import StrataError

MISSING, UNSEEN = -1, -2


def training_classes(store: ProbeStore, name: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Per-token class index, the class names present in training, their counts."""
    codes, names = store.labels(name)
    counts = np.bincount(codes[codes >= 0], minlength=len(names))
    present = np.flatnonzero(counts)
    if len(present) < 2:
        raise StrataError(f"--labels: {name!r} has {len(present)} class(es) in {store.path}; a probe needs two")
    index = np.full(len(names), MISSING, np.int64)
    index[present] = np.arange(len(present))
    y = np.where(codes >= 0, index[np.maximum(codes, 0)], MISSING)
    return y, [names[i] for i in present], counts[present]


def mapped_classes(store: ProbeStore, name: str, classes: list[str]) -> tuple[np.ndarray, int]:
    """Per-token class index of a dev/test store in the training classes, and how
    many labelled tokens have a class unseen in training (index -2)."""
    codes, names = store.labels(name)
    position = {c: i for i, c in enumerate(classes)}
    index = np.array([position.get(c, UNSEEN) for c in names] or [UNSEEN], np.int64)
    y = np.where(codes >= 0, index[np.maximum(codes, 0)], MISSING)
    return y, int(np.count_nonzero(y == UNSEEN))


def unseen_class_counts(store: ProbeStore, name: str, classes: list[str]) -> dict[str, int]:
    """Labelled tokens of a dev/test store per class name the training rows lack (the
    per-class metrics list these classes too: recall 0, never predicted)."""
    codes, names = store.labels(name)
    known = set(classes)
    counts = np.bincount(codes[codes >= 0], minlength=len(names))
    return {c: int(n) for c, n in zip(names, counts) if n and c not in known}
