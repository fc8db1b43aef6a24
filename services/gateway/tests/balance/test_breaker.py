from gateway.balance.breaker import BreakerConfig, BreakerState, CircuitBreaker

CONFIG = BreakerConfig(
    consecutive_failures=3,
    failure_rate=0.5,
    min_requests=10,
    window_s=10.0,
    base_ejection_s=5.0,
    max_ejection_s=20.0,
    reset_after_s=100.0,
    probes=2,
)


def tripped(now: float = 0.0) -> CircuitBreaker:
    breaker = CircuitBreaker(CONFIG, now)
    for _ in range(3):
        breaker.failure(now)
    return breaker


def probe(breaker: CircuitBreaker, now: float, ok: bool) -> None:
    assert breaker.allows(now)
    breaker.admit(now)
    if ok:
        breaker.success(now)
    else:
        breaker.failure(now)


def test_consecutive_failures_open_it_and_a_success_resets_the_run() -> None:
    breaker = CircuitBreaker(CONFIG, 0.0)
    breaker.failure(0.0)
    breaker.failure(0.0)
    breaker.success(0.0)
    breaker.failure(0.0)
    breaker.failure(0.0)
    assert breaker.state(0.0) is BreakerState.CLOSED
    breaker.failure(0.0)
    assert breaker.state(0.0) is BreakerState.OPEN
    assert not breaker.allows(1.0)
    assert breaker.ejections == 1


def test_failure_rate_trips_only_over_the_minimum_volume() -> None:
    breaker = CircuitBreaker(CONFIG, 0.0)
    for _ in range(4):  # 4 failures and 4 successes: 50% but only 8 outcomes
        breaker.failure(0.0)
        breaker.success(0.0)
    assert breaker.state(0.0) is BreakerState.CLOSED
    breaker.success(0.0)
    breaker.failure(0.0)  # 10 outcomes, 5 failures, never 3 in a row
    assert breaker.state(0.0) is BreakerState.OPEN


def test_failures_outside_the_window_are_forgotten() -> None:
    breaker = CircuitBreaker(CONFIG, 0.0)
    for _ in range(5):
        breaker.failure(0.0)
        breaker.success(0.0)
    for _ in range(5):
        breaker.success(30.0)
        breaker.failure(30.0)
        breaker.success(30.0)
    assert breaker.state(30.0) is BreakerState.CLOSED


def test_half_open_after_the_ejection_time_admits_a_few_probes() -> None:
    breaker = tripped()
    assert not breaker.allows(4.9)
    assert breaker.state(5.0) is BreakerState.HALF_OPEN
    breaker.admit(5.0)
    breaker.admit(5.0)
    assert not breaker.allows(5.0)  # both probe slots taken
    breaker.neutral(5.1)  # a cancelled probe gives its slot back
    assert breaker.allows(5.1)


def test_probe_successes_close_it() -> None:
    breaker = tripped()
    probe(breaker, 5.0, ok=True)
    assert breaker.state(5.0) is BreakerState.HALF_OPEN
    probe(breaker, 5.0, ok=True)
    assert breaker.state(5.0) is BreakerState.CLOSED


def test_a_probe_failure_reopens_with_a_longer_ejection_up_to_the_cap() -> None:
    breaker = tripped()
    now = 5.0
    expected = [10.0, 20.0, 20.0]
    for ejection in expected:
        probe(breaker, now, ok=False)
        assert breaker.state(now) is BreakerState.OPEN
        assert breaker.blocked_until(now) == now + ejection
        now += ejection
    assert breaker.ejections == 4


def test_ejection_time_starts_over_after_a_long_healthy_spell() -> None:
    breaker = tripped()
    probe(breaker, 5.0, ok=False)  # second ejection: 10 s
    probe(breaker, 15.0, ok=True)
    probe(breaker, 15.0, ok=True)
    for _ in range(3):
        breaker.failure(16.0)
    assert breaker.blocked_until(16.0) == 16.0 + 20.0  # soon after: keeps growing
    probe(breaker, 36.0, ok=True)
    probe(breaker, 36.0, ok=True)
    for _ in range(3):
        breaker.failure(500.0)
    assert breaker.blocked_until(500.0) == 505.0


def test_results_while_open_change_nothing() -> None:
    breaker = tripped()
    breaker.success(1.0)
    breaker.failure(1.0)
    assert breaker.blocked_until(1.0) == 5.0
    assert breaker.ejections == 1
