"""Neuron rankings, minimal sets and control labels against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from probe_engine.blocks import InMemoryBlocks
from probe_engine.neurons import (bottom_k, control_labels, layer_distribution, minimal_set, rank, selectivity,
                                  sizes_for, top_k_supports)
from probe_engine.ranking import class_means, lca_ordering, probeless_ordering
from probe_engine.train import predict, train_probes


def test_lca_ordering_by_hand():
    # |W| per neuron (rows) and class (columns); each class's mass is 1.0
    W = np.array([[0.5, 0.0], [-0.3, 0.1], [0.2, -0.6], [0.0, 0.3], [0.0, 0.0]])
    ordering, cutoffs = lca_ordering(W, stride=10)
    # p = 0: each class's top neuron: n0 (class 0) and n2 (class 1); n2 first (largest share, 0.6 > 0.5)
    # p = 0.6: class 0 needs n0 + n1 (0.5 + 0.3 >= 0.6) -> n1
    # p = 0.7: class 1 needs n2 + n3 (0.6 + 0.3 >= 0.7) -> n3
    # n4 has no weight at all: last
    assert ordering.tolist() == [2, 0, 1, 3, 4]
    assert cutoffs == [2, 2, 2, 2, 2, 2, 3, 4, 4, 4, 4]


def test_lca_ties_go_to_the_lower_index():
    W = np.array([[0.0, 0.2], [0.5, 0.0], [0.5, 0.0], [0.0, 0.8]])
    assert lca_ordering(W, stride=4)[0].tolist()[:3] == [3, 1, 2]


def test_probeless_against_a_direct_computation():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 12)).astype(np.float32) + np.repeat(rng.normal(size=(1, 12)), 500, 0)
    y = rng.integers(0, 4, size=500)
    X[y == 2, 5] += 3.0  # neuron 5 separates class 2
    blocks = InMemoryBlocks([(X[:200], y[:200]), (X[200:], y[200:])], 12)
    means = class_means(blocks, 4)
    direct = np.stack([X[y == c].astype(np.float64).mean(axis=0) for c in range(4)])
    np.testing.assert_allclose(means, direct, rtol=1e-6)
    score = sum(np.abs(direct[a] - direct[b]) for a in range(4) for b in range(a + 1, 4))
    assert probeless_ordering(means).tolist() == np.argsort(-score, kind="stable").tolist()
    assert probeless_ordering(means)[0] == 5


@pytest.fixture(scope="module")
def planted():
    """40 neurons; only neurons 7, 19, 23 and 31 carry the label (3 classes)."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(3000, 40)).astype(np.float32)
    informative = [7, 19, 23, 31]
    y = (X[:, informative] @ rng.normal(size=(4, 3)) * 3).argmax(axis=1)
    return X, y, informative


def test_minimal_set_finds_the_planted_neurons(planted):
    X, y, informative = planted
    train = InMemoryBlocks([(X[:2000], y[:2000])], 40)
    dev = InMemoryBlocks([(X[2000:], y[2000:])], 40)
    oracle = train_probes(train, 3, [1e-3], [1e-4], xp=np, tol=1e-6)
    pred, truth = predict(dev, oracle.W, oracle.b, np)
    oracle_dev = (pred[:, 0] == truth).mean()
    ordering = lca_ordering(oracle.W[:, 0])[0]
    assert sorted(ordering[:4].tolist()) == informative
    ks = sizes_for([0.025, 0.05, 0.1, 0.2, 0.5], 40)
    assert ks == [1, 2, 4, 8, 20]
    top = train_probes(train, 3, [1e-3] * 5, [1e-4] * 5, xp=np, tol=1e-6, support=top_k_supports(ordering, ks, 40))
    assert all(np.count_nonzero(top.W[:, p].any(axis=1)) <= k for p, k in enumerate(ks))  # masks hold
    pred, truth = predict(dev, top.W, top.b, np)
    dev_acc = (pred == truth[:, None]).mean(axis=0).tolist()
    assert ks[minimal_set(ks, dev_acc, oracle_dev, delta=0.01)] == 4
    # the bottom 4 know nothing: chance level, far below the top 4
    bottom = train_probes(train, 3, [1e-3], [1e-4], xp=np, tol=1e-6, support=top_k_supports(ordering[::-1], [4], 40))
    pred, _ = predict(dev, bottom.W, bottom.b, np)
    assert (pred[:, 0] == truth).mean() < dev_acc[2] - 0.3


def test_minimal_set_is_none_when_nothing_is_close_enough():
    assert minimal_set([1, 2, 4], [0.5, 0.6, 0.7], oracle_dev=0.9, delta=0.1) is None
    assert minimal_set([1, 2, 4], [0.5, 0.85, 0.9], oracle_dev=0.9, delta=0.05) == 1


def test_control_labels_are_a_function_of_word_type_and_follow_the_distribution():
    rng = np.random.default_rng(2)
    types = np.array([f"w{i}" for i in range(20000)])
    words = rng.choice(types, size=50000)
    counts = np.array([70, 20, 10])
    table = control_labels(words, counts, seed=3)
    assert table == control_labels(words[::-1], counts, seed=3)  # order of tokens does not matter
    assert table != control_labels(words, counts, seed=4)
    assert set(table) == set(words.tolist())
    drawn = np.bincount(list(table.values()), minlength=3) / len(table)
    np.testing.assert_allclose(drawn, counts / counts.sum(), atol=0.01)
    assert control_labels(np.array(["The", "the"]), counts, 0).keys() == {"The", "the"}  # case-sensitive


def test_a_word_types_control_class_does_not_depend_on_the_other_types():
    """Adding a test store's words must leave every training word's control class as it was:
    one generator over all the sorted types moved 88% of a real run's training tokens when
    only --test changed.  A class of count 0 is never drawn."""
    train = np.array([f"w{i}" for i in range(3000)])
    counts = np.array([50, 0, 30, 20])
    alone = control_labels(train, counts, seed=7)
    more = control_labels(np.concatenate([train, ["aardvark", "Zebra", "w-new", "0"]]), counts, seed=7)
    assert {w: more[w] for w in alone} == alone
    assert 1 not in set(more.values())
    assert control_labels(train[:10], counts, seed=7) == {w: alone[w] for w in train[:10]}


def test_layer_distribution_and_selectivity():
    assert layer_distribution(np.array([0, 3, 4, 9, 11]), [0, 2, 5], hidden=4) == {0: 2, 2: 1, 5: 2}
    assert selectivity(0.95, 0.7) == pytest.approx(0.25)


def test_predict_reads_only_features_some_probe_weighs_and_predicts_as_the_full_product():
    """Top-k probes: weights zero outside few features.  Predictions equal the float64 full
    product's, and the zero-weight features are not read: a NaN in one of them (which the full
    product would spread to every logit, 0 * NaN = NaN) changes nothing."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((700, 40)).astype(np.float32)
    y = rng.integers(0, 5, 700)
    W = rng.standard_normal((40, 3, 5)).astype(np.float32)
    W[12:] = 0  # 12 of 40 features used
    W[:4, 1] = 0
    b = rng.standard_normal((3, 5)).astype(np.float32)
    expected = (np.einsum("nd,dpc->npc", X.astype(np.float64), W) + b).argmax(axis=2)
    pred, truth = predict(InMemoryBlocks([(X[:300], y[:300]), (X[300:], y[300:])], 40), W, b, np)
    assert np.array_equal(pred, expected) and np.array_equal(truth, y)
    X[:, 20] = np.nan
    pred, _ = predict(InMemoryBlocks([(X, y)], 40), W, b, np)
    assert np.array_equal(pred, expected)


def test_bottom_k_draws_among_tied_unweighted_neurons():
    """LCA puts neurons with no weight last by index: with at least k of them the bottom k are
    drawn among them (seeded), not the highest indices; with fewer, the last k of the ordering."""
    W = np.zeros((10, 2))
    W[[0, 2, 5], 0] = [3.0, 2.0, 1.0]
    W[4, 1] = 0.5
    ordering = lca_ordering(W)[0]
    unweighted = ~W.any(axis=1)  # neurons 1, 3, 6, 7, 8, 9
    assert ordering[-6:].tolist() == [1, 3, 6, 7, 8, 9]
    a, drawn = bottom_k(ordering, 3, unweighted, np.random.default_rng(0))
    b, _ = bottom_k(ordering, 3, unweighted, np.random.default_rng(0))
    assert drawn and a.tolist() == b.tolist() and set(a) <= {1, 3, 6, 7, 8, 9} and len(set(a)) == 3
    draws = {tuple(bottom_k(ordering, 3, unweighted, np.random.default_rng(seed))[0]) for seed in range(20)}
    assert len(draws) > 1  # not always the last three indices
    c, drawn = bottom_k(ordering, 7, unweighted, np.random.default_rng(0))
    assert not drawn and c.tolist() == sorted(ordering[-7:].tolist())
    last, drawn = bottom_k(ordering, 3, None, np.random.default_rng(0))  # no ties (probeless)
    assert not drawn and last.tolist() == [7, 8, 9]


def test_lca_neurons_entering_at_the_same_step_tie_by_index():
    """Neurons 0 and 1 enter at p = 0 (each its class's top neuron) with the same share, 0.5;
    neurons 2 and 3 enter together later, again with equal shares: each pair in index order."""
    W = np.array([[0.5, 0.0], [0.0, -0.5], [-0.5, 0.0], [0.0, 0.5]])
    ordering, cutoffs = lca_ordering(W, stride=4)
    assert ordering.tolist() == [0, 1, 2, 3]
    assert cutoffs == [2, 2, 2, 4, 4]


def test_probeless_ties_go_to_the_lower_index():
    """Neurons whose class means are all equal (constant in training: 0 after standardizing)
    tie at score 0, and two neurons tie at score 4: each tie in index order, as documented."""
    means = np.zeros((3, 40))
    means[:, 3] = [0.0, 1.0, 2.0]  # |0-1| + |0-2| + |1-2| = 4
    means[:, 10] = [5.0, 5.0, 7.0]  # 0 + 2 + 2 = 4
    means[:, 20] = [0.0, 3.0, 0.0]  # 3 + 0 + 3 = 6
    assert probeless_ordering(means).tolist() == [20, 3, 10] + [i for i in range(40) if i not in (3, 10, 20)]


def test_minimal_set_takes_the_smallest_k_whatever_the_order_of_the_fractions():
    """--fractions need not be sorted: the smallest qualifying k wins, not the first listed."""
    assert minimal_set([20, 5, 10], [0.91, 0.89, 0.9], oracle_dev=0.9, delta=0.02) == 1
    assert minimal_set([20, 5, 10], [0.91, 0.80, 0.9], oracle_dev=0.9, delta=0.02) == 2


def test_sizes_for_rounds_up_to_whole_neurons():
    """ceil(f * d), at least 1; a product that is a whole number up to float rounding stays it."""
    assert sizes_for([0.1, 0.01, 0.5, 1.0], 42) == [5, 1, 21, 42]  # 4.2 -> 5, 0.42 -> 1
    assert sizes_for([0.07, 0.29], 100) == [7, 29]  # 0.07 * 100 = 7.000000000000001, 0.29 * 100 = 28.999999999999996


def test_bottom_k_is_drawn_when_exactly_k_neurons_are_unweighted():
    """k equal to the number of zero-weight neurons: all of them, and reported as drawn among them."""
    W = np.zeros((10, 2))
    W[[0, 2, 5], 0] = [3.0, 2.0, 1.0]
    W[4, 1] = 0.5
    unweighted = ~W.any(axis=1)
    neurons, drawn = bottom_k(lca_ordering(W)[0], 6, unweighted, np.random.default_rng(0))
    assert drawn and neurons.tolist() == [1, 3, 6, 7, 8, 9]


def test_minimal_set_keeps_an_accuracy_exactly_delta_below_the_oracle():
    """0.1 - 0.01 is 0.09000000000000001 in floating point: an accuracy of 0.09 is within delta."""
    assert minimal_set([1, 2], [0.09, 0.10], oracle_dev=0.10, delta=0.01) == 0
    assert minimal_set([1, 2], [0.06, 0.07], oracle_dev=0.07, delta=0.01) == 0


def test_rank_takes_a_fitted_probe_and_refuses_its_coef_shape_mix_up():
    """A probe's coef_ is (classes, neurons) on the raw scale: passed as W it ranked the
    classes (an ordering of 3 for 64 neurons, no error); probe= ranks by coef_standardized_."""
    from probe_engine import ElasticNetProbe

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 16)) * np.arange(1, 17)
    y = (X[:, 3] / 4 + X[:, 9] / 10 > 0).astype(int) + (X[:, 12] > 0)
    probe = ElasticNetProbe(l1=1e-3, l2=1e-3).fit(X, y)
    np.testing.assert_array_equal(rank("lca", probe=probe), rank("lca", W=probe.coef_standardized_.T))
    assert len(rank("lca", probe=probe)) == 16
    with pytest.raises(ValueError, match=r"^rank\('lca'\): give W \(neurons, classes\) or probe"):
        rank("lca")
    with pytest.raises(ValueError, match=r"^rank\('probeless'\): give means"):
        rank("probeless")
    with pytest.raises(ValueError, match=r"^W: expected a non-empty \(neurons, classes\) matrix, got shape \(16,\)"):
        rank("lca", W=np.ones(16))
    with pytest.raises(ValueError, match="^W: has NaN or inf entries$"):
        rank("lca", W=np.array([[1.0, np.nan], [0.5, 0.2]]))
    with pytest.raises(ValueError, match="^means: has NaN or inf entries$"):
        rank("probeless", means=np.array([[1.0, np.inf], [0.5, 0.2]]))
    with pytest.raises(ValueError, match="^stride: expected a positive number"):
        lca_ordering(np.ones((3, 2)), stride=0)


def test_lca_is_the_same_whatever_the_memory_layout_and_places_every_weighted_neuron():
    """Ties at a step's mass boundary were decided by how A.sum rounded, which depends on
    the array's layout (81 of 300 quantized weight matrices ordered differently in C and
    Fortran order); a weight below the class total's rounding never entered a top set and
    was ordered among the zero-weight neurons."""
    rng = np.random.default_rng(1)
    for _ in range(50):
        W = np.round(rng.random((40, 3)), 3) * (rng.random((40, 3)) > 0.3)
        np.testing.assert_array_equal(lca_ordering(np.ascontiguousarray(W))[0], lca_ordering(np.asfortranarray(W))[0])
    order, _ = lca_ordering(np.array([[1.0], [1e-17], [0.0], [1e-17]]))
    np.testing.assert_array_equal(order, [0, 1, 3, 2])  # the zero-weight neuron 2 last


@pytest.mark.parametrize("call, message", [
    (lambda: sizes_for([0.0], 100), r"^fractions: each must be in \(0, 1\], got 0.0$"),
    (lambda: sizes_for([1.5], 100), r"^fractions: each must be in \(0, 1\], got 1.5$"),
    (lambda: top_k_supports(np.arange(4), [-1], 4), r"^ks: each must be a whole number of neurons in 1..4, got -1$"),
    (lambda: top_k_supports(np.arange(4), [5], 4), r"^ks: each must be a whole number of neurons in 1..4, got 5$"),
    (lambda: top_k_supports(np.array([0, 7]), [1], 4), r"^ordering: expected neuron indices in 0..3"),
    (lambda: minimal_set([1, 2], [0.9, 0.95], 0.95, -0.01), r"^delta: must be >= 0 and finite, got -0.01$"),
    (lambda: minimal_set([1, 2], [0.9, 0.95], 0.95, float("nan")), r"^delta: must be >= 0 and finite, got nan$"),
    (lambda: minimal_set([1, 2, 3], [0.9, 0.95], 0.95, 0.01), r"^ks and dev_accuracy: one accuracy per k, got 3 ks"),
    (lambda: layer_distribution([0, 13], [0, 1, 2], 4), r"^neurons: expected indices in 0..11 \(3 layers of 4\), got 13$"),
    (lambda: layer_distribution([0], [0, 1], 0), r"^layers and hidden: expected distinct layer ids and hidden >= 1"),
    (lambda: control_labels(np.array(["a", "b"]), np.zeros(3), 0), r"^class_counts: expected counts >= 0 per class"),
])
def test_the_step_functions_refuse_bad_input_by_name(call, message):
    """They returned a wrong answer without a word (a negative k marked d - 1 neurons, a
    neuron past the last layer was counted in none), or failed deep inside numpy."""
    with pytest.raises(ValueError, match=message):
        call()
