"""The harness itself: a real redis-server starts, answers and stops."""

import redis

from deploy.local.procs import Proc


def test_redis_fixture_serves_and_stops(redis_server: tuple[Proc, int], redis_url: str) -> None:
    proc, _ = redis_server
    client = redis.Redis.from_url(redis_url)
    client.set("k", b"v")
    assert client.get("k") == b"v"
    client.close()
    assert proc.stop() is not None
    assert not proc.alive()
