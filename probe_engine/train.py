"""Train a batch of elastic-net probes that share one feature matrix.

The probe objective (the README states it; Durrani, Sajjad & Dalvi 2021, sec. 2):

    mean_i CE(softmax(x_i W + b), y_i) + l1 * sum|W| + l2 * sum W**2

on standardized features, intercept ``b`` unpenalized.  This composes the
multinomial datafit with the elastic-net penalty and hands both to the solver.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from probe_engine.blocks import ColumnBlocks
from probe_engine.column_groups import column_order, partition
from probe_engine.datafit import MultinomialLogistic
from probe_engine.duality_gap import DualityGap
from probe_engine.penalty import ElasticNet, Restricted
from probe_engine.preconditioner import GramPreconditioner, intercept_scale
from probe_engine.solver import Solutions, owlqn, sparsa  # noqa: F401 (sparsa: the previous default)

#: Solver defaults, shared by the estimator and ``strata probe``.
DEFAULT_TOL = 1e-5
DEFAULT_MAX_ITER = 2000


def class_counts(blocks, n_classes: int) -> np.ndarray:
    from probe_engine.backend import to_numpy
    counts = np.zeros(n_classes, dtype=np.int64)
    for _, y in blocks:
        y = to_numpy(y)
        if y.size and (y.min() < 0 or y.max() >= n_classes):  # bincount would grow or fail obscurely
            found = int(y.min() if y.min() < 0 else y.max())
            raise ValueError(f"labels must be class indices 0..{n_classes - 1}, found {found}")
        counts += np.bincount(y, minlength=n_classes)
    return counts


def train_probes(blocks, n_classes: int, l1, l2, *, xp, tol: float = DEFAULT_TOL,
                 max_iter: int = DEFAULT_MAX_ITER, gap_tol: float | None = None, counts=None, gram=None,
                 support=None, on_iteration=None, solver=owlqn, start=None) -> Solutions:
    """Fit one probe per ``(l1[p], l2[p])`` on ``blocks`` (pairs of device arrays
    ``X`` float32 standardized and ``y`` class indices ``0..n_classes-1``).

    ``support``, a boolean ``(d, P)`` host array, restricts probe ``p`` to the features
    where ``support[:, p]`` is true (top-k neuron retraining); ``None``: all features.
    The Gram and every pass then read only the union of the supports (narrower still as
    probes finish, see :meth:`MultinomialLogistic.value_and_gradient`); ``W`` comes back
    full width, 0 outside each support.

    Every probe starts at its all-zero-weights optimum (log class frequencies as
    intercept), so a probe whose ``l1`` is at least ``||grad_W||_inf`` there is
    certified optimal after the first pass.  ``start = (W (d, P, C), b (P, C))`` (host
    arrays, e.g. the solutions of neighbouring grid points) replaces that starting point.

    ``gram`` is the blocks' :meth:`MultinomialLogistic.gram` when the caller has it (one
    pass saved); it gives the solver its Lipschitz bound and preconditioner, and the
    duality gap its label moments.  Every answer carries its duality gap; a probe stops
    when its distance to the subdifferential is at most ``tol`` or, with ``gap_tol``, when
    the gap certifies its objective within ``gap_tol`` (relative) of the optimum.

    ``solver`` is any function with the signature of :func:`probe_engine.solver.owlqn`
    (the default, batched OWL-QN) or :func:`probe_engine.solver.sparsa`.
    """
    if support is not None:
        support = np.asarray(support, dtype=bool)
        # the union of the supports, nested groups' columns first (one slice each, no gather)
        used = column_order(support, partition(support, n_classes))
        if len(used) < blocks.n_features:  # every probe lives in these columns: read only them
            keep = np.concatenate([used, blocks.n_features + np.arange(1 + n_classes)])  # and the [1 Y] columns
            gram_used = None if gram is None else gram[np.ix_(keep, keep)]
            start_used = None if start is None else (np.asarray(start[0])[used], start[1])
            sol = train_probes(ColumnBlocks(blocks, used, xp), n_classes, l1, l2, xp=xp, tol=tol, max_iter=max_iter,
                               gap_tol=gap_tol, counts=counts, gram=gram_used, support=support[used],
                               on_iteration=on_iteration,
                               solver=solver, start=start_used)
            W = np.zeros((blocks.n_features, *sol.W.shape[1:]), sol.W.dtype)
            W[used] = sol.W
            return replace(sol, W=W)
    datafit = MultinomialLogistic(n_classes)
    counts = class_counts(blocks, n_classes) if counts is None else counts
    if (counts == 0).any():
        raise ValueError("every class must occur in the training rows")
    gram = datafit.gram(blocks) if gram is None else gram
    k = blocks.n_features + 1 + n_classes
    if gram.shape != (k, k):
        raise ValueError(f"gram: shape {gram.shape} is not that of these blocks' [X 1 Y] ({k} x {k})")
    P, d = len(l1), blocks.n_features
    penalty = ElasticNet(xp.asarray(l1, dtype=np.float32), xp.asarray(l2, dtype=np.float32))
    if support is not None:
        penalty = Restricted(penalty, xp.asarray(support, dtype=np.float32))
    if start is None:
        W0 = xp.zeros((d, P, n_classes), dtype=np.float32)
        b0 = xp.tile(datafit.initial_intercept(counts, xp, np.float32), (P, 1))
    else:
        W0, b0 = (xp.asarray(a, dtype=np.float32) for a in start)
        if support is not None:
            W0 = W0 * penalty.support[:, :, None]
    h0 = GramPreconditioner.build(gram[:d, :d], penalty.curvature(), penalty.smooth(), support, xp,
                                  intercept_scale(counts, xp))
    gap = DualityGap(datafit, datafit.label_moments(gram, xp))
    return solver(datafit, penalty, blocks, W0, b0, lipschitz=datafit.lipschitz_of(gram, xp), tol=tol,
                  max_iter=max_iter, on_iteration=on_iteration, h0=h0, gap=gap, gap_tol=gap_tol)


#: How a grid's probes are scheduled (see :func:`train_grid`).
GRID_SCHEDULES = ("batched", "path", "l1-path")


#: What ``--grid-schedule`` accepts: a schedule, or ``auto`` (see :func:`resolve_grid_schedule`).
GRID_SCHEDULE_OPTIONS = ("auto", *GRID_SCHEDULES)


def resolve_grid_schedule(name: str, device: str) -> str:
    """``name``, or for ``auto`` what it picks: ``l1-path`` on the CPU, ``batched`` on a GPU.

    On the CPU a pass costs about its probes' GEMM flops, so what counts is probe-passes:
    on MiniLM layer 4 (XPOS, 8 x 8 grid to 1e-5) ``l1-path`` needed 113 per probe against
    ``batched``'s 165 and took 263-265 s against 305-351 s (Intel Xeon, 2 cores, interleaved;
    188 s against 268 s on an AMD EPYC), and 23 s against 58 s at tol 1e-3.  On a GPU a pass
    costs about the same for 8 or 64 probes, so what counts is sequential passes: there the
    same grid is 716 passes ``batched`` against 1,834 along ``l1-path`` (the sum of its
    eight stages' longest probes; counted from the CPU run, not yet timed on a GPU)."""
    if name != "auto":
        return name
    return "batched" if device.split(":")[0] == "cuda" else "l1-path"


def train_grid(blocks, n_classes: int, l1s, l2s, *, xp, schedule: str = "batched", tol: float = DEFAULT_TOL,
               max_iter: int = DEFAULT_MAX_ITER, gap_tol: float | None = None, counts=None, gram=None,
               on_iteration=None) -> Solutions:
    """All probes of the grid ``l1s x l2s``, in grid order (l1 outer, l2 inner).

    ``batched``: every probe in one :func:`train_probes` call, all of them in every pass.
    ``path``: one call per l2 value, largest first (the best-conditioned problems), each
    holding every l1 and started from the previous call's solutions at the same l1: a
    warm start along the regularization path, strong to weak penalty (as glmnet does
    along its lambda path; Friedman, Hastie & Tibshirani 2010).  ``l1-path``: the same
    along l1, one call per l1 value, largest first, each holding every l2.  Every probe
    still stops on its own certificate, so all schedules solve the same problems to the
    same ``tol``; only the work differs.  Measured (README): on MiniLM layer 4, XPOS, 2 CPU
    cores, the benchmark's 8 x 8 grid took 268 s ``batched``, 208 s with ``path`` and 187 s
    along l1 (staging alone, without the warm start, saved nothing on a 4 x 4 grid); on an
    ill-conditioned synthetic problem ``path`` took 23% more passes.  On a GPU
    a pass costs about the same for 4 or 64 probes, so fewer, wider passes (``batched``)
    should win there (:func:`resolve_grid_schedule`; counted, not yet timed on a GPU).
    ``iterations`` count each probe's own passes;
    ``on_iteration(passes so far, probes still to finish)`` counts the whole grid.
    ``gram``: the blocks' :meth:`MultinomialLogistic.gram`, when the caller has it.
    """
    if schedule not in GRID_SCHEDULES:
        raise ValueError(f"schedule must be one of {GRID_SCHEDULES}, got {schedule!r}")
    counts = class_counts(blocks, n_classes) if counts is None else counts
    gram = MultinomialLogistic(n_classes).gram(blocks) if gram is None else gram  # one pass for every call
    if schedule == "batched":
        grid = [(a, b) for a in l1s for b in l2s]
        return train_probes(blocks, n_classes, [g[0] for g in grid], [g[1] for g in grid], xp=xp, tol=tol,
                            max_iter=max_iter, gap_tol=gap_tol, counts=counts, gram=gram, on_iteration=on_iteration)
    along_l1 = schedule == "l1-path"
    path, held = (l1s, l2s) if along_l1 else (l2s, l1s)  # one call per path value, each holding every held value
    stages, start, passes = {}, None, 0
    order = sorted(range(len(path)), key=lambda j: -path[j])
    for k, j in enumerate(order):
        later = (len(order) - k - 1) * len(held)  # probes of the stages still to come
        progress = None if on_iteration is None else (
            lambda it, active, before=passes, later=later: on_iteration(before + it, active + later))
        l1, l2 = ([l1s[j]] * len(l2s), list(l2s)) if along_l1 else (list(l1s), [l2s[j]] * len(l1s))
        sol = train_probes(blocks, n_classes, l1, l2, xp=xp, tol=tol, max_iter=max_iter,
                           gap_tol=gap_tol, counts=counts, gram=gram, on_iteration=progress, start=start)
        stages[j], start = sol, (sol.W, sol.b)
        passes += int(sol.iterations.max())

    def grid_order(name: str) -> np.ndarray:
        """Probe (i, j) of the grid is probe j of the call for l1s[i] (``l1-path``), or probe i
        of the call for l2s[j] (``path``)."""
        axis = 1 if name == "W" else 0  # W is (d, P, C); the others have the probe axis first
        stage_probe = [(stages[i], j) if along_l1 else (stages[j], i)
                       for i in range(len(l1s)) for j in range(len(l2s))]
        return np.stack([np.take(getattr(stage, name), p, axis=axis) for stage, p in stage_probe], axis=axis)

    return Solutions(**{name: grid_order(name) for name in Solutions.__dataclass_fields__})


def predict(blocks, W: np.ndarray, b: np.ndarray, xp) -> tuple[np.ndarray, np.ndarray]:
    """One pass: predicted class of every row for every probe ``(n_rows, P)`` and the
    rows' true classes ``(n_rows,)``, on the host."""
    from probe_engine.backend import to_numpy
    d, P, C = W.shape
    # Features whose weights are 0 in every probe add exactly nothing to a logit, so only the
    # others are read: top-k probes (20 fractions up to 20% of 2,688 neurons) then cost a
    # fifth of the full-width product.
    used = np.flatnonzero(np.any(to_numpy(W) != 0, axis=(1, 2)))
    narrow = xp.asarray(used) if len(used) < d // 2 else None
    W2 = xp.asarray((W if narrow is None else W[used]).reshape(-1, P * C))
    bd = xp.asarray(b)
    preds, truth = [np.zeros((0, P), np.int64)], [np.zeros(0, np.int64)]
    for X, y in blocks:
        logits = (X if narrow is None else X[:, narrow]) @ W2
        preds.append(to_numpy((logits.reshape(len(y), P, C) + bd).argmax(axis=2)))
        truth.append(to_numpy(y))
    return np.concatenate(preds), np.concatenate(truth)


def accuracies(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per probe, the share of rows :func:`predict` got right; NaN for a split with no rows."""
    return (pred == truth[:, None]).mean(axis=0) if len(truth) else np.full(pred.shape[1], np.nan)
