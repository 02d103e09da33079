"""Proximal gradient with Barzilai-Borwein steps (SpaRSA), for many probes at once.

``minimize datafit(W, b) + penalty(W)`` for P probes side by side.  The solver
knows nothing about either term beyond their interfaces: the datafit gives value
and gradient in one data pass, a Lipschitz bound and the part of an intercept step
it sees (``intercept_step``: softmax ignores a shift shared by all classes); the penalty gives value,
prox and the distance of a gradient to its subdifferential (skglm's split), and
the features its probes may use at all, which is all the datafit's pass reads.

Method: SpaRSA (Wright, Nowak & Figueiredo, "Sparse reconstruction by separable
approximation", IEEE TSP 2009).  Each probe takes the prox step
``Z = prox(X - grad / alpha)`` with its own curvature estimate ``alpha``, the
Barzilai-Borwein ratio ``<s, r> / <s, s>`` of its last accepted step, kept in
``[L * 1e-6, L]``.  A step is accepted when the objective falls below the largest
of the probe's last ``memory`` objectives by ``sigma/2 * alpha * |s|^2``
(non-monotone acceptance); otherwise ``alpha`` doubles and the probe retries from
where it was.  With ``alpha = L`` the step is the classical 1/L step and is
always accepted.  Why not FISTA: on these problems the global bound L is far
above the curvature along the path, and the BB steps follow the local curvature;
measured on MiniLM activations of the demo corpus, FISTA with restart needed 5-20x more passes
for the same certificate (see the README).

Each iteration is exactly one pass over the data, which evaluates every active
probe's trial point.  Stopping rule: at the accepted point X we hold the exact
datafit gradient, so we compute the exact distance from 0 to the subdifferential
of the whole objective there (penalty part from the penalty, intercept part
``|grad_b|``).  A probe stops, with X as its answer, once that distance is at
most ``tol`` in every coordinate (or, when asked, once its duality gap certifies the
objective within a relative ``gap_tol`` of the optimum, :mod:`probe_engine.duality_gap`):
a certificate, not an iteration count.  X is a
prox output, so its zeros are exact.  Converged probes leave the batch; a probe
that reaches ``max_iter`` passes (one budget for all, or one per probe) returns its last accepted point with
``converged = False`` and the distance it reached.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from probe_engine.backend import module_of, to_numpy
from probe_engine.preconditioner import Identity


@dataclass
class Solutions:
    """Per-probe results on the host; arrays over the probe axis P."""

    W: np.ndarray  # (d, P, C)
    b: np.ndarray  # (P, C)
    objective: np.ndarray  # (P,) float64
    loss: np.ndarray  # (P,) float64, the datafit part
    converged: np.ndarray  # (P,) bool
    iterations: np.ndarray  # (P,) int, data passes until the answer was certified (or max_iter)
    optimality: np.ndarray  # (P,) distance from 0 to the subdifferential at the answer
    gap: np.ndarray  # (P,) duality gap at the answer: objective - optimum <= gap (inf: not computed)


@dataclass
class _Batch:
    """The state of the probes still running (device arrays over their probe axis)."""

    W: object  # accepted point
    b: object
    grad_W: object  # datafit gradient at the accepted point
    grad_b: object
    loss: object
    objective: object
    optimality: object
    gap: object
    alpha: object  # curvature estimate, 1 / step
    history: object  # (P, memory) last accepted objectives
    penalty: object

    def subset(self, keep):
        return _Batch(self.W[:, keep], self.b[keep], self.grad_W[:, keep], self.grad_b[keep], self.loss[keep],
                      self.objective[keep], self.optimality[keep], self.gap[keep], self.alpha[keep],
                      self.history[keep], self.penalty.subset(keep))


def _optimality(penalty, W, grad_W, grad_b):
    xp = module_of(W)
    return xp.maximum(penalty.subdiff_distance(W, grad_W), xp.abs(grad_b).max(axis=1))


def _gap_of(gap, penalty, W, b, loss, objective, grad_W, grad_b):
    """The duality gap of every probe, or inf when the caller gave no ``gap``."""
    if gap is None:
        return module_of(W).full(W.shape[1], np.inf)
    return gap(penalty, W, b, loss, objective, grad_W, grad_b)


def _certified(optimality, gap, objective, tol, gap_tol):
    """A probe is done when its distance to the subdifferential is at most ``tol``, or
    (``gap_tol`` given) when its duality gap is at most ``gap_tol`` times the dual value,
    the lower bound ``objective - gap`` on the optimum: then ``objective - optimum <=
    gap_tol * optimum``."""
    ok = optimality <= tol
    if gap_tol is not None:
        ok = ok | (gap <= gap_tol * (objective - gap))
    return ok


def _retire(out: Solutions, s, active: np.ndarray, iteration: int, tol: float, max_iter, gap_tol=None):
    """Copy the probes that are certified (or out of passes) from the batch state ``s``
    into ``out`` at their original indices ``active``.  ``max_iter``: one pass budget for
    every probe, or one per probe (original order).  Returns the state and indices
    of the probes still running, or ``(None, [])`` when none is."""
    certified = to_numpy(_certified(s.optimality, s.gap, s.objective, tol, gap_tol))
    done = certified | (iteration >= (max_iter if np.isscalar(max_iter) else np.asarray(max_iter)[active]))
    if not done.any():
        return s, active
    idx = active[done]
    out.W[:, idx], out.b[idx] = to_numpy(s.W[:, done]), to_numpy(s.b[done])
    out.loss[idx], out.objective[idx] = to_numpy(s.loss[done]), to_numpy(s.objective[done])
    out.optimality[idx], out.gap[idx] = to_numpy(s.optimality[done]), to_numpy(s.gap[done])
    out.converged[idx] = certified[done]
    out.iterations[idx] = iteration
    if done.all():
        return None, active[:0]
    return s.subset(module_of(s.W).asarray(~done)), active[~done]


def sparsa(datafit, penalty, blocks, W0, b0, *, lipschitz: float, tol: float, max_iter: int,
           memory: int = 5, sigma: float = 1e-4, on_iteration=None, h0=None, gap=None,
           gap_tol: float | None = None) -> Solutions:
    """Solve all probes from ``W0 (d, P, C)``, ``b0 (P, C)`` (device arrays).

    ``on_iteration(iteration, n_active)`` is called after every data pass.  ``h0`` (the
    quasi-Newton preconditioner of :func:`owlqn`) is accepted and not used: a prox step
    is exact only in a diagonal metric.  ``gap`` (a :class:`probe_engine.duality_gap.DualityGap`)
    gives each accepted point its duality gap, and with ``gap_tol`` a second stopping test
    (see :func:`_certified`).
    """
    xp = module_of(W0)
    d, P, C = W0.shape
    out = Solutions(W=np.zeros((d, P, C), np.float32), b=np.zeros((P, C), np.float32),
                    objective=np.zeros(P), loss=np.zeros(P), converged=np.zeros(P, bool),
                    iterations=np.zeros(P, int), optimality=np.zeros(P), gap=np.full(P, np.inf))
    loss, grad_W, grad_b = datafit.value_and_gradient(blocks, W0, b0, penalty.supports())
    objective = loss + penalty.value(W0)
    s = _Batch(W0, b0, grad_W, grad_b, loss, objective, _optimality(penalty, W0, grad_W, grad_b),
               _gap_of(gap, penalty, W0, b0, loss, objective, grad_W, grad_b),
               alpha=xp.full(P, 1e-2 * lipschitz), history=xp.tile(objective[:, None], (1, memory)),
               penalty=penalty)
    active = np.arange(P)  # original index of each probe still in the batch
    iteration = 1
    while True:
        s, active = _retire(out, s, active, iteration, tol, max_iter, gap_tol)
        if s is None:
            break
        # one trial step per probe, one pass for all of them
        step = (1.0 / s.alpha).astype(W0.dtype)
        Z_W = s.penalty.prox(s.W - step[None, :, None] * s.grad_W, step)
        Z_b = s.b - step[:, None] * datafit.intercept_step(s.grad_b)
        z_loss, z_grad_W, z_grad_b = datafit.value_and_gradient(blocks, Z_W, Z_b, s.penalty.supports())
        iteration += 1
        z_objective = z_loss + s.penalty.value(Z_W)
        d_W, d_b = Z_W - s.W, Z_b - s.b
        ss = (d_W * d_W).sum(axis=(0, 2)) + (d_b * d_b).sum(axis=1)
        sr = (d_W * (z_grad_W - s.grad_W)).sum(axis=(0, 2)) + (d_b * (z_grad_b - s.grad_b)).sum(axis=1)
        accept = (z_objective <= s.history.max(axis=1) - 0.5 * sigma * s.alpha * ss) | (s.alpha >= lipschitz)
        bb = xp.clip(sr / xp.maximum(ss, 1e-30), 1e-6 * lipschitz, lipschitz)
        a1, a2, a3 = accept, accept[:, None], accept[None, :, None]
        s = _Batch(xp.where(a3, Z_W, s.W), xp.where(a2, Z_b, s.b),
                   xp.where(a3, z_grad_W, s.grad_W), xp.where(a2, z_grad_b, s.grad_b),
                   xp.where(a1, z_loss, s.loss), xp.where(a1, z_objective, s.objective),
                   xp.where(a1, _optimality(s.penalty, Z_W, z_grad_W, z_grad_b), s.optimality),
                   xp.where(a1, _gap_of(gap, s.penalty, Z_W, Z_b, z_loss, z_objective, z_grad_W, z_grad_b), s.gap),
                   alpha=xp.where(a1, bb, xp.minimum(2.0 * s.alpha, lipschitz)),
                   history=xp.where(a2, xp.concatenate([s.history[:, 1:], z_objective[:, None]], axis=1), s.history),
                   penalty=s.penalty)
        if on_iteration:
            on_iteration(iteration, len(active))
    if on_iteration:
        on_iteration(iteration, 0)
    return out


def _dot(A_W, A_b, B_W, B_b):
    """Per-probe inner product of two (W, b) pairs, in float64."""
    return (A_W * B_W).sum(axis=(0, 2), dtype=np.float64) + (A_b * B_b).sum(axis=1, dtype=np.float64)


@dataclass
class _QNBatch:
    """OWL-QN state of the probes still running; memory axis first in ``S_*``/``Y_*``/``rho``."""

    W: object  # accepted point
    b: object
    grad_W: object  # datafit gradient there
    grad_b: object
    pseudo: object  # min-norm subgradient of datafit + penalty (W part; the b part is grad_b)
    loss: object
    objective: object
    optimality: object
    gap: object
    D_W: object  # search direction from the accepted point
    D_b: object
    t: object  # (P,) step along it of the next trial
    fails: object  # (P,) consecutive rejected trials
    S_W: object  # (m, d, P, C) curvature pairs, newest last
    S_b: object
    Y_W: object
    Y_b: object
    rho: object  # (m, P) 1 / <s, y>, 0 for an empty slot
    history: object  # (P, memory) last accepted objectives
    pg: object  # (P,) bool: the probe has switched to SpaRSA steps
    alpha: object  # (P,) its curvature estimate (1 / step), Barzilai-Borwein
    penalty: object
    h0: object  # the initial inverse Hessian (preconditioner.Identity or GramPreconditioner)

    def subset(self, keep):
        return _QNBatch(self.W[:, keep], self.b[keep], self.grad_W[:, keep], self.grad_b[keep], self.pseudo[:, keep],
                        self.loss[keep], self.objective[keep], self.optimality[keep], self.gap[keep], self.D_W[:, keep],
                        self.D_b[keep], self.t[keep], self.fails[keep], self.S_W[:, :, keep], self.S_b[:, keep],
                        self.Y_W[:, :, keep], self.Y_b[:, keep], self.rho[:, keep], self.history[keep],
                        self.pg[keep], self.alpha[keep], self.penalty.subset(keep), self.h0.subset(keep))


def _shift_history(xp, all_store, M, new, mask):
    """History ``M`` (pairs on axis 0) with ``new`` appended and the oldest dropped where
    ``mask``.  When every probe stores (the usual case) the ``where`` is skipped: it read
    and wrote the whole (memory, d, probes, classes) history again, ~6% of a 64-probe grid."""
    rolled = xp.concatenate([M[1:], new[None]], axis=0)
    return rolled if all_store else xp.where(mask, rolled, M)


def _two_loop(S_W, S_b, Y_W, Y_b, rho, q_W, q_b, gamma, h0):
    """``H q`` for every probe by the L-BFGS two-loop recursion (Nocedal 1980), ``H_0 = gamma h0``
    (``h0`` acts on the weights, ``h0.apply_intercept`` on the intercept); empty slots have ``rho = 0``
    and drop out."""
    m = rho.shape[0]
    a = [None] * m
    for i in range(m - 1, -1, -1):
        a[i] = rho[i] * _dot(S_W[i], S_b[i], q_W, q_b)
        q_W = q_W - a[i].astype(q_W.dtype)[None, :, None] * Y_W[i]
        q_b = q_b - a[i].astype(q_b.dtype)[:, None] * Y_b[i]
    g = gamma.astype(q_W.dtype)
    r_W, r_b = h0.apply(q_W) * g[None, :, None], h0.apply_intercept(q_b) * g[:, None]
    for i in range(m):
        c = (a[i] - rho[i] * _dot(Y_W[i], Y_b[i], r_W, r_b)).astype(r_W.dtype)
        r_W = r_W + c[None, :, None] * S_W[i]
        r_b = r_b + c[:, None] * S_b[i]
    return r_W, r_b


def owlqn(datafit, penalty, blocks, W0, b0, *, lipschitz: float, tol: float, max_iter: int,
          memory: int = 10, nonmonotone: int = 5, sigma: float = 1e-4, max_fails: int = 3,
          on_iteration=None, h0=None, gap=None, gap_tol: float | None = None) -> Solutions:
    """Solve all probes from ``W0 (d, P, C)``, ``b0 (P, C)`` (device arrays) by batched OWL-QN.

    Method: orthant-wise limited-memory quasi-Newton (Andrew & Gao, "Scalable training
    of L1-regularized log-linear models", ICML 2007), i.e. L-BFGS (Nocedal 1980; Liu &
    Nocedal 1989) on the penalty's pseudo-gradient (the min-norm subgradient), the
    direction sign-aligned with it (``penalty.align_direction``) and every trial point
    projected on the orthant of the current point (``penalty.orthant_step``;
    coordinates that cross zero become exactly zero; a penalty smooth at 0 does
    neither, and the method is plain L-BFGS).  Each probe keeps its own ``memory``
    curvature pairs and its own backtracking line search; the acceptance test is the
    non-monotone Armijo rule of Grippo, Lampariello & Lucidi (1986) over the last
    ``nonmonotone`` objectives, which also absorbs float32 noise in the objective near
    the optimum.  A probe whose line search failed ``max_fails`` times in a row goes on
    with SpaRSA steps (:func:`sparsa`'s prox-gradient step with a Barzilai-Borwein
    curvature, taken from its last accepted pair) until it stops: near the optimum
    float32 rounding of the objective stalls the quasi-Newton line search, and the
    prox-gradient step is robust to it.  A probe whose quasi-Newton direction is no
    descent restarts from the steepest-descent step ``-pseudo / L`` with an empty memory.
    ``h0`` is the initial inverse Hessian of the two-loop recursion, scaled by each
    probe's ``<s, y> / <y, h0 y>`` (default the identity; ``train_probes`` passes
    :class:`probe_engine.preconditioner.GramPreconditioner`).

    As in :func:`sparsa`, one data pass evaluates every active probe's trial point, the
    stopping test is the exact distance to the subdifferential at an accepted point
    (datafit gradient from a full pass) or, with ``gap`` and ``gap_tol``, its duality
    gap, converged probes leave the batch, and ``iterations`` counts data passes.
    Deterministic: no randomness anywhere.
    """
    xp = module_of(W0)
    d, P, C = W0.shape
    f32 = W0.dtype
    out = Solutions(W=np.zeros((d, P, C), np.float32), b=np.zeros((P, C), np.float32),
                    objective=np.zeros(P), loss=np.zeros(P), converged=np.zeros(P, bool),
                    iterations=np.zeros(P, int), optimality=np.zeros(P), gap=np.full(P, np.inf))
    loss, grad_W, grad_b = datafit.value_and_gradient(blocks, W0, b0, penalty.supports())
    objective = loss + penalty.value(W0)
    pseudo = penalty.min_norm_subgradient(W0, grad_W)
    inv_L = 1.0 / lipschitz
    s = _QNBatch(W0, b0, grad_W, grad_b, pseudo, loss, objective, _optimality(penalty, W0, grad_W, grad_b),
                 _gap_of(gap, penalty, W0, b0, loss, objective, grad_W, grad_b),
                 D_W=-pseudo * f32.type(1.0 / lipschitz), D_b=-datafit.intercept_step(grad_b) * f32.type(1.0 / lipschitz),
                 t=xp.ones(P), fails=xp.zeros(P, dtype=np.int64),
                 S_W=xp.zeros((memory, d, P, C), f32), S_b=xp.zeros((memory, P, C), f32),
                 Y_W=xp.zeros((memory, d, P, C), f32), Y_b=xp.zeros((memory, P, C), f32),
                 rho=xp.zeros((memory, P)), history=xp.tile(objective[:, None], (1, nonmonotone)),
                 pg=xp.zeros(P, dtype=bool), alpha=xp.full(P, lipschitz), penalty=penalty,
                 h0=Identity() if h0 is None else h0)
    active = np.arange(P)
    iteration = 1
    while True:
        s, active = _retire(out, s, active, iteration, tol, max_iter, gap_tol)
        if s is None:
            break
        # the trial point of every probe, one pass for all of them
        t = s.t.astype(f32)
        step = (1.0 / s.alpha).astype(f32)
        pg1, pg2, pg3 = s.pg, s.pg[:, None], s.pg[None, :, None]
        Z_W = xp.where(pg3, s.penalty.prox(s.W - step[None, :, None] * s.grad_W, step),
                       s.penalty.orthant_step(s.W, t[None, :, None] * s.D_W, s.pseudo))
        Z_b = xp.where(pg2, s.b - step[:, None] * datafit.intercept_step(s.grad_b), s.b + t[:, None] * s.D_b)
        z_loss, z_grad_W, z_grad_b = datafit.value_and_gradient(blocks, Z_W, Z_b, s.penalty.supports())
        iteration += 1
        z_objective = z_loss + s.penalty.value(Z_W)
        d_W, d_b = Z_W - s.W, Z_b - s.b
        ss = _dot(d_W, d_b, d_W, d_b)
        accept = z_objective <= s.history.max(axis=1) + xp.where(
            pg1, -0.5 * sigma * s.alpha * ss, sigma * _dot(s.pseudo, s.grad_b, d_W, d_b))
        accept |= pg1 & (s.alpha >= lipschitz)
        # curvature pair of the accepted step (skipped unless <s, y> > 0)
        y_W = s.penalty.feasible((z_grad_W + s.penalty.smooth_gradient(Z_W)) - (s.grad_W + s.penalty.smooth_gradient(s.W)))
        y_b = z_grad_b - s.grad_b
        sy, yy = _dot(d_W, d_b, y_W, y_b), _dot(y_W, y_b, y_W, y_b)
        store = accept & (sy > 1e-10 * xp.sqrt(_dot(d_W, d_b, d_W, d_b) * yy))
        a1, a2, a3 = accept, accept[:, None], accept[None, :, None]
        st2, st3, st4 = store[None, :], store[None, :, None], store[None, None, :, None]
        shift = functools.partial(_shift_history, xp, bool(store.all()))
        S_W, S_b = shift(s.S_W, d_W, st4), shift(s.S_b, d_b, st3)
        Y_W, Y_b = shift(s.Y_W, y_W, st4), shift(s.Y_b, y_b, st3)
        rho = shift(s.rho, 1.0 / xp.where(store, sy, 1.0), st2)
        W, b = xp.where(a3, Z_W, s.W), xp.where(a2, Z_b, s.b)
        grad_W, grad_b = xp.where(a3, z_grad_W, s.grad_W), xp.where(a2, z_grad_b, s.grad_b)
        pseudo = xp.where(a3, s.penalty.min_norm_subgradient(Z_W, z_grad_W), s.pseudo)
        fails = xp.where(a1, 0, s.fails + 1)
        reset = fails >= max_fails
        rho = xp.where(reset[None, :], 0.0, rho)
        objective = xp.where(a1, z_objective, s.objective)
        pg = s.pg | reset  # a quasi-Newton probe whose line search keeps failing goes on with SpaRSA
        bb = xp.clip(sy / xp.maximum(ss, 1e-30), 1e-6 * lipschitz, lipschitz)
        alpha = xp.where(a1, bb, xp.where(s.pg, xp.minimum(2.0 * s.alpha, lipschitz), s.alpha))
        # new direction for the probes that moved (or restart): -H pseudo, sign-aligned with -pseudo
        yy_last = _dot(Y_W[-1], Y_b[-1], s.h0.apply(Y_W[-1]), s.h0.apply_intercept(Y_b[-1]))
        gamma = xp.where(rho[-1] > 0, 1.0 / xp.maximum(rho[-1] * yy_last, 1e-300), inv_L)  # <s, y> / <y, h0 y>
        D_W, D_b = _two_loop(S_W, S_b, Y_W, Y_b, rho, -pseudo, -grad_b, gamma, s.h0)
        D_W, D_b = s.penalty.align_direction(D_W, pseudo), datafit.intercept_step(D_b)
        descent = _dot(D_W, D_b, pseudo, grad_b) < 0
        moved = a1 | reset
        restart = moved & ~descent
        rho = xp.where(restart[None, :], 0.0, rho)
        D_W = xp.where(restart[None, :, None], -pseudo * f32.type(inv_L), D_W)
        D_b = xp.where(restart[:, None], -datafit.intercept_step(grad_b) * f32.type(inv_L), D_b)
        s = _QNBatch(W, b, grad_W, grad_b, pseudo,
                     xp.where(a1, z_loss, s.loss), objective,
                     xp.where(a1, _optimality(s.penalty, Z_W, z_grad_W, z_grad_b), s.optimality),
                     xp.where(a1, _gap_of(gap, s.penalty, Z_W, Z_b, z_loss, z_objective, z_grad_W, z_grad_b), s.gap),
                     D_W=xp.where(moved[None, :, None], D_W, s.D_W), D_b=xp.where(moved[:, None], D_b, s.D_b),
                     t=xp.where(moved, 1.0, 0.5 * s.t), fails=xp.where(reset, 0, fails),
                     S_W=S_W, S_b=S_b, Y_W=Y_W, Y_b=Y_b, rho=rho,
                     history=xp.where(a2, xp.concatenate([s.history[:, 1:], z_objective[:, None]], axis=1), s.history),
                     pg=pg, alpha=alpha, penalty=s.penalty, h0=s.h0)
        if on_iteration:
            on_iteration(iteration, len(active))
    if on_iteration:
        on_iteration(iteration, 0)
    return out
