"""Neuron rankings: which features a label set lives in, most salient first.

* ``lca_ordering``: Linguistic Correlation Analysis (Dalvi et al., "What is one
  grain of sand in the desert?", AAAI 2019), as NeuroX's ``get_neuron_ordering``
  does it.  For a weight-mass percentage p, each class keeps its neurons sorted
  by |weight|, descending, up to and including the one where their cumulative
  |weight| reaches p of that class's total; the union over classes is the top set
  at p.  Growing p from 0 to 1 in ``stride`` steps, each step appends the neurons
  it adds.  NeuroX leaves the order inside a step arbitrary (a Python set); here
  it is fixed: by the neuron's largest share of a class's mass, descending, then
  by neuron index.  Neurons whose weight is exactly 0 for every class (elastic
  net zeros) never enter a top set; they come last, by index.
* ``probeless_ordering``: Antverg & Belinkov (ICLR 2022): no training; a neuron's
  score is the sum over all pairs of classes of the absolute difference of the
  two class means; ties by index.

Both work in standardized feature space (each neuron divided by its training
standard deviation): probe weights are only comparable across neurons on
features of the same scale, and class-mean differences likewise.
"""

from __future__ import annotations

import numpy as np

from probe_engine.backend import module_of, to_numpy


def finite_matrix(name: str, values, shape_text: str) -> np.ndarray:
    """``values`` as a float64 matrix, refusing (naming ``name``) any other rank, an empty
    one, and NaN or inf, which would give an ordering without an error."""
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError(f"{name}: expected a non-empty {shape_text} matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name}: has NaN or inf entries")
    return matrix


def lca_ordering(W: np.ndarray, stride: int = 100) -> tuple[np.ndarray, list[int]]:
    """Global ordering of the ``d`` neurons of a probe ``W (d, C)`` (a fitted
    ElasticNetProbe's ``coef_standardized_.T``) and the cutoffs (ordering length after
    each percentage step)."""
    if not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride: expected a positive number of percentage steps, got {stride!r}")
    A = np.abs(finite_matrix("W", W, "(neurons, classes)"))
    d, C = A.shape
    order = np.argsort(-A, axis=0, kind="stable")  # per class, descending |w|, ties by index
    cums = np.take_along_axis(A, order, axis=0).cumsum(axis=0)  # (d, C)
    # each class's total as the last cumulative sum: compared with the same sums, and the
    # same bits whatever W's memory layout (a pairwise A.sum rounds by layout, and at exact
    # ties which neuron entered a step depended on it)
    total = cums[-1]
    share = np.divide(A, total, out=np.zeros_like(A), where=total > 0).max(axis=1)
    placed = np.zeros(d, bool)
    ordering, cutoffs = [], []
    for step in range(stride + 1):
        p = step / stride
        top = np.zeros(d, bool)
        for c in range(C):
            if total[c] == 0:
                continue
            reach = np.flatnonzero(cums[:, c] >= total[c] * p)
            n = reach[0] + 1 if len(reach) else d
            top[order[:n, c]] = True
        if step == stride:  # 100% of the mass: every weighted neuron, also one below rounding
            top[:] = True
        top &= A.max(axis=1) > 0  # a zero-weight neuron carries no mass
        new = np.flatnonzero(top & ~placed)
        new = new[np.lexsort((new, -share[new]))]
        ordering.extend(new.tolist())
        placed[new] = True
        cutoffs.append(len(ordering))
    rest = np.flatnonzero(~placed)
    ordering.extend(rest.tolist())
    return np.asarray(ordering, dtype=np.int64), cutoffs


def class_means(blocks, n_classes: int) -> np.ndarray:
    """Per-class mean of the features over the rows of ``blocks``, ``(C, d)`` float64 (one pass)."""
    sums, counts = None, np.zeros(n_classes, np.int64)
    for X, y in blocks:
        xp = module_of(X)
        onehot = (y[:, None] == xp.arange(n_classes)[None, :]).astype(X.dtype)
        part = to_numpy(onehot.T @ X).astype(np.float64)
        sums = part if sums is None else sums + part
        counts += np.bincount(to_numpy(y), minlength=n_classes)
    return sums / np.maximum(counts, 1)[:, None]


def probeless_ordering(means: np.ndarray) -> np.ndarray:
    """Ordering from class means ``(C, d)``: sum over class pairs of |mean_a - mean_b|, descending."""
    means = finite_matrix("means", means, "(classes, neurons)")
    score = np.zeros(means.shape[1])
    for a in range(len(means)):
        score += np.abs(means[a] - means[a + 1:]).sum(axis=0)
    return np.lexsort((np.arange(len(score)), -score)).astype(np.int64)
