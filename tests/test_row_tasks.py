"""Row slices of a data pass: fixed cuts, results in order, the same bits on any number of cores."""

from __future__ import annotations

import numpy as np
import pytest

from probe_engine import row_tasks
from probe_engine.blocks import InMemoryBlocks
from probe_engine.datafit import MultinomialLogistic


def test_slices_are_fixed_and_results_come_back_in_order():
    n = 2 * row_tasks.ROWS_PER_TASK + 7
    X, y = np.arange(n, dtype=np.float32)[:, None], np.zeros(n, dtype=np.int64)
    starts = row_tasks.map_row_slices(lambda X_, y_: (int(X_[0, 0]), len(y_)), X, y)
    R = row_tasks.ROWS_PER_TASK
    assert starts == [(0, R), (R, R), (2 * R, 7)]


def _problem(seed=0, n=3000, d=12, P=3, C=4):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d), dtype=np.float32)
    y = rng.integers(0, C, n)
    W = (0.3 * rng.standard_normal((d, P, C))).astype(np.float32)
    b = (0.1 * rng.standard_normal((P, C))).astype(np.float32)
    return InMemoryBlocks([(X[:1700], y[:1700]), (X[1700:], y[1700:])], d), X, y, W, b


@pytest.mark.parametrize("row_scale", ["small", "large", "mixed"])
def test_pass_matches_a_float64_reference(row_scale):
    """Small logits are exponentiated as they are, large ones (|logit| > 64, where exp
    would overflow float32 unshifted) after the row max is subtracted; "mixed" puts
    large rows in some row slices only (rows 0-699 of a 1,700-row block cut at
    ROWS_PER_TASK), so a pass takes both branches."""
    blocks, X, y, W, b = _problem()
    assert 700 < row_tasks.ROWS_PER_TASK < 1700
    if row_scale != "small":
        X = X.copy()
        X[slice(None) if row_scale == "large" else slice(0, 700)] *= 60.0  # logits of several hundred
        assert np.abs(np.einsum("nd,dpc->npc", X, W)).max() > 2 * 89  # float32 exp overflows past 88.7
        blocks = InMemoryBlocks([(X[:1700], y[:1700]), (X[1700:], y[1700:])], X.shape[1])
    loss, grad_W, grad_b = MultinomialLogistic(4).value_and_gradient(blocks, W, b)
    assert np.isfinite(loss).all() and np.isfinite(grad_W).all()
    logits = np.einsum("nd,dpc->npc", X.astype(np.float64), W.astype(np.float64)) + b
    logp = logits - logits.max(axis=2, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=2, keepdims=True))
    onehot = np.eye(4)[y][:, None, :]
    np.testing.assert_allclose(loss, -(logp * onehot).sum(axis=(0, 2)) / len(y), rtol=1e-6)
    residual = np.exp(logp) - onehot
    np.testing.assert_allclose(grad_W, np.einsum("nd,npc->dpc", X, residual) / len(y), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad_b, residual.mean(axis=0), rtol=1e-4, atol=1e-6)


def test_one_core_and_many_give_the_same_bits(monkeypatch):
    blocks, _, _, W, b = _problem(seed=1)
    threaded = MultinomialLogistic(4).value_and_gradient(blocks, W, b)
    monkeypatch.setattr(row_tasks, "_pool", lambda: None)  # what a 1-core machine runs
    alone = MultinomialLogistic(4).value_and_gradient(blocks, W, b)
    for a, c in zip(threaded, alone):
        assert np.array_equal(a, c)
