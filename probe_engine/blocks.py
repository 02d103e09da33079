"""Row blocks of a feature matrix, as the solver reads them.

The solver sees any iterable of ``(X, y)`` device arrays with ``n_rows`` and
``n_features``.  Two kinds: blocks held in memory, and blocks streamed from
their source on every pass with the next block read in the background while the
current one is computed on.  Both cut the rows at the same places and
standardize each block with the same arithmetic, so a probe trained either way
is bitwise the same.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from probe_engine.row_tasks import SlicedRows, row_slices


#: Rows standardized at a time: 512 x 384 float32 out and float16 in stay well inside a 2 MB L2.
STANDARDIZE_ROWS = 512


def standardize(X: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32 ``(X - mean) / scale``; the one place features are standardized.

    Computed slice by slice (``STANDARDIZE_ROWS``) into one buffer, so each slice's cast,
    subtraction and division run while it is in cache, with no whole-block temporaries: the
    same bits as the one-line expression, in about half its time (19 vs 37 ms, 16,384 x 384
    float16 rows).  A streamed pass's row tasks call it on their own slices (SlicedRows)."""
    out = np.empty(X.shape, dtype=np.float32)
    for rows in row_slices(len(X), STANDARDIZE_ROWS):
        part = out[rows]
        part[...] = X[rows]
        part -= mean
        part /= scale
    return out


class InMemoryBlocks:
    """Blocks kept on the device (host RAM for NumPy, GPU memory for CuPy)."""

    def __init__(self, pairs, n_features: int):
        self.pairs = list(pairs)
        self.n_rows = sum(len(y) for _, y in self.pairs)
        self.n_features = n_features

    def __iter__(self):
        return iter(self.pairs)

    def row_sources(self):
        """The pairs a pass cut into row slices reads (:func:`~probe_engine.row_tasks.map_row_slices`)."""
        return iter(self)


class StreamedBlocks:
    """Blocks produced by ``finish(read(i))`` on every pass; block ``i + 1`` is prepared
    in a background thread while block ``i`` is used (decompression releases the GIL).

    The first ``keep`` blocks are held after their first ``read``, as ``read`` returns
    them (the chunk reader returns rows in the store's dtype, float16 by default: half
    the bytes of the standardized float32 rows), and only ``finish`` (standardizing, to
    the device) is repeated for them.  So a memory cap below the data's float32 size
    holds twice the rows it could hold standardized, and a cap a little below the data
    size costs a little work, not a full re-read of every block on every pass.

    ``finish_rows`` (host blocks only, instead of ``finish``): a finish that works row by
    row on the features, ``y`` left as read.  A pass cut into row slices then gets the
    blocks unfinished from :meth:`row_sources` and each row task finishes its own slice
    (:class:`~probe_engine.row_tasks.SlicedRows`); every other reader gets them finished.
    """

    def __init__(self, read, n_blocks: int, n_rows: int, n_features: int, keep: int = 0, finish=None,
                 finish_rows=None):
        if finish is not None and finish_rows is not None:
            raise ValueError("StreamedBlocks takes finish or finish_rows, not both")
        self.read, self.n_blocks = read, n_blocks
        self.finish_rows = finish_rows
        if finish_rows is not None:
            finish = lambda pair: (finish_rows(pair[0]), pair[1])  # noqa: E731
        self.finish = finish if finish is not None else (lambda pair: pair)
        self.n_rows, self.n_features = n_rows, n_features
        self.keep, self.held = keep, {}

    def _raw(self, i: int):
        """Block ``i`` as read: held after its first read when ``i < keep``."""
        if i in self.held:
            return self.held[i]
        raw = self.read(i)
        if i < self.keep:
            self.held[i] = raw
        return raw

    def _prefetched(self, prepare):
        """``prepare(i)`` for every block in order, block ``i + 1``'s on a background thread."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="strata-prefetch") as pool:
            pending = pool.submit(prepare, 0) if self.n_blocks else None
            for i in range(self.n_blocks):
                current = pending.result()
                pending = pool.submit(prepare, i + 1) if i + 1 < self.n_blocks else None
                yield current

    def __iter__(self):
        return self._prefetched(lambda i: self.finish(self._raw(i)))

    def relabeled(self, labels):
        """The same features with ``labels[i]`` (host class indices) as block ``i``'s
        labels: blocks held here stay the only copy, the others are read again as here."""
        return StreamedBlocks(lambda i: (self._raw(i)[0], labels[i]), self.n_blocks, self.n_rows, self.n_features,
                              finish=None if self.finish_rows is not None else self.finish,
                              finish_rows=self.finish_rows)

    def row_sources(self):
        """The pairs a pass cut into row slices reads: with ``finish_rows``, each block's
        features unfinished as :class:`~probe_engine.row_tasks.SlicedRows` (a held float16
        block's pass then costs 1.1-1.2x an in-memory one instead of 1.3-1.4x, see
        bench/results); otherwise the same pairs as iterating."""
        if self.finish_rows is None:
            return iter(self)

        def unfinished(i):
            raw, y = self._raw(i)
            return SlicedRows(raw, self.finish_rows), y

        return self._prefetched(unfinished)


class ColumnBlocks:
    """The same row blocks restricted to ``columns``: probes whose supports all lie in
    a few columns (top-k neuron sets) then pay for those columns only, instead of
    masking the rest inside full-width products.  Gathered once when the source is
    held in memory, on every pass when it is streamed."""

    def __init__(self, blocks, columns, xp):
        self.columns = xp.asarray(columns)
        self.n_rows, self.n_features = blocks.n_rows, len(columns)
        self.source, self._xp = blocks, xp
        held = isinstance(blocks, InMemoryBlocks) or getattr(blocks, "pairs", None) is not None
        self.pairs = [(xp.ascontiguousarray(X[:, self.columns]), y) for X, y in blocks] if held else None

    def __iter__(self):
        if self.pairs is not None:
            return iter(self.pairs)
        # C order as the held copy: numpy's column gather comes out in Fortran order, and
        # BLAS sums X^T Z in another order then (other bits than the held rows)
        return ((self._xp.ascontiguousarray(X[:, self.columns]), y) for X, y in self.source)

    def row_sources(self):
        return iter(self)
