import shutil
import ssl
import subprocess
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from gateway.balance import EndpointSpec, Outcome
from gateway.balance.discovery import (
    Discovery,
    Target,
    expand,
    fetch_models,
    named_url,
    parse_target,
)
from gateway.balance.engine_poller import EnginePoller
from gateway.metrics import GatewayMetrics
from gateway.protocol.calls import Kind
from gateway.proxy.call import Call
from gateway.proxy.upstream import Upstream
from gateway.settings import GatewaySettings

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


def test_https_replicas_keep_the_host_name_for_tls_and_http_ones_do_not() -> None:
    (tls,) = expand(parse_target("dns+https://vllm.example:8443"), ["192.0.2.7"])
    assert (tls.url, tls.server_hostname, tls.host_header) == (
        "https://192.0.2.7:8443",
        "vllm.example",
        "vllm.example:8443",
    )
    assert named_url(tls) == "https://vllm.example:8443"
    (default_port,) = expand(parse_target("dns+https://vllm.example"), ["192.0.2.7"])
    assert (default_port.server_hostname, default_port.host_header) == ("vllm.example",) * 2
    (plain,) = expand(HEADLESS, ["10.0.0.1"])
    assert (plain.server_hostname, plain.host_header) == ("", "")
    assert named_url(plain) == plain.url
    (literal,) = expand(parse_target("dns+https://192.0.2.9:8443"), ["192.0.2.9"])
    assert literal.server_hostname == ""  # an address names nothing else


async def test_a_dns_https_replica_lists_its_models_through_its_name(
    make_pool: PoolFactory,
) -> None:
    asked: list[str] = []

    async def fetch(url: str) -> tuple[str, ...]:
        asked.append(url)
        return ("llama",)

    dns = FakeDns({"vllm.example": ["192.0.2.7", "192.0.2.8"]})
    pool = make_pool()
    target = parse_target("dns+https://vllm.example:8443")
    specs = await Discovery(pool, [target], resolver=dns, fetch=fetch).refresh()
    assert asked == ["https://vllm.example:8443"] * 2
    assert [(s.url, s.models, s.server_hostname) for s in specs] == [
        ("https://192.0.2.7:8443", ("llama",), "vllm.example"),
        ("https://192.0.2.8:8443", ("llama",), "vllm.example"),
    ]


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


TLS_NAME = "vllm.tls.test"


def _certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` (the ``cryptography`` package is not a
    dependency here; the openssl CLI makes one)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl CLI to make a test certificate")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return key, cert


async def test_a_dns_https_replica_is_reached_by_address_and_verified_by_name(
    tmp_path: Path, make_pool: PoolFactory
) -> None:
    """A local TLS server whose certificate names only ``TLS_NAME``: the gateway
    connects to the address DNS gave, sends the name as SNI (verified against
    the certificate) and as ``Host``. The bare address URL fails verification."""
    key, cert = _certificate(tmp_path, TLS_NAME)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    sni: list[str | None] = []
    server_tls.sni_callback = lambda _tls, name, _context: sni.append(name)
    hosts: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        hosts.append(request.host)
        return web.json_response({"object": "chat.completion", "choices": []})

    async def engine_page(request: web.Request) -> web.Response:
        hosts.append(request.host)
        page = "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting 3.0\n"
        return web.Response(text=page)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    app.router.add_get("/metrics", engine_page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls)
    await site.start()
    port = runner.addresses[0][1]
    client_tls = ssl.create_default_context(cafile=str(cert))
    upstream = Upstream(GatewaySettings(), make_pool(), GatewayMetrics(CollectorRegistry()))
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_tls))
    upstream._session = session  # the gateway's own session, trusting the test's certificate
    try:
        dns = FakeDns({TLS_NAME: ["127.0.0.1"]})
        target = parse_target(f"dns+https://{TLS_NAME}:{port}", ["m"])
        pool = upstream._pool
        (spec,) = await Discovery(pool, [target], resolver=dns).refresh()
        assert spec.url == f"https://127.0.0.1:{port}"
        call = Call(Kind.CHAT, "m", False, b'{"model": "m"}', {}, "rid")
        opened = await upstream.open(call)
        opened.lease.release(Outcome.SUCCESS)
        assert opened.status == 200
        assert (sni, hosts) == ([TLS_NAME], [f"{TLS_NAME}:{port}"])
        # The engine poller scrapes each replica the same way (its own queue, by address).
        await EnginePoller(pool, session).poll_once()
        assert hosts[1:] == [f"{TLS_NAME}:{port}"]
        assert pool._endpoints[spec.name].engine.waiting == 3.0

        bare: EndpointSpec = replace(spec, server_hostname="", host_header="")
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.post(f"{bare.url}/v1/chat/completions", data=b"{}")
    finally:
        await session.close()
        await runner.cleanup()
