"""Probes with different supports in one pass: groups of probes, one GEMM per group."""

import numpy as np
import pytest

import probe_engine.column_groups as column_groups
from probe_engine.blocks import InMemoryBlocks, StreamedBlocks
from probe_engine.column_groups import as_slice, column_order, partition
from probe_engine.datafit import MultinomialLogistic
from probe_engine.train import train_probes


@pytest.fixture
def cost_model(monkeypatch):
    """Pin the cost model the hand computations below use."""
    monkeypatch.setattr(column_groups, "GEMM_FIXED_COLUMNS", 90)
    monkeypatch.setattr(column_groups, "SPLIT_GAIN", 0.9)


def nested(d: int, sizes, seed: int = 0) -> np.ndarray:
    """Supports that are the first ``sizes[p]`` columns of one random ordering (top-k sets)."""
    order = np.random.default_rng(seed).permutation(d)
    support = np.zeros((d, len(sizes)), bool)
    for p, k in enumerate(sizes):
        support[order[:k], p] = True
    return support


def test_partition_takes_the_cheapest_cuts_of_the_cost_model(cost_model):
    """Supports of 100, 10, 100, 10 columns (nested), cost of a group = width x (probes x C + 90).
    C = 50: one group 100 x 290 = 29,000; {10, 10} + {100, 100}: 10 x 190 + 100 x 190 = 20,900;
    {10} + {10, 100, 100}: 10 x 140 + 100 x 240 = 25,400; one probe each: 2 x 1,400 + 2 x 14,000
    = 30,800; so two groups (20,900 <= 0.9 x 29,000).  C = 5: one group 100 x 110 = 11,000 against
    10 x 100 + 100 x 100 = 11,000 for two, not 10% cheaper: one group."""
    support = nested(100, [100, 10, 100, 10])
    assert [g.tolist() for g in partition(support, 50)] == [[1, 3], [0, 2]]
    assert [g.tolist() for g in partition(support, 5)] == [[0, 1, 2, 3]]
    assert [g.tolist() for g in partition(support[:, :1], 50)] == [[0]]


def test_column_order_makes_nested_groups_one_slice_each(cost_model):
    support = nested(2688, [int(round(f * 2688)) for f in np.arange(1, 21) / 100])
    groups = partition(support, 45)
    assert len(groups) > 1
    order = column_order(support, groups)
    assert sorted(order.tolist()) == np.flatnonzero(support.any(axis=1)).tolist()
    position = np.full(2688, -1)
    position[order] = np.arange(len(order))
    for g in groups:
        cols = np.sort(position[support[:, g].any(axis=1)])
        assert as_slice(cols) == slice(0, len(cols))
    assert as_slice(np.array([2, 3, 5])) is None and as_slice(np.array([4, 5])) == slice(4, 6)


def test_a_grouped_pass_equals_the_one_gemm_pass(monkeypatch):
    """Loss, gradients on each probe's support, and intercept gradients agree with the pass
    that computes every probe over the union of the supports."""
    rng = np.random.default_rng(1)
    n, d, C = 700, 60, 6
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, C, n)
    blocks = InMemoryBlocks([(X[:300], y[:300]), (X[300:], y[300:])], d)
    support = nested(d, [3, 40, 6, 30, 50])
    support[:, 4] = False  # a probe on other columns than the rest
    support[rng.choice(d, 8, replace=False), 4] = True
    W = (rng.normal(size=(d, 5, C)) * support[:, :, None]).astype(np.float32)
    b = rng.normal(size=(5, C)).astype(np.float32)
    monkeypatch.setattr(column_groups, "GEMM_FIXED_COLUMNS", 0)  # every cut pays
    grouped = MultinomialLogistic(C)
    loss, grad_W, grad_b = grouped.value_and_gradient(blocks, W, b, support)
    assert len(grouped._groups[1]) > 1
    monkeypatch.setattr(column_groups, "SPLIT_GAIN", 0.0)  # never cut
    one = MultinomialLogistic(C)
    ref_loss, ref_grad_W, ref_grad_b = one.value_and_gradient(blocks, W, b, support)
    assert len(one._groups[1]) == 1
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(grad_W * support[:, :, None], ref_grad_W * support[:, :, None], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad_b, ref_grad_b, rtol=1e-5, atol=1e-7)


def test_grouped_training_matches_one_gemm_and_is_bitwise_the_same_streamed(monkeypatch):
    """Top-k probes trained in groups: the same solutions as in one group (to the tolerance),
    and bitwise the same whether the rows are held or streamed."""
    rng = np.random.default_rng(2)
    n, d, C = 900, 40, 5
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X[:, :5] @ rng.normal(size=(5, C)) + rng.gumbel(size=(n, C))).argmax(axis=1)
    support = nested(d, [2, 5, 10, 20, 40])
    grid = ([0.0, 1e-3, 0.0, 1e-3, 0.0], [1e-2, 1e-3, 1e-3, 1e-2, 1e-3])
    cuts = [(0, 400), (400, 900)]
    held = InMemoryBlocks([(X[a:c], y[a:c]) for a, c in cuts], d)
    streamed = StreamedBlocks(lambda i: (X[cuts[i][0]:cuts[i][1]].copy(), y[cuts[i][0]:cuts[i][1]]), len(cuts),
                              n, d)
    monkeypatch.setattr(column_groups, "GEMM_FIXED_COLUMNS", 0)
    assert len(partition(support, C)) > 1
    a = train_probes(held, C, *grid, xp=np, tol=1e-6, max_iter=5000, support=support)
    s = train_probes(streamed, C, *grid, xp=np, tol=1e-6, max_iter=5000, support=support)
    assert np.array_equal(a.W, s.W) and np.array_equal(a.b, s.b) and np.array_equal(a.iterations, s.iterations)
    assert a.converged.all()
    assert not (a.W * ~support[:, :, None]).any()
    monkeypatch.setattr(column_groups, "SPLIT_GAIN", 0.0)
    one = train_probes(held, C, *grid, xp=np, tol=1e-6, max_iter=5000, support=support)
    np.testing.assert_allclose(a.objective, one.objective, rtol=1e-6)
    np.testing.assert_allclose(a.W, one.W, atol=1e-3)


def test_partition_is_the_cheapest_split_by_brute_force(cost_model):
    """Against every split of the size-sorted probes into runs (2^(P-1) of them): the groups
    returned cost what the cheapest split costs under the documented model, width x (probes x C
    + 90), or are one group when no split is 10% cheaper than it."""
    from itertools import combinations

    def cost(groups, support, C):
        return sum(int(support[:, g].any(axis=1).sum()) * (len(g) * C + 90) for g in groups)

    rng = np.random.default_rng(3)
    for trial in range(40):
        P, d, C = int(rng.integers(2, 7)), 120, int(rng.choice([2, 5, 20, 50]))
        sizes = rng.integers(1, d + 1, P)
        support = nested(d, sizes, seed=trial) if trial % 2 else rng.random((d, P)) < sizes / d
        support[0] |= ~support.any(axis=0)  # no empty support
        order = np.argsort(support.sum(axis=0), kind="stable")
        splits = [np.split(order, list(cuts)) for r in range(P) for cuts in combinations(range(1, P), r)]
        best = min(cost(s, support, C) for s in splits)
        whole = cost([np.arange(P)], support, C)
        got = partition(support, C)
        assert sorted(np.concatenate(got).tolist()) == list(range(P))
        if best > 0.9 * whole:
            assert len(got) == 1, (trial, got)
        else:
            assert cost(got, support, C) == best, (trial, [g.tolist() for g in got])
