"""Grid search by screening: every grid point to a loose tolerance, then only the
contenders to the tight one.

A grid exists to choose (l1, l2) on dev.  Most of its probes lose that choice by
far more than their optimization error can change their dev accuracy, yet solving
them to a tight tolerance is most of the grid's cost (weakly penalized l1 probes
take hundreds of passes).  So, as successive halving does with hyperparameter
configurations (Jamieson & Talwalkar, "Non-stochastic best arm identification and
hyperparameter optimization", AISTATS 2016), the grid is solved in two rounds:

1. every probe to ``screen_tol`` (a certificate, as always, only looser);
2. the probes whose dev accuracy is within ``margin`` of the best one's are
   continued, warm-started from their round-1 answers, to ``tol``; the choice
   is made among them alone.

A probe left after round 1 keeps its round-1 answer and says so (its record's
``tol`` is ``screen_tol``).  The chosen probe is one of round 2's, certified to ``tol``
unless it ran out of passes (then reported not converged, as always).  What
screening can change is the choice itself: a screened-out probe wins the exhaustive
grid only if refining raises its dev accuracy by more than ``margin`` more than it
raises the best contender's (its final lead may be small).
Measured on MiniLM layer 4, XPOS, the benchmark's 64 probes: dev accuracies at
``tol = 1e-3`` and ``1e-5`` differ by 0.07 points on average and 0.31 at most,
and the probe chosen at 1e-5 is third at 1e-3.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from probe_engine.datafit import MultinomialLogistic
from probe_engine.train import class_counts, train_grid, train_probes

#: Contenders are within this many accuracy points (as a fraction) of the best dev accuracy.
DEFAULT_MARGIN = 0.003


def contenders(dev_accuracy, margin: float) -> np.ndarray:
    """Indices of the probes whose dev accuracy is at least ``best - margin`` (NaN never is);
    every probe when no accuracy is a number (no dev rows: nothing to screen on)."""
    acc = np.asarray(dev_accuracy, dtype=np.float64)
    if not np.isfinite(acc).any():
        return np.arange(len(acc))
    # a hair of slack: a probe exactly ``margin`` behind must not fall out by rounding
    # (0.9 - 0.003 < 0.897 in float64; 3 of 4,000 such cases on 5,000 dev rows)
    return np.flatnonzero(acc >= np.nanmax(acc) - margin - 1e-12)


def screened_grid(blocks, n_classes: int, l1s, l2s, *, xp, dev_accuracy, screen_tol: float, margin: float,
                  tol: float, max_iter: int, gap_tol: float | None = None, counts=None, schedule: str = "batched",
                  on_iteration=None):
    """The grid ``l1s x l2s`` (grid order: l1 outer, l2 inner) in two rounds (module docstring).

    ``dev_accuracy(W (d, P, C), b (P, C)) -> (P,)`` scores host weights on dev.  Round 1
    runs with ``schedule`` (see :func:`probe_engine.train.train_grid`) and ignores
    ``gap_tol``; round 2 is one batch of the contenders, whatever the schedule.  Returns
    ``(solutions, refined)``: every probe's answer, ``refined[p]`` true for the probes of
    round 2 (certified to ``tol``, their ``iterations`` counting both rounds' passes: at most
    ``max_iter`` in all, or ``max_iter + 1`` for a contender that used every pass in round 1
    and gets the one pass that checks its answer); the others are certified to
    ``screen_tol`` (or ran out of passes).  With ``screen_tol <= tol`` round 1 already is
    the answer: every probe is refined.
    """
    counts = class_counts(blocks, n_classes) if counts is None else counts
    gram = MultinomialLogistic(n_classes).gram(blocks)  # one pass for both rounds
    P = len(l1s) * len(l2s)
    if screen_tol <= tol:
        sol = train_grid(blocks, n_classes, l1s, l2s, xp=xp, schedule=schedule, tol=tol, max_iter=max_iter,
                         gap_tol=gap_tol, counts=counts, gram=gram, on_iteration=on_iteration)
        return sol, np.ones(P, bool)
    passes = [0]  # round 1's passes as its progress reports them (a path schedule's stages add up)

    def first_progress(it, active):
        passes[0] = max(passes[0], it)
        if on_iteration is not None:
            on_iteration(it, active)

    first = train_grid(blocks, n_classes, l1s, l2s, xp=xp, schedule=schedule, tol=screen_tol, max_iter=max_iter,
                       counts=counts, gram=gram, on_iteration=first_progress)
    keep = contenders(dev_accuracy(first.W, first.b), margin)
    grid = [(a, c) for a in l1s for c in l2s]
    progress = None if on_iteration is None else (lambda it, active: on_iteration(passes[0] + it, active))
    # each contender gets the passes round 1 left it (at least the one that checks its start)
    budget = np.maximum(1, max_iter - first.iterations[keep])
    second = train_probes(blocks, n_classes, [grid[p][0] for p in keep], [grid[p][1] for p in keep], xp=xp,
                          tol=tol, max_iter=budget, gap_tol=gap_tol, counts=counts, gram=gram,
                          on_iteration=progress, start=(first.W[:, keep], first.b[keep]))
    merged = {name: getattr(first, name).copy() for name in first.__dataclass_fields__}
    for name, values in merged.items():
        new = getattr(second, name)
        if name == "W":
            values[:, keep] = new
        elif name == "iterations":
            values[keep] += new
        else:
            values[keep] = new
    refined = np.zeros(P, bool)
    refined[keep] = True
    return replace(first, **merged), refined
