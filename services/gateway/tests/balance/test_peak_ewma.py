import math

import pytest

from gateway.balance.peak_ewma import PeakEwma


def test_cold_estimate_is_the_default_rtt() -> None:
    ewma = PeakEwma(tau_s=10.0, initial_s=0.5, now=0.0)
    assert ewma.cost(0.0) == 0.5
    assert not ewma.sampled


@pytest.mark.parametrize("first", [0.02, 2.0])
def test_the_first_sample_replaces_the_placeholder_below_or_above(first: float) -> None:
    ewma = PeakEwma(tau_s=10.0, initial_s=0.5, now=0.0)
    ewma.observe(first, now=0.001)
    assert ewma.cost(0.001) == first
    assert ewma.sampled


def test_a_slower_sample_counts_at_once() -> None:
    ewma = PeakEwma(tau_s=10.0, initial_s=0.5, now=0.0)
    ewma.observe(0.1, now=0.0)
    ewma.observe(2.0, now=0.001)
    assert ewma.cost(0.001) == 2.0


def test_a_faster_sample_blends_into_the_mean_with_weight_one_minus_w() -> None:
    ewma = PeakEwma(tau_s=10.0, initial_s=0.5, now=0.0)
    ewma.observe(1.0, now=0.0)
    ewma.observe(0.2, now=1.0)
    w = math.exp(-0.1)
    assert ewma.cost(1.0) == pytest.approx(1.0 * w + 0.2 * (1 - w))


def fast_then_one_slow(ewma: PeakEwma, rate_per_s: float = 50.0) -> float:
    """Ten seconds of 20 ms answers, then one 200 ms answer; returns the time."""
    t = 0.0
    for _ in range(int(10 * rate_per_s)):
        t += 1 / rate_per_s
        ewma.observe(0.02, now=t)
    ewma.observe(0.2, now=t)
    return t


def test_a_lone_slow_answer_is_forgotten_at_the_next_fast_one() -> None:
    ewma = PeakEwma(tau_s=10.0, initial_s=0.5, now=0.0)
    t = fast_then_one_slow(ewma)
    assert ewma.cost(t) == 0.2
    ewma.observe(0.02, now=t + 0.02)
    # Only the mean remembers it: one sample in 500, weighted by 1 - w.
    assert ewma.cost(t + 0.02) == pytest.approx(0.02, abs=0.001)


def test_a_lone_slow_answer_with_nothing_after_it_fades_with_its_own_length() -> None:
    ewma = PeakEwma(tau_s=10.0, initial_s=0.5, now=0.0)
    t = fast_then_one_slow(ewma)
    assert ewma.cost(t + 0.1) == pytest.approx(0.2 * math.exp(-0.1 / 0.2))
    # A second later only the mean is left (Finagle would still say ~0.18 s).
    assert ewma.cost(t + 1.0) < 0.025


def test_a_sample_longer_than_tau_fades_with_tau() -> None:
    ewma = PeakEwma(tau_s=1.0, initial_s=0.5, now=0.0)
    ewma.observe(5.0, now=0.0)
    assert ewma.cost(1.0) == pytest.approx(5.0 / math.e)


def test_an_endpoint_slow_in_every_answer_stays_slow_however_busy() -> None:
    ewma = PeakEwma(tau_s=10.0, initial_s=0.5, now=0.0)
    t = fast_then_one_slow(ewma)
    for _ in range(100):  # two seconds of slow answers
        t += 0.02
        ewma.observe(0.2, now=t)
    assert ewma.cost(t) == pytest.approx(0.2)


def test_an_endpoint_slow_half_the_time_is_judged_by_its_mean() -> None:
    ewma = PeakEwma(tau_s=10.0, initial_s=0.5, now=0.0)
    t = 0.0
    for i in range(3000):  # a minute: six tau
        t += 0.02
        ewma.observe(0.2 if i % 2 else 0.02, now=t)
    assert ewma.cost(t) == pytest.approx(0.2)  # the latest answer was slow
    t += 0.02
    ewma.observe(0.02, now=t)
    assert ewma.cost(t) == pytest.approx(0.11, rel=0.05)  # the mean of 20 ms and 200 ms


def test_cost_decays_toward_zero_while_idle() -> None:
    ewma = PeakEwma(tau_s=10.0, initial_s=2.0, now=0.0)
    assert ewma.cost(10.0) == pytest.approx(2.0 / math.e)
    assert ewma.cost(100.0) < 0.001
    ewma.observe(0.3, now=100.0)
    ewma.observe(0.1, now=100.0)
    assert ewma.cost(110.0) == pytest.approx(0.3 / math.e)


def test_reading_does_not_change_the_estimate() -> None:
    read_often = PeakEwma(tau_s=10.0, initial_s=1.0, now=0.0)
    read_never = PeakEwma(tau_s=10.0, initial_s=1.0, now=0.0)
    for ewma in (read_often, read_never):
        ewma.observe(0.8, now=0.0)
    for step in range(1, 100):
        read_often.cost(step / 100)
    read_often.observe(0.3, now=1.0)
    read_never.observe(0.3, now=1.0)
    assert read_often.cost(2.0) == read_never.cost(2.0)


def test_steady_samples_converge_to_their_value() -> None:
    ewma = PeakEwma(tau_s=10.0, initial_s=5.0, now=0.0)
    ewma.observe(1.0, now=0.0)
    t = 0.0
    for _ in range(2000):
        t += 0.05
        ewma.observe(0.2, now=t)
    assert ewma.cost(t) == pytest.approx(0.2, rel=0.01)


def test_reset_forgets_every_sample() -> None:
    ewma = PeakEwma(tau_s=10.0, initial_s=0.5, now=0.0)
    ewma.observe(5.0, now=1.0)
    ewma.reset(0.0, now=2.0)
    assert (ewma.cost(2.0), ewma.sampled) == (0.0, False)
    ewma.observe(0.03, now=3.0)
    assert ewma.cost(3.0) == 0.03


def test_rejects_non_positive_tau() -> None:
    with pytest.raises(ValueError):
        PeakEwma(tau_s=0.0, initial_s=1.0, now=0.0)
