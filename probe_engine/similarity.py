"""Representational similarity between two sets of activations of the same tokens.

* **Linear CKA** (Kornblith, Norouzi, Lee & Hinton, "Similarity of neural network
  representations revisited", ICML 2019), in its feature-space form for n >> d:
  ``CKA(X, Y) = |Xc' Yc|_F^2 / (|Xc' Xc|_F |Yc' Yc|_F)`` with ``Xc``, ``Yc`` the
  column-centred activations.  Only d x d cross-products are needed, and they
  are sums over rows, so they accumulate block by block (:class:`CrossProducts`).
* **RSA** (Kriegeskorte et al. 2008, as Merchant et al. 2020 use it, seed
  ``003_*`` section 5.1): on a sample of n tokens, the cosine-similarity matrix of
  each representation, and the Pearson correlation of the two matrices' upper
  triangles (diagonal excluded).

Both scores are computed so that a representation compared with itself gives
exactly 1.0: the final ratio is ``a / sqrt(b * c)`` with ``a = b = c`` bitwise in
that case, and IEEE arithmetic gives ``sqrt(x * x) == x``.
"""

from __future__ import annotations

import numpy as np

from probe_engine.backend import module_of, to_numpy


class CrossProducts:
    """Running centred cross-products of X (Lx layers) against Y (Ly layers).

    Rows are shifted by a fixed per-layer vector (the first block's mean) before
    the products: the centred product is then ``S' T - n m_s m_t'`` with small
    ``m_s``, ``m_t`` (means of the shifted data), which avoids the cancellation
    of the textbook ``X' Y - n mu nu'`` when activations have large means (the
    "shifted data" algorithm of Chan, Golub & LeVeque 1983).  Each block's
    products are float32 GEMMs summed into float64, in block order, so results
    are deterministic.
    """

    def __init__(self):
        self.n = 0
        self.shift_x = self.shift_y = None

    def add(self, x, y) -> None:
        """``x``: (Lx, rows, d) and ``y``: (Ly, rows, e) of the same rows, float32, on the device."""
        xp = module_of(x)
        if self.shift_x is None:
            self.shift_x, self.shift_y = x.mean(axis=1, keepdims=True), y.mean(axis=1, keepdims=True)
            Lx, Ly, d, e = x.shape[0], y.shape[0], x.shape[2], y.shape[2]
            self.xy = xp.zeros((Lx, Ly, d, e), xp.float64)
            self.xx, self.yy = xp.zeros((Lx, d, d), xp.float64), xp.zeros((Ly, e, e), xp.float64)
            self.sx, self.sy = xp.zeros((Lx, d), xp.float64), xp.zeros((Ly, e), xp.float64)
        s = xp.ascontiguousarray(x - self.shift_x)
        t = xp.ascontiguousarray(y - self.shift_y)
        for i in range(s.shape[0]):
            self.xx[i] += _gram(s[i], s[i].copy())
            for j in range(t.shape[0]):
                self.xy[i, j] += _gram(s[i], t[j])
        for j in range(t.shape[0]):
            self.yy[j] += _gram(t[j], t[j].copy())
        self.sx += s.sum(axis=1, dtype=xp.float64)
        self.sy += t.sum(axis=1, dtype=xp.float64)
        self.n += x.shape[1]

    def cka(self) -> np.ndarray:
        """(Lx, Ly) linear CKA of every layer pair."""
        xp = module_of(self.xy)
        mx, my = self.sx / self.n, self.sy / self.n
        cxy = self.xy - self.n * mx[:, None, :, None] * my[None, :, None, :]
        cxx = self.xx - self.n * mx[:, :, None] * mx[:, None, :]
        cyy = self.yy - self.n * my[:, :, None] * my[:, None, :]
        nxy = xp.sqrt((cxy ** 2).sum(axis=(2, 3)))
        nxx, nyy = xp.sqrt((cxx ** 2).sum(axis=(1, 2))), xp.sqrt((cyy ** 2).sum(axis=(1, 2)))
        denominator = xp.sqrt((nxx[:, None] * nxx[:, None]) * (nyy[None, :] * nyy[None, :]))
        # a constant layer has no centred variance: its CKA is undefined (NaN; null in compare.json)
        safe = xp.where(denominator > 0, denominator, 1.0)
        return to_numpy(xp.where(denominator > 0, nxy * nxy / safe, xp.nan))


def _gram(a, b):
    """``a' b`` of two (rows, d) float32 blocks, as float64 (one GEMM).

    Self-products are passed a copy: NumPy computes ``a.T @ a`` of one buffer
    with SYRK, whose rounding differs from GEMM's, and identical inputs must
    give bitwise identical cross- and self-products (CKA of X with X = 1.0)."""
    return (a.T @ b).astype(module_of(a).float64)


def cosine_upper_triangle(x):
    """Upper triangle (diagonal excluded) of the cosine-similarity matrix of the rows
    of ``x`` (n, d), float64, z-scored so that Pearson correlation is a dot product."""
    xp = module_of(x)
    x = x.astype(xp.float64)
    norms = xp.sqrt((x * x).sum(axis=1, keepdims=True))
    u = x / xp.where(norms > 0, norms, 1.0)
    i, j = xp.triu_indices(x.shape[0], k=1)
    values = (u @ u.T)[i, j]
    values -= values.mean()
    # Rows all alike (a constant layer: BERT's layer-0 CLS vector) give equal cosines, which
    # centre to rounding noise, not to zero, and the correlation of noise is any number.
    # Cosines lie in [-1, 1]; a spread below 1e-9 is no structure: zero, so RSA is NaN as CKA is.
    if values.size and float(xp.abs(values).max()) <= 1e-9:
        values = xp.zeros_like(values)
    return values


def rsa(x, y) -> float:
    """Pearson correlation of the cosine-similarity matrices of ``x`` and ``y`` (same rows)."""
    return correlation(cosine_upper_triangle(x), cosine_upper_triangle(y))


def correlation(a, b) -> float:
    """Pearson correlation of two centred vectors, exactly 1.0 for identical ones."""
    xp = module_of(a)
    ab, aa, bb = float((a * b).sum()), float((a * a).sum()), float((b * b).sum())
    if aa == 0 or bb == 0:
        return float("nan")
    return ab / float(xp.sqrt(xp.float64(aa * bb)))
