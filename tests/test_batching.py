"""Token-budget batches: within budget, every sentence once, and the cheapest cut points."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from extractor.batching import BATCH_OVERHEAD, token_budget_batches


def batching_cost(batches, length_of, budget):
    return sum(len(b) * max(length_of[s] for s in b) + BATCH_OVERHEAD * budget for b in batches)


def brute_force_cost(lengths, budget):
    """The cheapest split of the longest-first order into contiguous batches within the budget,
    by trying every set of cut points (an independent reference for small inputs)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    best = np.inf
    for cuts in itertools.product([False, True], repeat=len(order) - 1):
        batches, current = [], [order[0]]
        for k, cut in zip(order[1:], cuts):
            if cut:
                batches.append(current)
                current = []
            current.append(k)
        batches.append(current)
        if all(len(b) == 1 or len(b) * lengths[b[0]] <= budget for b in batches):
            best = min(best, batching_cost(batches, lengths, budget))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_batches_are_the_cheapest_split_within_the_budget(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 40, size=10)
    budget = 96
    sentences = np.arange(100, 110)  # ids differ from positions: the batches hold ids
    batches = token_budget_batches(sentences, lengths, budget)
    length_of = dict(zip(sentences.tolist(), lengths.tolist()))
    assert sorted(np.concatenate(batches).tolist()) == sentences.tolist()
    assert all(len(b) == 1 or len(b) * max(length_of[s] for s in b) <= budget for b in batches)
    assert [length_of[s] for b in batches for s in b] == sorted(lengths.tolist(), reverse=True)
    assert batching_cost(batches, length_of, budget) == pytest.approx(brute_force_cost(lengths.tolist(), budget))


def test_cuts_fall_where_the_length_drops_rather_than_at_the_budget():
    """Greedy filling would put the two long sentences with six short ones, padding all to 30."""
    lengths = np.array([30, 30, 5, 5, 5, 5, 5, 5, 5, 5])
    batches = token_budget_batches(np.arange(10), lengths, budget=240)
    assert [b.tolist() for b in batches] == [[0, 1], [2, 3, 4, 5, 6, 7, 8, 9]]


def test_a_sentence_longer_than_the_budget_is_a_batch_alone_and_ties_keep_index_order():
    lengths = np.array([4, 50, 4, 4])
    batches = token_budget_batches(np.array([7, 3, 9, 1]), lengths, budget=16)
    assert [b.tolist() for b in batches] == [[3], [1, 7, 9]]
    assert token_budget_batches(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 16) == []
