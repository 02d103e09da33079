"""Which probes of a batch share one GEMM, when each probe reads its own columns.

Probes restricted to different supports (the top-k retrainings of a minimal-neuron
search: 20 nested sets from 1% to 20% of the neurons) can all be computed as one
product over the union of their columns, each probe's weights masked to its own
(the classic batching).  That pays the widest support for every probe: for nested
top-k sets about twice the flops the probes need.  One GEMM per probe pays only
what each needs, but a product with few output columns (one probe: ~50 classes)
runs far below the machine's GEMM rate.  Between the two, probes sorted by support
size are cut into runs, each run one GEMM over the union of its columns, choosing
the cuts that minimize a cost model of the products (dynamic programming over the
sorted order, as in optimal 1-D segmentation).  Every group still runs in the same
data pass, on the same row slices.
"""

from __future__ import annotations

import numpy as np

#: The cost of a product ``(rows, w) @ (w, N)`` is modelled as ``w * (N + GEMM_FIXED_COLUMNS)``:
#: a narrow product's fixed share of memory traffic and blocking overhead, in output columns,
#: plus what each group adds to a row task (its softmax calls, a gather when its columns are
#: not one slice).  Measured on the Intel Xeon (2 cores, other jobs running), 2026-12-01:
#: X (1,024 x 538) @ W and X^T @ Z on one BLAS thread fit ``w * (N + 16)``; one pass of 20
#: nested top-k probes (1-20% of 2,688 neurons, 45 classes, 16,384 rows), medians of 5:
#: one group 543 ms, 4 groups (constant 90) 434 ms, 5 (45) 384 ms, 9 (20) 386 ms, one per
#: probe 517 ms.
GEMM_FIXED_COLUMNS = 45

#: Split a batch only when the model says the groups cost at most this share of one product.
SPLIT_GAIN = 0.9


def partition(supports: np.ndarray, n_classes: int) -> list[np.ndarray]:
    """Probe groups (host index arrays, each sorted, together every probe once) for a
    boolean ``supports (d, P)``; one group of all probes when splitting would not pay."""
    d, P = supports.shape
    everyone = [np.arange(P)]
    if P < 2:
        return everyone
    order = np.argsort(supports.sum(axis=0), kind="stable")  # narrow supports first
    S = supports[:, order]
    width = np.zeros((P, P + 1), dtype=np.int64)  # width[i, j]: columns of the run order[i:j]
    for i in range(P):
        width[i, i + 1:] = np.logical_or.accumulate(S[:, i:], axis=1).sum(axis=0)

    def cost(i: int, j: int) -> float:
        return float(width[i, j]) * ((j - i) * n_classes + GEMM_FIXED_COLUMNS)

    best, cut = np.full(P + 1, np.inf), np.zeros(P + 1, dtype=np.int64)
    best[0] = 0.0
    for j in range(1, P + 1):
        for i in range(j):
            c = best[i] + cost(i, j)
            if c < best[j]:
                best[j], cut[j] = c, i
    if best[P] > SPLIT_GAIN * cost(0, P):
        return everyone
    runs, j = [], P
    while j > 0:
        runs.append(np.sort(order[cut[j]:j]))
        j = int(cut[j])
    return runs[::-1]


def column_order(supports: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """The union's columns, ordered so that nested groups are prefixes: each column ranked
    by the smallest group (in columns) that reads it, then by index.  For the top-k sets of
    one ranking every group's columns are then one slice of the narrowed rows (no gather),
    and stay one when groups leave the batch."""
    used = supports.any(axis=1)
    rank = np.full(supports.shape[0], np.iinfo(np.int64).max, dtype=np.int64)
    for g in groups:
        cols = supports[:, g].any(axis=1)
        rank = np.where(cols, np.minimum(rank, int(cols.sum())), rank)
    columns = np.flatnonzero(used)
    return columns[np.lexsort((columns, rank[columns]))]


def as_slice(positions: np.ndarray) -> slice | None:
    """``positions`` (sorted host ints) as a slice when they are one contiguous run."""
    if len(positions) and positions[-1] - positions[0] + 1 == len(positions):
        return slice(int(positions[0]), int(positions[-1]) + 1)
    return None
