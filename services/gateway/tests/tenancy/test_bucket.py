"""The token bucket's arithmetic (GCRA) and the per-replica share, on a fake clock."""

from __future__ import annotations

import pytest

from gateway.tenancy.bucket import Gcra, Rate, local_share
from gateway.tenancy.model import Tenant


def test_a_full_bucket_allows_the_burst_then_asks_to_wait_one_interval() -> None:
    bucket = Gcra(Rate(per_s=2.0, burst=3))
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)


def test_after_the_advised_wait_exactly_one_more_request_fits() -> None:
    bucket = Gcra(Rate(per_s=2.0, burst=3))
    for _ in range(3):
        bucket.take(100.0)
    wait = bucket.take(100.0)
    assert bucket.take(100.0 + wait) == 0.0
    assert bucket.take(100.0 + wait) > 0


def test_a_refused_request_takes_nothing() -> None:
    bucket = Gcra(Rate(per_s=1.0, burst=1))
    assert bucket.take(0.0) == 0.0
    for _ in range(50):
        assert bucket.take(0.5) == pytest.approx(0.5)
    assert bucket.take(1.0) == 0.0


def test_steady_traffic_at_the_rate_is_never_refused() -> None:
    bucket = Gcra(Rate(per_s=10.0, burst=1))
    assert all(bucket.take(i * 0.1) == 0.0 for i in range(100))


def test_an_idle_bucket_refills_only_up_to_its_burst() -> None:
    bucket = Gcra(Rate(per_s=1.0, burst=2))
    bucket.take(0.0)
    allowed = [bucket.take(3600.0) == 0.0 for _ in range(5)]
    assert allowed == [True, True, False, False, False]


def test_burst_defaults_to_one_second_of_the_rate() -> None:
    assert Tenant("t", 5.0, None, None).effective_burst == 5
    assert Tenant("t", 0.2, None, None).effective_burst == 1
    assert Tenant("t", 5.0, 20, None).effective_burst == 20


def test_each_replica_gets_its_share_of_the_limits_but_never_zero() -> None:
    share = local_share(Tenant("t", 10.0, 20, 5), replicas=4)
    assert share.rate == Rate(2.5, 5)
    assert share.max_streams == 2
    tiny = local_share(Tenant("t", 1.0, 1, 1), replicas=8)
    assert tiny.rate is not None and tiny.rate.burst == 1
    assert tiny.max_streams == 1
    assert local_share(Tenant("t", None, None, None), replicas=3) == type(share)(None, None)
