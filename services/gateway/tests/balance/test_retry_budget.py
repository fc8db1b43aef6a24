from gateway.balance.retry_budget import RetryBudget, RetryBudgetConfig


def spend(budget: RetryBudget, now: float, attempts: int) -> int:
    return sum(budget.try_retry(now) for _ in range(attempts))


def test_retries_are_capped_at_the_fraction_of_recent_requests() -> None:
    budget = RetryBudget(RetryBudgetConfig(ratio=0.2, min_per_s=0.0, window_s=10.0))
    for _ in range(100):
        budget.record_request(5.0)
    assert spend(budget, 5.0, 50) == 20


def test_low_traffic_still_gets_the_minimum_rate() -> None:
    budget = RetryBudget(RetryBudgetConfig(ratio=0.2, min_per_s=1.0, window_s=10.0))
    budget.record_request(5.0)
    assert spend(budget, 5.0, 50) == 10


def test_the_budget_refills_once_old_retries_leave_the_window() -> None:
    budget = RetryBudget(RetryBudgetConfig(ratio=0.2, min_per_s=0.5, window_s=10.0))
    assert spend(budget, 1.0, 10) == 5
    assert not budget.try_retry(5.0)
    assert spend(budget, 12.0, 10) == 5
