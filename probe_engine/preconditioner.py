"""The quasi-Newton solver's initial inverse Hessian ``H_0``: the features' Gram matrix.

L-BFGS builds its inverse-Hessian estimate from ``H_0 = gamma I`` and 10 curvature
pairs; 10 pairs cannot undo the spread of the features' covariance (on one
standardized MiniLM layer its eigenvalues run from 0.025 to 14), so the smooth probes
crawled along its small directions.  The multinomial logistic Hessian in ``W`` is
``(1/n) sum_i x_i x_i^T (x) (diag p_i - p_i p_i^T)``; K-FAC (Martens & Grosse, "Optimizing
neural networks with Kronecker-factored approximate curvature", ICML 2015) replaces it by
``G (x) B`` with ``G = X^T X / n``.  Here ``B`` is left to L-BFGS's scalar ``gamma`` and the
pairs, and the penalty's curvature ``2 * l2`` is added: probe ``p`` starts from

    H_0 = gamma * (G + mu_p I)^-1,   mu_p = 2 * l2_p / CURVATURE + FLOOR * trace(G) / d,

(``CURVATURE`` stands for the softmax curvature ``B`` the data term is scaled by; the
floor keeps a probe with ``l2 = 0`` away from the Gram's null space).  Applying it costs
two products with the Gram's eigenvectors, ``d x d`` by ``d x C`` per probe, about
``d / n`` of a data pass.  Measured on MiniLM layer 4, XPOS (51k rows, 384 features, 49
classes): the three ``l1 = 0`` probes of the benchmark grid needed 247, 162 and 134 passes
to ``tol = 1e-5`` instead of 449, 295 and 833.

Only probes whose penalty is smooth (``l1 = 0``) get it.  OWL-QN's orthant projection
and sign alignment act coordinate by coordinate and want a diagonal ``H_0``.  Measured on
the same problem, probes with ``l1 > 0``: with this ``H_0``, 5 of 5 did not certify in
1,000 passes (4 of 5 with the Gram's inverse restricted to their free coordinates); with
the Gram block of the free coordinates inverted by 10 conjugate-gradient steps all
certified, but after 10-100% more passes; a per-class diagonal left all 8 probes tried
uncertified at 1,000 passes.
A probe restricted to a support (top-k neurons) gets the inverse
of its own support's block ``G_SS``: probes that share a support share one
eigendecomposition.

Every probe, smooth or not, starts its intercept from ``gamma / (C f_k)`` per class
(:func:`intercept_scale`): the intercept of a class seen once is otherwise the slowest
coordinate of all.  It is diagonal, so OWL-QN keeps it.
"""

from __future__ import annotations

import numpy as np

from probe_engine.backend import to_numpy
from probe_engine.row_tasks import map_on_cores

#: The softmax curvature the data term is taken to have next to the penalty's ``2 * l2``
#: (a scale, not an estimate: ``gamma`` fixes the overall size; measured 0.1 and 0.25
#: within 5% of each other).
CURVATURE = 0.1
#: The smallest shift, as a share of the Gram's mean eigenvalue (1 for standardized features).
FLOOR = 0.01
#: Eigenvector storage allowed for one call (float32 bytes); past it every probe keeps
#: ``H_0 = gamma I`` (e.g. hundreds of distinct large supports in one call).
MAX_BYTES = 1 << 30


class _InterceptScale:
    """The intercept's part of ``H_0``, shared by both preconditioners: ``intercept`` per
    class (:func:`intercept_scale`), or 1 when ``None``."""

    def __init__(self, intercept=None):
        self.intercept = intercept

    def apply_intercept(self, q):
        return q if self.intercept is None else q * self.intercept[None, :]


class Identity(_InterceptScale):
    """``H_0 = gamma I`` on the weights: plain L-BFGS scaling for every probe."""

    def apply(self, Q):
        return Q

    def subset(self, keep):
        return self


def intercept_scale(class_counts, xp):
    """``1 / (C f_k)`` for class frequencies ``f``: the shape of the inverse of the
    intercept's Hessian ``diag(f) - f f^T`` at the all-zero-weights start (up to the
    rank-one term), 1 for a class of average frequency, whose scale ``gamma`` then fixes.
    Without it the intercept of a class seen once in 51k rows (curvature ~2e-5, against
    ~0.1 for a frequent class) converged last and held up its probe's certificate.
    Measured on MiniLM layer 4, XPOS, five probes to ``tol = 1e-5`` (l1, l2 = 1e-2, 3e-2;
    3e-4, 1e-3; 1e-5, 1e-4; 0, 1e-3; 1e-3, 1e-5): 1,343 passes in all with the identity,
    767 with this scale; 10 times it gave 683 there but 2.4x the passes of this one on
    three small synthetic problems (where this one saves 14% over the identity)."""
    freq = np.asarray(class_counts, dtype=np.float64) / np.sum(class_counts)
    return xp.asarray(1.0 / (len(freq) * freq), dtype=np.float32)


class _Group:
    """Probes sharing one support: the eigenvectors of the Gram block on the support's
    ``columns`` (``None``: every column) and each probe's spectral scale."""

    def __init__(self, columns, vectors, scale, probes, xp):
        self.columns, self.vectors = columns, vectors  # (k,) device int or None; (k, k) float32
        self.scale = scale  # (k, p) float32: 1 / (eigenvalue + mu_p)
        self.positions, self.probes = probes, xp.asarray(probes)  # the probes' batch positions, host and device


class GramPreconditioner(_InterceptScale):
    """``H_0 = gamma (G_SS + mu_p I)^-1`` for smooth probes, ``gamma I`` for the others
    (see the module docstring).  ``apply`` maps ``Q (d, P, C)`` probe by probe;
    ``subset`` follows the solver's batch when probes leave it."""

    def __init__(self, groups: list[_Group], xp, intercept=None):
        super().__init__(intercept)
        self.groups, self.xp = groups, xp

    @classmethod
    def build(cls, gram: np.ndarray, curvature, smooth, support, xp, intercept=None) -> "GramPreconditioner | Identity":
        """``gram``: host ``X^T X / n`` (d, d) float64; per probe (P,) the penalty's
        ``curvature`` (``2 * l2``) and whether it is ``smooth``; ``support``: host bool
        (d, P) or ``None`` (every probe reads every feature); ``intercept``: the
        intercept's per-class scale (:func:`intercept_scale`) or ``None``."""
        curvature, smooth = to_numpy(curvature).astype(np.float64), to_numpy(smooth).astype(bool)
        support = None if support is None else to_numpy(support).astype(bool)
        d = gram.shape[0]
        floor = FLOOR * max(float(np.trace(gram)) / d, np.finfo(np.float64).tiny)
        by_support: dict[bytes, list[int]] = {}
        for p in np.flatnonzero(smooth):
            key = b"" if support is None else np.packbits(support[:, p]).tobytes()
            by_support.setdefault(key, []).append(int(p))
        columns = {key: None if support is None else np.flatnonzero(support[:, probes[0]])
                   for key, probes in by_support.items()}
        sizes = [d if cols is None else len(cols) for cols in columns.values()]
        if 4 * sum(k * k for k in sizes) > MAX_BYTES:  # all or none: a probe's H_0 never depends on its batch
            return Identity(intercept)
        kept = [(key, probes) for (key, probes), k in zip(by_support.items(), sizes) if k > 0]

        def decomposed(key):
            cols = columns[key]
            full = cols is None or len(cols) == d
            return full, xp.linalg.eigh(xp.asarray(gram if full else gram[np.ix_(cols, cols)]))  # on the GPU there

        keys = [key for key, _ in kept]
        # one eigendecomposition per support: on the host, one per core (LAPACK releases the GIL)
        parts = map_on_cores(decomposed, keys) if xp is np else map(decomposed, keys)
        groups = []
        for (key, probes), (full, (eigenvalues, vectors)) in zip(kept, parts):
            cols = columns[key]
            mu = xp.asarray(curvature[probes] / CURVATURE + floor)
            scale = 1.0 / (xp.maximum(eigenvalues, 0.0)[:, None] + mu[None, :])
            groups.append(_Group(None if full else xp.asarray(cols), vectors.astype(np.float32),
                                 scale.astype(np.float32), np.asarray(probes), xp))
        return cls(groups, xp, intercept) if groups else Identity(intercept)

    def apply(self, Q):
        R = Q.copy()

        def mapped(g):
            block = Q[:, g.probes] if g.columns is None else Q[g.columns[:, None], g.probes[None, :]]
            k, p, C = block.shape
            spectral = (g.vectors.T @ block.reshape(k, p * C)).reshape(k, p, C) * g.scale[:, :, None]
            return (g.vectors @ spectral.reshape(k, p * C)).reshape(k, p, C)

        # many supports (top-k probes: one each) are many small products: one per core on the host
        results = map_on_cores(mapped, self.groups) if self.xp is np else map(mapped, self.groups)
        for g, mapped in zip(self.groups, results):
            if g.columns is None:
                R[:, g.probes] = mapped
            else:
                R[g.columns[:, None], g.probes[None, :]] = mapped
        return R

    def subset(self, keep) -> "GramPreconditioner":
        keep = to_numpy(keep).astype(bool)
        position = np.cumsum(keep) - 1  # new position of every kept probe
        groups = []
        for g in self.groups:
            stay = keep[g.positions]
            if stay.any():
                groups.append(_Group(g.columns, g.vectors, g.scale[:, self.xp.asarray(stay)],
                                     position[g.positions[stay]], self.xp))
        return GramPreconditioner(groups, self.xp, self.intercept)
