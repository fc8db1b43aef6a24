from collections.abc import Sequence

from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from gateway.balance import Outcome
from gateway.balance.discovery import Discovery, Target, expand, fetch_models, parse_target

from .conftest import PoolFactory

HEADLESS = parse_target("dns+http://vllm-headless.ns.svc:8000", models=("llama",))


class FakeDns:
    """A resolver whose answers the test sets; raises OSError when told to."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.down = False
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append((host, port))
        if self.down:
            raise OSError("Temporary failure in name resolution")
        return self.answers[host]


def test_parse_target_marks_dns_targets() -> None:
    assert Target("http://vllm-headless.ns.svc:8000", ("llama",), resolve=True) == HEADLESS
    assert parse_target("http://10.0.0.1:8001/").resolve is False


def test_expand_gives_one_endpoint_per_address() -> None:
    specs = expand(HEADLESS, ["10.0.0.1", "10.0.0.2", "fd00::3"])
    assert [s.url for s in specs] == [
        "http://10.0.0.1:8000",
        "http://10.0.0.2:8000",
        "http://[fd00::3]:8000",
    ]
    assert all(s.models == ("llama",) for s in specs)


def test_expand_uses_the_scheme_default_port_and_the_target_name() -> None:
    target = Target("https://vllm.example", resolve=True, name="vllm")
    (only,) = expand(target, ["192.0.2.7"])
    assert (only.url, only.name) == ("https://192.0.2.7:443", "vllm/192.0.2.7")


async def test_refresh_adds_new_pods_drains_gone_ones_and_keeps_survivors(
    make_pool: PoolFactory,
) -> None:
    dns = FakeDns({"vllm-headless.ns.svc": ["10.0.0.1", "10.0.0.2"]})
    pool = make_pool()
    static = Target("http://127.0.0.1:8001", ("llama",))
    discovery = Discovery(pool, [HEADLESS, static], resolver=dns)
    await discovery.refresh()
    assert dns.asked == [("vllm-headless.ns.svc", 8000)]
    assert len(pool.snapshot()) == 3

    survivor = pool.acquire("llama", exclude={"http://10.0.0.2:8000", static.url})
    assert survivor.endpoint.name == "http://10.0.0.1:8000"
    survivor.release(Outcome.SERVER_ERROR)
    cost = {s.name: s.cost for s in pool.snapshot()}["http://10.0.0.1:8000"]
    dns.answers["vllm-headless.ns.svc"] = ["10.0.0.1", "10.0.0.3"]
    await discovery.refresh()

    states = {s.name: s for s in pool.snapshot()}
    assert set(states) == {"http://10.0.0.1:8000", "http://10.0.0.3:8000", static.url}
    assert states["http://10.0.0.1:8000"].cost == cost


async def test_a_failed_lookup_keeps_the_previous_endpoints(make_pool: PoolFactory) -> None:
    dns = FakeDns({"vllm-headless.ns.svc": ["10.0.0.1", "10.0.0.2"]})
    pool = make_pool()
    discovery = Discovery(pool, [HEADLESS], resolver=dns)
    await discovery.refresh()
    dns.down = True
    await discovery.refresh()
    assert [s.draining for s in pool.snapshot()] == [False, False]


async def test_models_come_from_the_backend_when_not_configured(make_pool: PoolFactory) -> None:
    answers: dict[str, tuple[str, ...] | Exception] = {"http://127.0.0.1:8001": ("qwen",)}

    async def fetch(url: str) -> tuple[str, ...]:
        answer = answers[url]
        if isinstance(answer, Exception):
            raise answer
        return answer

    pool = make_pool()
    discovery = Discovery(pool, [Target("http://127.0.0.1:8001")], fetch=fetch)
    await discovery.refresh()
    assert pool.models() == ["qwen"]
    answers["http://127.0.0.1:8001"] = TimeoutError()
    await discovery.refresh()
    assert pool.models() == ["qwen"]


async def test_fetch_models_reads_the_openai_model_list() -> None:
    async def models(_: web.Request) -> web.Response:
        body = {"object": "list", "data": [{"id": "llama", "object": "model"}, {"id": "qwen"}]}
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    async with TestServer(app, host="127.0.0.1") as server, ClientSession() as session:
        base = str(server.make_url("")).rstrip("/")
        assert await fetch_models(session, base) == ("llama", "qwen")


async def test_the_real_resolver_expands_localhost(make_pool: PoolFactory) -> None:
    pool = make_pool()
    await Discovery(pool, [parse_target("dns+http://localhost:9", ["m"])]).refresh()
    urls = {s.url for s in pool.snapshot()}
    assert "http://127.0.0.1:9" in urls
    assert "http://localhost:9" not in urls
