"""The CuPy path: the same solver lines on the GPU.  Runs whenever a GPU and CuPy
are present; skipped otherwise, with the reason in pytest's summary (-ra)."""

from __future__ import annotations

import numpy as np
import pytest

from probe_engine.backend import gpu_available

pytestmark = pytest.mark.skipif(not gpu_available(), reason="no CUDA GPU with CuPy here: the CuPy path is untested in this run")


def test_cupy_solver_matches_numpy():
    import cupy

    from probe_engine.blocks import InMemoryBlocks
    from probe_engine.train import train_probes

    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 40)).astype(np.float32)
    y = (X @ rng.normal(size=(40, 5)) + rng.gumbel(size=(3000, 5))).argmax(axis=1)
    grid = ([1e-3, 1e-2, 0.0], [1e-3, 0.0, 1e-2])
    cpu = train_probes(InMemoryBlocks([(X[:2048], y[:2048]), (X[2048:], y[2048:])], 40), 5, *grid, xp=np, tol=1e-6)
    gpu_blocks = InMemoryBlocks([(cupy.asarray(X[:2048]), cupy.asarray(y[:2048])),
                                 (cupy.asarray(X[2048:]), cupy.asarray(y[2048:]))], 40)
    gpu = train_probes(gpu_blocks, 5, *grid, xp=cupy, tol=1e-6)
    assert gpu.converged.all() and cpu.converged.all()
    np.testing.assert_allclose(gpu.objective, cpu.objective, rtol=1e-5)
    # With l2 = 0 the minimizer need not be unique: objectives only.  Elsewhere the objective
    # is 2*l2-strongly convex, so two points certified to tol lie within about tol / (2*l2)
    # of the minimizer (per weight, loosely): that is the tolerance, not float32 noise.
    l2 = np.array(grid[1])
    for p in np.flatnonzero(l2 > 0):
        np.testing.assert_allclose(gpu.W[:, p], cpu.W[:, p], atol=1e-6 / (2 * l2[p]))


def test_cupy_restricted_probes_match_numpy():
    """Top-k-style probes (support masks, the Gram preconditioner per support, passes narrowed
    to the running probes' columns) on the GPU against the same run on the CPU."""
    import cupy

    from probe_engine.blocks import InMemoryBlocks
    from probe_engine.train import train_probes

    rng = np.random.default_rng(2)
    X = rng.normal(size=(3000, 40)).astype(np.float32)
    y = (X @ rng.normal(size=(40, 5)) + rng.gumbel(size=(3000, 5))).argmax(axis=1)
    support = np.zeros((40, 3), bool)
    support[:10, 0] = True
    support[:25, 1] = True
    support[:, 2] = True
    grid = ([0.0, 0.0, 1e-3], [1e-3, 1e-3, 1e-3])
    cpu = train_probes(InMemoryBlocks([(X, y)], 40), 5, *grid, xp=np, tol=1e-6, support=support)
    gpu = train_probes(InMemoryBlocks([(cupy.asarray(X), cupy.asarray(y))], 40), 5, *grid, xp=cupy, tol=1e-6,
                       support=support)
    assert gpu.converged.all() and cpu.converged.all()
    np.testing.assert_allclose(gpu.objective, cpu.objective, rtol=1e-5)
    assert not gpu.W[~support[:, 0], 0].any() and not gpu.W[~support[:, 1], 1].any()
    np.testing.assert_allclose(gpu.W, cpu.W, atol=1e-6 / (2 * 1e-3))


def test_cupy_estimator_matches_numpy():
    from probe_engine import ElasticNetProbe

    rng = np.random.default_rng(1)
    X = rng.normal(size=(1000, 30))
    y = (X @ rng.normal(size=(30, 4)) + rng.gumbel(size=(1000, 4))).argmax(axis=1)
    cpu = ElasticNetProbe(1e-3, 1e-3, tol=1e-6).fit(X, y)
    gpu = ElasticNetProbe(1e-3, 1e-3, tol=1e-6, device="cuda").fit(X, y)
    np.testing.assert_allclose(gpu.coef_, cpu.coef_, atol=1e-6 / (2 * 1e-3))  # tol / strong convexity
