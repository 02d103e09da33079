"""A block's rows cut into fixed slices that run on every CPU core, combined in order.

Why: a data pass is two GEMMs and a softmax.  BLAS threads speed up the GEMMs,
but numpy's element-wise work (exp, max, sums, the one-hot update) runs on one
core, and with 64 probes over 50 classes it was half of a pass on this 2-core
machine.  Cutting each block's rows into slices of ``ROWS_PER_TASK`` and running
the slices on a thread pool (numpy and OpenBLAS release the GIL), with BLAS at
one thread per slice, keeps every core busy on both parts.

The slices do not depend on the number of cores, and their partial results are
combined in slice order by the caller, so a pass gives the same bits on any
machine size and under any thread schedule.  On the GPU a block is one task:
CuPy kernels already use the whole device.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np

#: Rows per task.  Slices keep a task's (rows, probes * classes) logits in cache for the
#: softmax's several element-wise passes and share a block evenly among cores, while each
#: task's fixed cost (the hand-off to a thread, the BLAS calls) stays small against its GEMMs.
#: Measured on the Intel Xeon (2 cores, 2 MB L2 per core), 2026-12-01: OWL-QN passes over
#: MiniLM layer 4 (51,037 x 384, 49 classes), 30 passes per sample, 1024 rows vs 512: 8 probes
#: 257-273 vs 300-323 ms, 4 probes 172-187 vs 189-191 ms, 64 probes 1.76-2.08 vs 1.84-2.09 s,
#: 1 probe 83-96 vs 86-101 ms (2048 rows gained nothing more).  On the AMD EPYC of
#: 2026-11-24, 64 probes had taken 1.44-1.58 s at 512 rows and 1.59-1.68 s at 1024.
ROWS_PER_TASK = 1024


@cache
def _pool() -> ThreadPoolExecutor | None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return ThreadPoolExecutor(cores, thread_name_prefix="strata-rows") if cores > 1 else None


@cache
def _blas():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def row_slices(n_rows: int, rows: int | None = None) -> list[slice]:
    """``n_rows`` cut into slices of ``rows`` (default ``ROWS_PER_TASK``), the last one shorter."""
    rows = ROWS_PER_TASK if rows is None else rows
    return [slice(lo, min(lo + rows, n_rows)) for lo in range(0, n_rows, rows)]


class SlicedRows:
    """A block's rows as read from the store (float16 by default), finished on the host one
    row slice at a time: ``rows[s]`` is ``finish_rows(raw[s])``.

    Why: a streamed pass used to standardize each whole block into a float32 buffer (on the
    prefetch thread, competing with the pass for the 2 cores) and then read that buffer back
    slice by slice.  Handed to :func:`map_row_slices` instead, each row task standardizes
    its own slice just before its GEMMs, on every core, while the slice is in cache.
    ``finish_rows`` must work row by row, so any cut gives the same bits as the whole block.
    """

    def __init__(self, raw, finish_rows):
        self.raw, self.finish_rows = raw, finish_rows

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, rows):
        return self.finish_rows(self.raw[rows])


def map_row_slices(task, X, y) -> list:
    """``[task(X[s], y[s]) for s in row_slices(len(y))]``, run concurrently on the CPU.

    ``X``: a host array or :class:`SlicedRows`, or a CuPy array (one task, the whole block).
    ``task`` must only read shared arrays; its results come back in slice order.
    """
    if not isinstance(X, (np.ndarray, SlicedRows)):  # CuPy: one task per block
        return [task(X, y)]
    slices = row_slices(len(y))
    pool = _pool()
    if pool is None or len(slices) == 1:
        return [task(X[s], y[s]) for s in slices]
    with _blas().limit(limits=1, user_api="blas"):
        return list(pool.map(lambda s: task(X[s], y[s]), slices))


def map_on_cores(task, items) -> list:
    """``[task(item) for item in items]`` on the same pool, one BLAS thread per task: for
    independent host products too small to keep BLAS's own threads busy (the preconditioner's
    per-support eigenvector products, ~50 output columns each).  Results in item order."""
    items = list(items)
    pool = _pool()
    if pool is None or len(items) < 2:
        return [task(item) for item in items]
    with _blas().limit(limits=1, user_api="blas"):
        return list(pool.map(task, items))
