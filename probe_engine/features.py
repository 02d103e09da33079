"""The chunk reader: a feature set of a store as row blocks for the solver.

A *feature set* is one layer, or several layers concatenated (neuron-level
probes read all layers side by side).  Its rows are the store's tokens that
carry a label.  Dask reads the store (``dask.array.from_zarr``) and cuts the
token axis into blocks aligned with the store's chunks; the same ``read_block``
feeds both the in-memory path (all blocks read once) and the streamed path
(blocks read again on every pass), which is why both give the same bits.

Features are standardized with the training rows' mean and population standard
deviation (features that are constant in training are only centred).
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np

from probe_engine.blocks import InMemoryBlocks, StreamedBlocks, standardize
from probe_engine.row_tasks import map_on_cores, row_slices
from probe_engine.stores import ProbeStore
from store.errors import StrataError

#: Largest block of rows (logits of a block are rows x probes x classes floats).
MAX_BLOCK_TOKENS = 16384
LOGIT_BUDGET_BYTES = 64 << 20


#: Rows per task of :meth:`FeatureSet.statistics` (a float64 copy of 2,048 x 2,688 is 44 MB).
STATISTICS_ROWS = 2048


def _moments(rows: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """``(count, mean, centred sum of squares)`` of ``rows`` per column, in float64."""
    x = rows.astype(np.float64)
    mean = x.mean(axis=0)
    x -= mean
    return len(x), mean, np.einsum("ij,ij->j", x, x)


def block_tokens_for(n_outputs: int, chunk_tokens: int) -> int:
    """Rows per block for ``n_outputs`` = probes x classes: the logits buffer stays
    near ``LOGIT_BUDGET_BYTES``; a multiple of the store's chunk so reads align."""
    rows = min(MAX_BLOCK_TOKENS, max(1024, LOGIT_BUDGET_BYTES // (4 * max(1, n_outputs))))
    return max(chunk_tokens, rows // chunk_tokens * chunk_tokens)


@dataclass
class Standardizer:
    mean: np.ndarray  # float32 (d,)
    scale: np.ndarray  # float32 (d,)


class FeatureSet:
    """Rows of ``store`` with a class index ``y >= 0`` (or ``-2``: unseen in training),
    features = the store layers at ``positions`` side by side."""

    def __init__(self, store: ProbeStore, positions: list[int], y_tokens: np.ndarray, block_tokens: int):
        self.store, self.positions = store, list(positions)
        self.y_tokens = y_tokens  # per token: class index, -1 missing (dropped), -2 unseen (kept)
        # Dask chunks of a whole block per layer, not the store's 1,024-token chunks: dask
        # then asks zarr for a block's rows in one call, and zarr reads its chunks in one
        # go (a 5,120 x 384 float16 block of one layer: 14.7 ms instead of 20.5, all 7
        # layers 89 instead of 127; the streamed path pays this on every pass).
        acts = da.from_zarr(store.features, chunks=(1, block_tokens, store.features.shape[2]))
        self.X = da.concatenate([acts[p] for p in self.positions], axis=1).rechunk((block_tokens, -1))
        self.block_tokens = block_tokens
        self.n_blocks = len(self.X.chunks[0])
        self.n_rows = int(np.count_nonzero(y_tokens != -1))
        self.n_features = int(self.X.shape[1])

    def rows_in_block(self, i: int) -> tuple[slice, np.ndarray]:
        start = i * self.block_tokens
        stop = min(start + self.block_tokens, len(self.y_tokens))
        return slice(start, stop), self.y_tokens[start:stop] != -1

    def statistics(self, raws=None) -> Standardizer:
        """Training mean and population standard deviation in float64; refuses non-finite
        activations, naming the store, layer and neuron.  ``raws``: every block's
        :meth:`read_raw`, when the caller holds them (else they are read here).

        Computed slice by slice (``STATISTICS_ROWS``) on every core: each slice's mean and
        centred sum of squares, merged in slice order (Chan, Golub & LeVeque, "Updating
        formulae and a pairwise algorithm for computing sample variances", 1979), so the
        same bits on any machine and whether the blocks are then held or streamed.  By hand
        because dask's float64 graph for the same two moments took 2.6-4.0 s on the 2,688
        neuron-level features of 51k training rows, this 0.9 s (Intel Xeon, 2 cores)."""
        n, mean, m2 = 0, np.zeros(self.n_features), np.zeros(self.n_features)
        for i in range(self.n_blocks):
            raw = raws[i][0] if raws is not None else self.read_raw(i)[0]
            finite = np.isfinite(raw).all(axis=0)
            if not finite.all():
                raise self._non_finite(int(np.flatnonzero(~finite)[0]))
            slices = [raw[rows] for rows in row_slices(len(raw), STATISTICS_ROWS)]
            for k, part_mean, part_m2 in map_on_cores(_moments, slices):
                total = n + k
                delta = part_mean - mean
                mean = mean + delta * (k / total)
                m2 = m2 + part_m2 + delta ** 2 * (n * k / total)
                n = total
        std = np.sqrt(m2 / max(n, 1))
        return Standardizer(mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32))

    def statistics_and_blocks(self, xp, *, in_memory: bool, hold_bytes: int = 0):
        """:meth:`statistics` and :meth:`blocks` together: held training rows are read once
        for both (each raw block freed as it is standardized), streamed ones twice."""
        if not in_memory:
            stats = self.statistics()
            return stats, self.blocks(stats, xp, in_memory=False, hold_bytes=hold_bytes)
        raws = [self.read_raw(i) for i in range(self.n_blocks)]
        stats = self.statistics(raws)

        def finished():
            for i in range(len(raws)):
                pair, raws[i] = raws[i], None
                yield self.finish(pair, stats, xp)

        return stats, InMemoryBlocks(finished(), self.n_features)

    def _non_finite(self, col: int) -> StrataError:
        hidden = self.store.features.shape[2]
        layer = self.store.layers[self.positions[col // hidden]]
        return StrataError(f"{self.store.option}: {self.store.path} has non-finite activations "
                           f"(layer {layer}, neuron {col % hidden})")

    def labels_in_block(self, i: int) -> np.ndarray:
        """Block ``i``'s class indices (its labelled rows only), on the host."""
        tokens, keep = self.rows_in_block(i)
        return self.y_tokens[tokens][keep]

    def read_raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Block ``i``'s labelled rows as stored (float16 by default) and their class indices, on the host."""
        _, keep = self.rows_in_block(i)
        return self.store.read(lambda: self.X.blocks[i].compute(scheduler="threads"))[keep], self.labels_in_block(i)

    def read_checked(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`read_raw`, refusing non-finite activations (naming layer and neuron): dev and
        test rows get no statistics pass, which is where the training rows are checked."""
        raw, y = self.read_raw(i)
        finite = np.isfinite(raw).all(axis=0)
        if not finite.all():
            raise self._non_finite(int(np.flatnonzero(~finite)[0]))
        return raw, y

    @staticmethod
    def finish(pair, stats: Standardizer, xp):
        """Raw rows -> standardized float32 features and class indices, on the device."""
        raw, y = pair
        return xp.asarray(standardize(raw, stats.mean, stats.scale)), xp.asarray(y)

    def read_block(self, i: int, stats: Standardizer, xp):
        """Block ``i``: standardized float32 features and class indices, on the device."""
        return self.finish(self.read_raw(i), stats, xp)

    def blocks(self, stats: Standardizer, xp, *, in_memory: bool, hold_bytes: int = 0, check_finite: bool = False):
        """All blocks held standardized (``in_memory``), or streamed on every pass with as
        many of the first blocks held, as stored, as ``hold_bytes`` allows.  ``check_finite``:
        refuse non-finite activations as they are read (:meth:`read_checked`)."""
        read = self.read_checked if check_finite else self.read_raw
        if in_memory:
            return InMemoryBlocks((self.finish(read(i), stats, xp) for i in range(self.n_blocks)), self.n_features)
        held_bytes = np.cumsum([self._stored_bytes(i) for i in range(self.n_blocks)])
        keep = int(np.searchsorted(held_bytes, hold_bytes, side="right"))  # leading blocks that fit, as stored
        if xp is np:  # on the host the data pass standardizes each row slice itself (row_sources)
            return StreamedBlocks(read, self.n_blocks, self.n_rows, self.n_features, keep=keep,
                                  finish_rows=lambda raw: standardize(raw, stats.mean, stats.scale))
        # The next block is finished on the prefetch thread, whose current CUDA device is its
        # own (device 0), not the one --device cuda:N chose on the main thread; and the
        # host-to-device copy is asynchronous on that thread's stream, so it is waited for
        # before the main thread (maybe on another stream) reads the block.
        device = xp.cuda.Device()

        def finish_on_device(pair):
            with device:
                block = self.finish(pair, stats, xp)
                xp.cuda.get_current_stream().synchronize()
            return block

        return StreamedBlocks(read, self.n_blocks, self.n_rows, self.n_features, keep=keep, finish=finish_on_device)

    def relabeled(self, blocks, source: "FeatureSet", xp):
        """``blocks`` of ``source`` (the same store and layers) with this set's labels
        instead: the features are shared, not read or held again (the neuron pipeline's
        control task trains on the task's features).  Both label sets must keep the same
        rows."""
        if not np.array_equal(self.y_tokens != -1, source.y_tokens != -1) or self.block_tokens != source.block_tokens:
            raise ValueError("relabeled: the two label sets keep different rows")
        labels = [self.labels_in_block(i) for i in range(self.n_blocks)]
        if isinstance(blocks, InMemoryBlocks):
            return InMemoryBlocks([(X, xp.asarray(y)) for (X, _), y in zip(blocks.pairs, labels, strict=True)],
                                  self.n_features)
        return blocks.relabeled(labels)

    def held_bytes(self, blocks) -> int:
        """Bytes of features ``blocks`` (from :meth:`blocks`) hold in memory."""
        if isinstance(blocks, InMemoryBlocks):
            return self.memory_bytes()
        return sum(self._stored_bytes(i) for i in range(min(blocks.keep, self.n_blocks)))

    def _stored_bytes(self, i: int) -> int:
        """Bytes of block ``i``'s labelled rows as stored (what a held streamed block takes)."""
        return int(np.count_nonzero(self.rows_in_block(i)[1])) * self.n_features * self.X.dtype.itemsize

    def memory_bytes(self) -> int:
        """Bytes the standardized float32 rows take when held in memory."""
        return self.n_rows * self.n_features * 4
