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
    """Per-block mean entropy of each store's rows and mean EMD between them, over the
    given sentences and every head; ``a``, ``b``: (block, sentence, head, position) zarr
    arrays, read one block at a time."""
    blocks = min(a.shape[0], b.shape[0])
    out = {"blocks": list(range(1, blocks + 1)), "sentences": int(len(sentences)),
           "entropy_a": {}, "entropy_b": {}, "emd": {}}
    for k in range(blocks):
        ra, rb = a.get_orthogonal_selection((k, sentences)), b.get_orthogonal_selection((k, sentences))
        out["entropy_a"][str(k + 1)] = float(entropy(ra).mean())
        out["entropy_b"][str(k + 1)] = float(entropy(rb).mean())
        out["emd"][str(k + 1)] = float(emd(ra, rb).mean())
    return out
