"""Statistics of the CLS token's attention rows (Mosbach et al. 2020, seed ``002_*``, section 5.1).

A store extracted with ``--attention cls`` holds, per block, sentence and head, the
attention distribution of the CLS (first) token over the sentence's positions
(special tokens included), NaN past the sentence's end.  Rows are renormalized to
sum to 1 (they are stored in float16).

* **Entropy** of a row, in nats: ``-sum p log p`` (0 log 0 = 0); a uniform row over
  T positions has entropy log T.  Reported as the mean over sentences and heads.
* **Earth mover's distance** between the two models' rows for the same sentence
  and head, with positions as the ground metric (unit distance between neighbours):
  in one dimension it is the L1 distance between the two cumulative distributions
  (Wasserstein-1; ``scipy.stats.wasserstein_distance`` computes the same).
  Reported as the mean over sentences and heads.
"""

from __future__ import annotations

import numpy as np


def normalized(rows: np.ndarray) -> np.ndarray:
    """(..., positions) rows with NaN padding as 0 mass, each scaled to sum 1."""
    p = np.nan_to_num(rows.astype(np.float64), nan=0.0)
    total = p.sum(axis=-1, keepdims=True)
    return p / np.where(total > 0, total, 1.0)


def entropy(rows: np.ndarray) -> np.ndarray:
    """Entropy in nats of each row (last axis)."""
    p = normalized(rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)


def emd(rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """1-D earth mover's distance between matching rows (positions 0, 1, ... as ground metric)."""
    width = max(rows_a.shape[-1], rows_b.shape[-1])
    pad = lambda r: np.pad(normalized(r), [(0, 0)] * (r.ndim - 1) + [(0, width - r.shape[-1])])  # noqa: E731
    return np.abs(np.cumsum(pad(rows_a), axis=-1) - np.cumsum(pad(rows_b), axis=-1))[..., :-1].sum(axis=-1)


def attention_statistics(a, b, sentences: np.ndarray) -> dict:
    """Per-block mean entropy of each store's rows, over the given sentences and every head,
    and the mean EMD between the two models' rows of the same block, sentence and head;
    ``a``, ``b``: (block, sentence, head, position) zarr arrays, read one block at a time.

    The EMD pairs rows head by head and block by block, so it is computed only when both
    models have as many blocks and heads (``emd_not_computed`` says why otherwise); each
    model's entropies are given for all its blocks either way."""
    blocks_a, blocks_b, heads_a, heads_b = a.shape[0], b.shape[0], a.shape[2], b.shape[2]
    paired = blocks_a == blocks_b and heads_a == heads_b
    out = {"blocks": list(range(1, max(blocks_a, blocks_b) + 1)), "sentences": int(len(sentences)),
           "heads_a": int(heads_a), "heads_b": int(heads_b), "entropy_a": {}, "entropy_b": {}, "emd": {}}
    if not paired:
        out["emd_not_computed"] = (f"A has {blocks_a} blocks x {heads_a} heads, B {blocks_b} x {heads_b}: "
                                   "the EMD compares the same block and head of both")
    for k in range(max(blocks_a, blocks_b)):
        ra = a.get_orthogonal_selection((k, sentences)) if k < blocks_a else None
        rb = b.get_orthogonal_selection((k, sentences)) if k < blocks_b else None
        if ra is not None:
            out["entropy_a"][str(k + 1)] = float(entropy(ra).mean())
        if rb is not None:
            out["entropy_b"][str(k + 1)] = float(entropy(rb).mean())
        if paired:
            out["emd"][str(k + 1)] = float(emd(ra, rb).mean())
    return out
