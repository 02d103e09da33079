"""Penalties on the probe weights, for many probes at once.

Following skglm's Datafit x Penalty x Solver split (Bertrand et al., "Beyond L1:
faster and better sparse models with skglm", NeurIPS 2022), a penalty is a small
object with ``value``, ``prox`` and ``subdiff_distance`` (and ``conjugate`` for the
duality gap); the solver never looks inside it.  Weights of P probes are one array
``W`` of shape ``(d, P, C)``; penalty strengths are per probe, shape ``(P,)``, and broadcast over ``d`` and ``C``.
The intercept is never penalized, so it never reaches a penalty.
"""

from __future__ import annotations

import numpy as np

from probe_engine.backend import module_of as _xp
from probe_engine.backend import to_numpy

#: The largest l1 or l2 a probe takes.  The solver runs in float32, whose largest value
#: is 3.4e38, but products of a penalty with the weights and step sizes overflow from
#: about 1e20 (an l2 of 1e20 warned of overflow; 3e38 gave a NaN optimality); any
#: penalty past ~10 already drives the weights of standardized features to (near) zero.
LARGEST_PENALTY = 1e18


class ElasticNet:
    """``l1 * sum|W| + l2 * sum W**2`` (Zou & Hastie 2005), one (l1, l2) per probe.

    The squared term is *not* halved, matching the probe objective in the README:
    in scikit-learn's terms ``l1 = rho / (C n)`` and ``l2 = (1 - rho) / (2 C n)``.
    """

    def __init__(self, l1, l2):
        self.l1 = l1  # (P,) array of the solver's array module
        self.l2 = l2

    def subset(self, keep) -> "ElasticNet":
        """The penalty of the probes ``keep`` (used when converged probes leave the batch)."""
        return ElasticNet(self.l1[keep], self.l2[keep])

    def value(self, W):
        """Penalty of each probe, shape ``(P,)``."""
        xp = _xp(W)
        return self.l1 * xp.abs(W).sum(axis=(0, 2)) + self.l2 * (W * W).sum(axis=(0, 2))

    def prox(self, V, step):
        """``argmin_W ||W - V||^2 / (2 step) + penalty(W)``, closed form and exact:
        soft-threshold by ``step*l1`` (exact zeros), then shrink by ``1 + 2*step*l2``."""
        xp = _xp(V)
        thresh = (step * self.l1)[None, :, None]
        shrink = (1.0 + 2.0 * step * self.l2)[None, :, None]
        return xp.sign(V) * xp.maximum(xp.abs(V) - thresh, 0.0) / shrink

    def subdiff_distance(self, W, grad):
        """Per probe, the largest distance (over weights) between ``-grad`` and the
        subdifferential of the penalty at ``W``; 0 at an exact minimizer of
        datafit + penalty, where ``grad`` is the datafit gradient at ``W``."""
        return _xp(W).abs(self.min_norm_subgradient(W, grad)).max(axis=(0, 2))

    def min_norm_subgradient(self, W, grad):
        """The element of least magnitude of ``grad + subdifferential(W)``, weight by weight
        (OWL-QN's pseudo-gradient, Andrew & Gao 2007); its largest magnitude is
        ``subdiff_distance``."""
        xp = _xp(W)
        l1 = self.l1[None, :, None]
        g = grad + 2.0 * self.l2[None, :, None] * W
        return xp.where(W != 0, g + l1 * xp.sign(W), xp.sign(g) * xp.maximum(xp.abs(g) - l1, 0.0))

    def conjugate(self, V):
        """Per probe, the convex conjugate at ``V (d, P, C)``: ``sum (|V| - l1)_+^2 / (4 l2)``,
        and for ``l2 = 0`` the indicator of ``|V| <= l1`` (0 or inf); the duality gap's
        penalty term."""
        xp = _xp(V)
        excess = xp.maximum(xp.abs(V) - self.l1[None, :, None], 0.0)
        l2 = xp.maximum(self.l2.astype(np.float64), 1e-300)  # (only used where l2 > 0)
        quadratic = (excess * excess).sum(axis=(0, 2), dtype=np.float64) / (4.0 * l2)
        return xp.where(self.l2 > 0, quadratic, xp.where(excess.max(axis=(0, 2)) > 0, np.inf, 0.0))

    def dual_scale(self, V):
        """Per probe, a factor ``s`` in [0, 1] with ``conjugate(s V)`` finite: 1 where
        ``l2 > 0``; else ``|s V| <= l1`` (1e-6 inside, for float32 rounding of ``s V``)."""
        xp = _xp(V)
        top = xp.abs(V).max(axis=(0, 2)).astype(np.float64)
        inside = self.l1 * (1.0 - 1e-6) / xp.maximum(top, 1e-300)
        return xp.where((self.l2 > 0) | (top <= self.l1), 1.0, xp.minimum(inside, 1.0))

    def smooth_gradient(self, W):
        """Gradient of the penalty inside one orthant, where it is smooth (the l1 term is
        linear there and only adds a constant): what curvature pairs see."""
        return 2.0 * self.l2[None, :, None] * W

    def smooth(self):
        """Per probe, whether the penalty is differentiable everywhere (``l1 = 0``)."""
        return self.l1 == 0

    def supports(self):
        """The features each probe may use, host bool ``(d, P)``; ``None``: all of them."""
        return None

    def feasible(self, G):
        """``G (d, P, C)`` on the directions the probes' weights may move in: all of them."""
        return G

    def curvature(self):
        """Per probe, the penalty's Hessian as a multiple of the identity where it is smooth."""
        return 2.0 * self.l2

    def orthant_step(self, W, D, pseudo):
        """OWL-QN's trial point ``pi(W + D; xi)``: the orthant ``xi`` is the sign of ``W``,
        or of ``-pseudo`` where ``W`` is 0, and coordinates that leave it are set to exactly 0.
        Probes with ``l1 = 0`` are smooth everywhere and take the plain step ``W + D``."""
        xp = _xp(W)
        xi = xp.where(W != 0, xp.sign(W), -xp.sign(pseudo))
        V = W + D
        return xp.where((V * xi > 0) | (self.l1 == 0)[None, :, None], V, 0.0).astype(W.dtype)

    def align_direction(self, D, pseudo):
        """OWL-QN's sign constraint on a quasi-Newton direction: components whose sign
        disagrees with ``-pseudo`` are set to 0 (only for probes with ``l1 > 0``)."""
        xp = _xp(D)
        return xp.where((D * pseudo < 0) | (self.l1 == 0)[None, :, None], D, 0.0).astype(D.dtype)


class Restricted:
    """Any penalty plus the constraint that each probe's weights live on its own set of
    features: ``support`` is a boolean ``(d, P)`` mask, weights outside it are exactly 0.

    This is how top-k neuron retraining runs in the same data pass as other probes:
    every probe reads all features, and the mask (the indicator of a coordinate
    subspace, whose prox is a projection) keeps each to its k neurons.
    """

    def __init__(self, inner, support):
        self.inner, self.support = inner, support

    def subset(self, keep) -> "Restricted":
        return Restricted(self.inner.subset(keep), self.support[:, keep])

    def value(self, W):
        return self.inner.value(W)

    def prox(self, V, step):
        return self.inner.prox(V, step) * self.support[:, :, None]

    def subdiff_distance(self, W, grad):
        """Outside the support the constraint's normal cone is everything: distance 0."""
        return self.inner.subdiff_distance(W, grad * self.support[:, :, None])

    def min_norm_subgradient(self, W, grad):
        return self.inner.min_norm_subgradient(W, grad * self.support[:, :, None]) * self.support[:, :, None]

    def conjugate(self, V):
        """The constraint's conjugate is 0 on the support's complement: only the support counts."""
        return self.inner.conjugate(V * self.support[:, :, None])

    def dual_scale(self, V):
        return self.inner.dual_scale(V * self.support[:, :, None])

    def smooth_gradient(self, W):
        return self.inner.smooth_gradient(W) * self.support[:, :, None]

    def smooth(self):
        return self.inner.smooth()

    def feasible(self, G):
        """Zero outside each probe's support: curvature pairs then live in the probe's subspace."""
        return self.inner.feasible(G) * self.support[:, :, None]

    def supports(self):
        """Each probe's support on the host (narrower as probes leave the batch)."""
        return to_numpy(self.support).astype(bool)

    def curvature(self):
        return self.inner.curvature()

    def orthant_step(self, W, D, pseudo):
        return self.inner.orthant_step(W, D, pseudo) * self.support[:, :, None]

    def align_direction(self, D, pseudo):
        return self.inner.align_direction(D, pseudo) * self.support[:, :, None]
