"""Unit tests of ntk/plan/batching.py: batches by token budget (batch size x longest item) and the automatic
budget per device kind."""
from __future__ import annotations

import random

import pytest

from ntk.plan.batching import auto_token_budget, by_token_budget


def _check(batches, items, n_tokens, budget, max_items=None):
    """Every item once, in order; each batch within the budget unless it holds one item; no batch could have taken
    the next item."""
    assert [x for b in batches for x in b] == list(items)
    for i, b in enumerate(batches):
        assert b, "empty batch"
        assert len(b) == 1 or len(b) * max(map(n_tokens, b)) <= budget
        if max_items:
            assert len(b) <= max_items
        if i + 1 < len(batches):  # greedy: the first item of the next batch did not fit
            nxt = batches[i + 1][0]
            grown = len(b) + 1
            assert grown * max(map(n_tokens, [*b, nxt])) > budget or (max_items and len(b) >= max_items)


def test_empty_input_gives_no_batch():
    assert list(by_token_budget([], len, 100)) == []


def test_equal_lengths_fill_the_budget():
    items = ["x" * 10] * 25
    batches = list(by_token_budget(items, len, 100))
    assert [len(b) for b in batches] == [10, 10, 5]


def test_padded_length_is_the_longest_item():
    lengths = [10, 10, 40, 10, 10]
    batches = list(by_token_budget(lengths, lambda t: t, 100))
    # [10, 10] + 40 -> 3 x 40 = 120 > 100: the 40 starts a new batch; 40 + 10 + 10 -> 3 x 40 = 120: split again
    assert batches == [[10, 10], [40, 10], [10]]


def test_an_item_over_the_budget_gets_a_batch_of_its_own():
    assert list(by_token_budget([5, 500, 5], lambda t: t, 100)) == [[5], [500], [5]]


def test_max_items_caps_the_batch():
    batches = list(by_token_budget(range(10), lambda _: 1, 10_000, max_items=3))
    assert batches == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert list(by_token_budget(range(3), lambda _: 1, 10_000, max_items=None)) == [[0, 1, 2]]


def test_works_on_a_one_shot_iterator_lazily():
    seen = []

    def gen():
        for i in range(6):
            seen.append(i)
            yield 10

    it = by_token_budget(gen(), lambda t: t, 20)
    assert next(it) == [10, 10]
    assert seen == [0, 1, 2]  # streams: only one item read ahead of the batch it yields


@pytest.mark.parametrize("seed", range(5))
def test_random_lengths_respect_the_invariants(seed):
    rng = random.Random(seed)
    items = [rng.randrange(1, 300) for _ in range(rng.randrange(0, 200))]
    budget = rng.choice([50, 256, 1000, 4096])
    max_items = rng.choice([None, 1, 4, 16])
    batches = list(by_token_budget(items, lambda t: t, budget, max_items))
    _check(batches, items, lambda t: t, budget, max_items)


@pytest.mark.parametrize("device,hidden,want", [
    ("cpu", 1024, 4096),  # 2**22 / 1024
    ("cpu", 16, 16384),  # tiny models capped
    ("cpu", 100_000, 2048),  # floor
    ("cpu", 0, 16384),  # no division by zero
    ("cuda", 1024, 65536),
    ("cuda", 16, 131072),
    ("cuda", 100_000, 8192),
    ("mps", 1024, 4096),  # every other device kind: the CPU rule
])
def test_auto_token_budget(device, hidden, want):
    assert auto_token_budget(device, hidden, num_layers=12) == want
