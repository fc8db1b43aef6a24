import random
from collections import Counter

import pytest

from gateway.balance.p2c import PowerOfTwoChoices, two_distinct


def test_the_two_draws_are_always_distinct() -> None:
    rng = random.Random(1)
    for n in (2, 3, 11):
        for _ in range(2000):
            i, j = two_distinct(n, rng)
            assert i != j
            assert 0 <= i < n and 0 <= j < n


def test_with_two_candidates_both_are_compared_and_the_lighter_wins() -> None:
    p2c = PowerOfTwoChoices(random.Random(3))
    loads = {"a": 1.0, "b": 2.0}
    assert {p2c.pick(["a", "b"], loads.__getitem__) for _ in range(50)} == {"a"}


def test_the_heaviest_of_many_is_never_chosen() -> None:
    p2c = PowerOfTwoChoices(random.Random(3))
    items = list(range(5))
    picks = Counter(p2c.pick(items, float) for _ in range(5000))
    assert 4 not in picks
    assert picks[0] > picks[1] > picks[2] > picks[3] > 0


def test_ties_are_broken_by_the_rng_reproducibly() -> None:
    def run(seed: int) -> list[str]:
        p2c = PowerOfTwoChoices(random.Random(seed))
        return [p2c.pick(["a", "b", "c"], lambda _: 1.0) for _ in range(300)]

    first = run(11)
    assert first == run(11)
    counts = Counter(first)
    assert set(counts) == {"a", "b", "c"}
    assert min(counts.values()) > 60


def test_one_candidate_is_returned_and_none_is_an_error() -> None:
    p2c = PowerOfTwoChoices(random.Random(0))
    assert p2c.pick(["only"], lambda _: 9.0) == "only"
    with pytest.raises(ValueError):
        p2c.pick([], lambda _: 0.0)
