"""Accelerated proximal gradient (FISTA) for many probes at once.

``minimize datafit(W, b) + penalty(W)`` for P probes side by side.  The solver
knows nothing about either term beyond their interfaces: the datafit gives value
and gradient in one data pass and a Lipschitz bound; the penalty gives value,
prox and the distance of a gradient to its subdifferential (skglm's split).

Method: FISTA (Beck & Teboulle 2009) with a fixed step ``1/L`` and, per probe,
the gradient-based adaptive restart of O'Donoghue & Candès (2015).  Each
iteration costs exactly one pass over the data, at the extrapolated point Y.

Stopping rule: at Y we have the exact datafit gradient, so we compute the exact
distance from 0 to the subdifferential of the whole objective there (penalty
part from the penalty, intercept part ``|grad_b|``).  A probe stops, and Y is
its answer, once that distance is at most ``tol`` (in every coordinate): the
answer carries a certificate, not an iteration count.  Y is a combination of
two prox outputs, so once the support settles its zeros are exact zeros.
Converged probes leave the batch, so later passes only pay for probes still
running.  A probe that reaches ``max_iter`` returns its last evaluated point,
with ``converged = False`` and the distance it reached.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probe_engine.backend import module_of, to_numpy


@dataclass
class Solutions:
    """Per-probe results on the host; arrays over the probe axis P."""

    W: np.ndarray  # (d, P, C)
    b: np.ndarray  # (P, C)
    objective: np.ndarray  # (P,) float64
    loss: np.ndarray  # (P,) float64, the datafit part
    converged: np.ndarray  # (P,) bool
    iterations: np.ndarray  # (P,) int, data passes until the answer was evaluated
    optimality: np.ndarray  # (P,) distance from 0 to the subdifferential at the answer


def fista(datafit, penalty, blocks, W0, b0, *, step: float, tol: float, max_iter: int,
          on_iteration=None) -> Solutions:
    """Solve all probes; ``W0 (d, P, C)`` and ``b0 (P, C)`` are device arrays.

    ``on_iteration(iteration, n_active)`` is called after every data pass.
    """
    xp = module_of(W0)
    d, P, C = W0.shape
    out = Solutions(W=np.zeros((d, P, C), np.float32), b=np.zeros((P, C), np.float32),
                    objective=np.zeros(P), loss=np.zeros(P), converged=np.zeros(P, bool),
                    iterations=np.zeros(P, int), optimality=np.zeros(P))
    active = np.arange(P)  # original index of each probe still in the batch
    X_W, X_b = W0, b0  # last prox output
    Y_W, Y_b = W0.copy(), b0.copy()  # extrapolated point, where the gradient is taken
    t = xp.ones(P, dtype=np.float64)
    for it in range(1, max_iter + 1):
        loss, g_W, g_b = datafit.value_and_gradient(blocks, Y_W, Y_b)
        dist = xp.maximum(penalty.subdiff_distance(Y_W, g_W), xp.abs(g_b).max(axis=1))
        done = to_numpy(dist <= tol) | (it == max_iter)
        if done.any():
            idx = active[done]
            out.W[:, idx], out.b[idx] = to_numpy(Y_W[:, done]), to_numpy(Y_b[done])
            out.loss[idx] = to_numpy(loss[done])
            out.objective[idx] = out.loss[idx] + to_numpy(penalty.value(Y_W))[done]
            out.optimality[idx] = to_numpy(dist[done])
            out.converged[idx] = to_numpy(dist[done] <= tol)
            out.iterations[idx] = it
            keep = ~done
            active = active[keep]
            if not len(active):
                if on_iteration:
                    on_iteration(it, 0)
                break
            keep_dev = xp.asarray(keep)
            X_W, X_b, Y_W, Y_b = X_W[:, keep_dev], X_b[keep_dev], Y_W[:, keep_dev], Y_b[keep_dev]
            g_W, g_b, t = g_W[:, keep_dev], g_b[keep_dev], t[keep_dev]
            penalty = penalty.subset(keep_dev)
        # proximal gradient step from Y
        new_W = penalty.prox(Y_W - step * g_W, step)
        new_b = Y_b - step * g_b
        # restart momentum of probes whose step points against the momentum
        uphill = ((Y_W - new_W) * (new_W - X_W)).sum(axis=(0, 2)) + ((Y_b - new_b) * (new_b - X_b)).sum(axis=1)
        t_new = (1.0 + xp.sqrt(1.0 + 4.0 * t * t)) / 2.0
        beta = xp.where(uphill > 0, 0.0, (t - 1.0) / t_new).astype(W0.dtype)
        t = xp.where(uphill > 0, 1.0, t_new)
        Y_W = new_W + beta[None, :, None] * (new_W - X_W)
        Y_b = new_b + beta[:, None] * (new_b - X_b)
        X_W, X_b = new_W, new_b
        if on_iteration:
            on_iteration(it, len(active))
    return out
