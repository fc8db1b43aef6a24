"""When Redis is tried again after a failure."""

from __future__ import annotations

from gateway.tenancy.backoff import Backoff


def test_healthy_lets_everyone_through() -> None:
    backoff = Backoff(0.5, 10)
    assert all(backoff.try_acquire(0.0) for _ in range(3))


def test_after_a_failure_nobody_tries_until_the_delay_then_a_single_probe() -> None:
    backoff = Backoff(0.5, 10)
    assert backoff.failed(0.0) is True
    assert not backoff.try_acquire(0.4)
    assert backoff.try_acquire(0.5)  # the probe
    assert not backoff.try_acquire(0.6)  # others wait for it


def test_failed_probes_double_the_delay_up_to_the_cap() -> None:
    backoff = Backoff(1.0, 3.0)
    now = 0.0
    backoff.failed(now)
    delays = []
    for _ in range(4):
        start = now
        while not backoff.try_acquire(now):
            now += 0.25
        delays.append(now - start)
        assert backoff.failed(now) is False  # still the same outage
    assert delays == [1.0, 2.0, 3.0, 3.0]


def test_a_successful_probe_ends_the_outage_and_resets_the_delay() -> None:
    backoff = Backoff(1.0, 8.0)
    backoff.failed(0.0)
    backoff.try_acquire(1.0)
    assert backoff.succeeded() is True
    assert backoff.try_acquire(1.0) and backoff.try_acquire(1.0)
    backoff.failed(2.0)
    assert backoff.try_acquire(3.0)  # back to the first delay


def test_a_late_failure_from_before_the_outage_does_not_lengthen_it() -> None:
    backoff = Backoff(1.0, 8.0)
    backoff.failed(0.0)
    backoff.failed(0.1)  # a call that was already in flight
    assert backoff.try_acquire(1.0)


def test_an_abandoned_probe_lets_another_caller_probe() -> None:
    backoff = Backoff(1.0, 8.0)
    backoff.failed(0.0)
    assert backoff.try_acquire(1.0)
    backoff.abandoned()
    assert backoff.try_acquire(1.0)
