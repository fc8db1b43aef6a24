"""Where the endpoints are: static URLs and DNS names re-resolved periodically.

A target marked ``resolve`` (written ``dns+http://host:port`` by
:func:`parse_target`) is expanded to one endpoint per address its host resolves
to. Behind a Kubernetes headless Service that is one endpoint per model server
pod, which is what Peak EWMA needs to see (a ClusterIP would hide them all
behind one address). A ``dns+https://`` replica's URL holds its address, but
TLS still verifies the host name: the spec carries it (``server_hostname``,
``host_header``) for the upstream client to send as SNI and ``Host``; its
``/v1/models`` is asked of the name. Each refresh hands the full list to :meth:`Pool.update`,
which adds newcomers, drains the vanished and keeps the survivors' state.

A failed lookup keeps the target's previous addresses: a DNS hiccup must not
drain a healthy fleet. Endpoints configured without models ask the backend's
``/v1/models``; a failed fetch keeps what was known.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from urllib.parse import SplitResult, urlsplit, urlunsplit

import aiohttp
import structlog

from gateway.balance.config import CHAT_CONTINUATION, ContinuationConfig
from gateway.balance.endpoint import EndpointSpec
from gateway.balance.pool import Pool

log = structlog.get_logger(__name__)

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
ModelFetcher = Callable[[str], Awaitable[tuple[str, ...]]]

DNS_PREFIX = "dns+"


@dataclass(frozen=True)
class Target:
    """A configured backend: one URL, or a DNS name standing for many replicas."""

    url: str
    models: tuple[str, ...] = ()
    resolve: bool = False
    name: str = ""
    continuation: ContinuationConfig = CHAT_CONTINUATION


def parse_target(
    text: str,
    models: Iterable[str] = (),
    name: str = "",
    continuation: ContinuationConfig = CHAT_CONTINUATION,
) -> Target:
    """``http://h:8000`` is one endpoint; ``dns+http://h:8000`` one per address of h."""
    text = text.strip()
    resolve = text.startswith(DNS_PREFIX)
    url = text.removeprefix(DNS_PREFIX).rstrip("/")
    return Target(url, tuple(models), resolve, name, continuation)


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, deduplicated and sorted (stable order)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def _default_port(parts: SplitResult) -> int:
    if parts.port is not None:
        return parts.port
    return 443 if parts.scheme == "https" else 80


def _with_host(parts: SplitResult, address: str, port: int) -> str:
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    return urlunsplit(parts._replace(netloc=f"{host}:{port}"))


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _tls_name(parts: SplitResult) -> tuple[str, str]:
    """``(server_hostname, host_header)`` for replicas of an https target named by a
    host name; empty for http (sent to the address as before) or an address."""
    host = parts.hostname or ""
    if parts.scheme != "https" or not host or _is_address(host):
        return "", ""
    port = parts.port
    return host, host if port in (None, 443) else f"{host}:{port}"


def expand(target: Target, addresses: Sequence[str]) -> list[EndpointSpec]:
    """One spec per address for a DNS target (pure: the lookup happened before)."""
    parts = urlsplit(target.url)
    port = _default_port(parts)
    server_hostname, host_header = _tls_name(parts)
    specs = []
    for address in addresses:
        url = _with_host(parts, address, port)
        name = f"{target.name}/{address}" if target.name else url
        specs.append(
            EndpointSpec(
                url=url,
                models=target.models,
                name=name,
                server_hostname=server_hostname,
                host_header=host_header,
                continuation=target.continuation,
            )
        )
    return specs


def named_url(spec: EndpointSpec) -> str:
    """The spec's URL with the host name it stands for (its own URL when none)."""
    if not spec.host_header:
        return spec.url
    return urlunsplit(urlsplit(spec.url)._replace(netloc=spec.host_header))


async def fetch_models(
    session: aiohttp.ClientSession, base_url: str, timeout_s: float = 2.0
) -> tuple[str, ...]:
    """The model ids a backend lists on ``GET /v1/models`` (OpenAI shape)."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with session.get(f"{base_url}/v1/models", timeout=timeout) as response:
        response.raise_for_status()
        body = await response.json()
    return tuple(str(item["id"]) for item in body.get("data", []) if "id" in item)


class Discovery:
    """Keeps a pool in step with its targets. ``run`` loops; ``refresh`` is one pass."""

    def __init__(
        self,
        pool: Pool,
        targets: Sequence[Target],
        *,
        resolver: Resolver = resolve_host,
        fetch: ModelFetcher | None = None,
        interval_s: float = 10.0,
    ) -> None:
        self._pool = pool
        self._targets = list(targets)
        self._resolver = resolver
        self._fetch = fetch
        self._interval_s = interval_s
        self._addresses: dict[Target, list[str]] = {}
        self._models: dict[str, tuple[str, ...]] = {}

    async def refresh(self) -> list[EndpointSpec]:
        """Resolve every target, fill in models, update the pool; returns the specs."""
        per_target = await asyncio.gather(*(self._specs_for(t) for t in self._targets))
        specs = [spec for group in per_target for spec in group]
        specs = list(await asyncio.gather(*(self._with_models(s) for s in specs)))
        before = {state.name for state in self._pool.snapshot() if not state.draining}
        self._pool.update(specs)
        after = {spec.name for spec in specs}
        if before != after:
            log.info(
                "endpoints_changed", added=sorted(after - before), removed=sorted(before - after)
            )
        return specs

    async def run(self) -> None:
        """Refresh forever, every ``interval_s``; cancel the task to stop."""
        while True:
            await self.refresh()
            await asyncio.sleep(self._interval_s)

    async def _specs_for(self, target: Target) -> list[EndpointSpec]:
        if not target.resolve:
            return [
                EndpointSpec(
                    url=target.url,
                    models=target.models,
                    name=target.name,
                    continuation=target.continuation,
                )
            ]
        parts = urlsplit(target.url)
        host = parts.hostname or ""
        try:
            addresses = list(await self._resolver(host, _default_port(parts)))
        except OSError as exc:
            log.warning("dns_lookup_failed", host=host, error=str(exc))
            addresses = self._addresses.get(target, [])
        else:
            self._addresses[target] = addresses
        return expand(target, addresses)

    async def _with_models(self, spec: EndpointSpec) -> EndpointSpec:
        """Models from the backend, when not configured. A ``dns+https`` replica's are
        asked of its host name (the fetcher verifies TLS against the URL's host):
        any replica behind the name answers for all of them."""
        if spec.models or self._fetch is None:
            return spec
        models = self._models.get(spec.url, ())
        url = named_url(spec)
        try:
            models = await self._fetch(url)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            log.warning("models_fetch_failed", url=url, error=str(exc))
        else:
            self._models[spec.url] = models
        return replace(spec, models=models)
