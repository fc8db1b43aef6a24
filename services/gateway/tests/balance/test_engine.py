from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from pytest import approx

from gateway.balance import Outcome
from gateway.balance.endpoint import EndpointSpec
from gateway.balance.engine import EngineConfig, EngineStats, extra_pending
from gateway.balance.engine_poller import EnginePoller, parse_engine_metrics

from .conftest import FakeClock, PoolFactory, spec

CONFIG = EngineConfig(stale_after_s=5.0, queue_weight=1.0, kv_threshold=0.9, kv_weight=4.0)

VLLM_PAGE = """# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 7.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.95
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="0.3",model_name="m"} 4.0
"""


def test_queue_depth_counts_as_pending_requests() -> None:
    assert extra_pending(EngineStats(waiting=7, kv_usage=0.5, at=0.0), 1.0, CONFIG) == 7.0


def test_a_nearly_full_kv_cache_adds_load() -> None:
    assert extra_pending(EngineStats(waiting=0, kv_usage=0.95, at=0.0), 1.0, CONFIG) == approx(2.0)
    assert extra_pending(EngineStats(waiting=0, kv_usage=1.0, at=0.0), 1.0, CONFIG) == 4.0


def test_stale_or_missing_data_is_ignored() -> None:
    assert extra_pending(EngineStats(waiting=50, kv_usage=1.0, at=0.0), 5.1, CONFIG) == 0.0
    assert extra_pending(None, 0.0, CONFIG) == 0.0


def test_the_pool_steers_away_from_a_queued_engine_until_the_data_is_stale(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    pool = make_pool(spec("a"), spec("b"))
    pool.set_engine_stats("a", waiting=10, kv_usage=None)

    def picks() -> set[str]:
        chosen = set()
        for _ in range(20):
            lease = pool.acquire("m")
            chosen.add(lease.endpoint.name)
            lease.release(Outcome.CANCELLED)
        return chosen

    assert picks() == {"b"}
    clock.advance(6.0)
    assert picks() == {"a", "b"}


def test_parse_reads_the_two_gauges_and_ignores_the_rest() -> None:
    assert parse_engine_metrics(VLLM_PAGE) == (7.0, 0.95)
    old = VLLM_PAGE.replace("kv_cache_usage_perc", "gpu_cache_usage_perc")
    assert parse_engine_metrics(old) == (7.0, 0.95)


def test_a_page_without_vllm_gauges_is_not_an_engine() -> None:
    assert parse_engine_metrics("# TYPE up gauge\nup 1\n") is None


async def test_the_poller_feeds_the_pool_and_skips_non_vllm_servers(
    make_pool: PoolFactory,
) -> None:
    async def vllm(_: web.Request) -> web.Response:
        return web.Response(text=VLLM_PAGE)

    app = web.Application()
    app.router.add_get("/vllm/metrics", vllm)
    async with TestServer(app, host="127.0.0.1") as server, ClientSession() as session:
        base = str(server.make_url("")).rstrip("/")
        pool = make_pool(
            EndpointSpec(url=f"{base}/vllm", models=("m",), name="vllm"),
            EndpointSpec(url=f"{base}/other", models=("m",), name="other"),
        )
        other_cost = {s.name: s.load for s in pool.snapshot()}["other"]
        await EnginePoller(pool, session).poll_once()
    loads = {s.name: s.load for s in pool.snapshot()}
    assert loads["vllm"] > 5 * loads["other"]
    assert loads["other"] == other_cost
