"""The duality gap of each probe: a certified bound on how far its objective is above the optimum.

At any primal point, ``objective - dual(T)`` bounds ``objective - optimum`` from above
for every feasible dual point ``T`` (weak duality).  The datafit builds ``T`` from the
pass it has just made (:meth:`MultinomialLogistic.dual_point`, no extra pass) and the
penalty gives its conjugate; this module only composes the two, as skglm composes
datafit and penalty, and as gap-safe solvers certify Lasso-type problems (Ndiaye,
Fercoq, Gramfort & Salmon, "Gap safe screening rules for sparsity enforcing
penalties", JMLR 2017; Massias, Gramfort & Salmon, "Celer", ICML 2018).

For ``l2 > 0`` the gap at a point whose subgradient residual is ``e`` is about
``sum e^2 / (4 l2)``: tight for well-regularized probes, loose for nearly unregularized
ones (there the distance to the subdifferential, the solver's other test, is the
practical certificate).  For ``l1 = l2 = 0`` the dual point must make ``X^T T`` exactly
0, which a float32 pass never does: the gap stays at the objective.
"""

from __future__ import annotations

from probe_engine.backend import module_of


class DualityGap:
    """``gap(penalty, W, b, loss, objective, grad_W, grad_b) -> (P,)`` float64, >= 0.

    The objective and the dual value both come from float32 passes, so near the optimum
    their difference can round below 0 (-2e-9 seen on a 300-row problem): the gap is
    clipped at 0, and it certifies the objective up to that rounding (about 1e-7 of it,
    which a small problem's float32 loss can be off by)."""

    def __init__(self, datafit, moments):
        self.datafit, self.moments = datafit, moments

    def __call__(self, penalty, W, b, loss, objective, grad_W, grad_b):
        bound, V = self.datafit.dual_point(self.moments, W, b, loss, grad_W, grad_b)
        s = penalty.dual_scale(V)
        gap = objective + s * bound + penalty.conjugate(V * s.astype(V.dtype)[None, :, None])
        return module_of(gap).maximum(gap, 0.0)
