import math

import pytest

from gateway.balance.peak_ewma import PeakEwma


def test_cold_estimate_is_the_default_rtt() -> None:
    ewma = PeakEwma(tau_s=10.0, initial_s=0.5, now=0.0)
    assert ewma.cost(0.0) == 0.5


def test_a_slower_sample_replaces_the_cost_at_once() -> None:
    ewma = PeakEwma(tau_s=10.0, initial_s=0.1, now=0.0)
    ewma.observe(2.0, now=0.001)
    assert ewma.cost(0.001) == 2.0


def test_a_faster_sample_blends_in_with_weight_one_minus_w() -> None:
    ewma = PeakEwma(tau_s=10.0, initial_s=1.0, now=0.0)
    ewma.observe(0.2, now=1.0)
    w = math.exp(-0.1)
    assert ewma.cost(1.0) == pytest.approx(1.0 * w + 0.2 * (1 - w))


def test_cost_decays_toward_zero_while_idle() -> None:
    ewma = PeakEwma(tau_s=10.0, initial_s=2.0, now=0.0)
    assert ewma.cost(10.0) == pytest.approx(2.0 / math.e)
    assert ewma.cost(100.0) < 0.001


def test_reading_does_not_change_the_estimate() -> None:
    read_often = PeakEwma(tau_s=10.0, initial_s=1.0, now=0.0)
    read_never = PeakEwma(tau_s=10.0, initial_s=1.0, now=0.0)
    for step in range(1, 100):
        read_often.cost(step / 100)
    read_often.observe(0.3, now=1.0)
    read_never.observe(0.3, now=1.0)
    assert read_often.cost(2.0) == read_never.cost(2.0)


def test_steady_samples_converge_to_their_value() -> None:
    ewma = PeakEwma(tau_s=10.0, initial_s=5.0, now=0.0)
    t = 0.0
    for _ in range(2000):
        t += 0.05
        ewma.observe(0.2, now=t)
    assert ewma.cost(t) == pytest.approx(0.2, rel=0.01)


def test_rejects_non_positive_tau() -> None:
    with pytest.raises(ValueError):
        PeakEwma(tau_s=0.0, initial_s=1.0, now=0.0)
