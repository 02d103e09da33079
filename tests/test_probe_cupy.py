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


def _grouped_cases():
    """Probes whose supports differ so much that a pass cuts them into column groups: nested
    top-k sets (groups that are slices of the narrowed rows, the narrowed copy reused as
    probes finish) and disjoint sets of equal size (groups gathered by index)."""
    rng = np.random.default_rng(3)
    n, d, C = 3000, 300, 12
    X = rng.normal(size=(n, d)).astype(np.float32)
    order = rng.permutation(d)
    y = (X[:, order[:40]] @ rng.normal(size=(40, C)) + rng.gumbel(size=(n, C))).argmax(axis=1)
    nested = np.zeros((d, 5), bool)
    for j, k in enumerate([3, 6, 30, 60, 150]):
        nested[order[:k], j] = True
    yield X, y, C, nested, [0.0, 1e-3, 0.0, 1e-3, 5e-2]
    n, d, C = 3000, 200, 6
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X[:, :30] @ rng.normal(size=(30, C)) + rng.gumbel(size=(n, C))).argmax(axis=1)
    disjoint = np.zeros((d, 3), bool)
    for j, part in enumerate(np.split(rng.permutation(d)[:35], [10, 20])):
        disjoint[part, j] = True
    yield X, y, C, disjoint, [0.0, 1e-3, 0.0]


def _split(X, y, xp):
    return [(xp.asarray(X[:2048]), xp.asarray(y[:2048])), (xp.asarray(X[2048:]), xp.asarray(y[2048:]))]


def test_cupy_grouped_passes_match_numpy():
    import cupy

    from probe_engine.blocks import InMemoryBlocks
    from probe_engine.column_groups import partition
    from probe_engine.datafit import MultinomialLogistic
    from probe_engine.train import train_probes

    for X, y, C, support, l1 in _grouped_cases():
        d, P = support.shape
        assert len(partition(support, C)) >= 2  # the case is what it claims: several groups per pass
        l2 = [1e-3] * P
        cpu = train_probes(InMemoryBlocks(_split(X, y, np), d), C, l1, l2, xp=np, tol=1e-5, support=support)
        blocks = InMemoryBlocks(_split(X, y, cupy), d)
        gpu = train_probes(blocks, C, l1, l2, xp=cupy, tol=1e-5, support=support)
        assert cpu.converged.all() and gpu.converged.all()
        np.testing.assert_allclose(gpu.objective, cpu.objective, rtol=1e-5)
        assert not gpu.W[~support].any()
        np.testing.assert_allclose(gpu.W, cpu.W, atol=1e-5 / (2 * 1e-3))  # tol / strong convexity
        # one grouped pass against the full-width pass on the same device, on each probe's support
        W = cupy.asarray(cpu.W * support[:, :, None])
        b = cupy.asarray(cpu.b)
        loss_g, grad_g, grad_bg = MultinomialLogistic(C).value_and_gradient(blocks, W, b, support)
        loss_f, grad_f, grad_bf = MultinomialLogistic(C).value_and_gradient(blocks, W, b)
        np.testing.assert_allclose(cupy.asnumpy(loss_g), cupy.asnumpy(loss_f), rtol=1e-6)
        np.testing.assert_allclose(cupy.asnumpy(grad_g)[support], cupy.asnumpy(grad_f)[support], atol=1e-6)
        np.testing.assert_allclose(cupy.asnumpy(grad_bg), cupy.asnumpy(grad_bf), atol=1e-6)


def test_cupy_narrowed_predict_matches_numpy():
    """``predict`` reads only the features some probe weighs (the ablations' zeroed oracles)."""
    import cupy

    from probe_engine.blocks import InMemoryBlocks
    from probe_engine.train import predict

    rng = np.random.default_rng(4)
    X = rng.normal(size=(2500, 60)).astype(np.float32)
    y = rng.integers(0, 4, size=2500)
    W = rng.normal(size=(60, 3, 4)).astype(np.float32)
    W[rng.permutation(60)[:40]] = 0  # 20 of 60 features weighed: the narrowed product
    b = rng.normal(size=(3, 4)).astype(np.float32)
    for weights in (W, np.zeros_like(W)):
        reference = (X @ weights.reshape(60, 12)).reshape(-1, 3, 4) + b
        pred_cpu, truth_cpu = predict(InMemoryBlocks(_split(X, y, np), 60), weights, b, np)
        pred_gpu, truth_gpu = predict(InMemoryBlocks(_split(X, y, cupy), 60), weights, b, cupy)
        assert np.array_equal(truth_gpu, y) and np.array_equal(truth_cpu, y)
        assert (pred_cpu != reference.argmax(axis=2)).sum() <= 2  # float32 ties only
        assert (pred_gpu != pred_cpu).sum() <= 2


def test_cupy_lipschitz_bound_past_the_lanczos_size_matches_the_host():
    """Past LANCZOS_FROM features the host takes the top eigenvalue by Lanczos, the GPU by its
    full symmetric eigensolver: the same bound."""
    import cupy

    from probe_engine.blocks import InMemoryBlocks
    from probe_engine.datafit import LANCZOS_FROM, MultinomialLogistic

    rng = np.random.default_rng(5)
    d = LANCZOS_FROM + 88
    X = (rng.normal(size=(3000, d)) * rng.uniform(0.5, 2, size=d)).astype(np.float32)
    y = rng.integers(0, 3, size=3000)
    datafit = MultinomialLogistic(3)
    gram = datafit.gram(InMemoryBlocks(_split(X, y, np), d))
    assert datafit.lipschitz_of(gram, cupy) == pytest.approx(datafit.lipschitz_of(gram, np), rel=1e-8)
