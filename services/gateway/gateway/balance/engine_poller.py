"""Reads vLLM's ``/metrics`` from each endpoint and hands the queue to the pool.

One small loop: every ``interval_s`` it fetches every live endpoint's metrics
concurrently, keeps only the two gauges it needs, and calls
:meth:`Pool.set_engine_stats`. An endpoint that does not publish vLLM's
metrics (another server) is left alone for ``skip_s``. When polling fails, the
last figures go stale on their own and stop counting (see
:mod:`gateway.balance.engine`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import structlog
from prometheus_client.parser import text_string_to_metric_families

from gateway.balance.pool import Pool

log = structlog.get_logger(__name__)

WAITING = "vllm:num_requests_waiting"
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # new name, old name
_WANTED = (WAITING, *KV_USAGE)


def parse_engine_metrics(text: str) -> tuple[float, float | None] | None:
    """(requests waiting, KV cache usage 0..1 or None) from a Prometheus page.

    None when the page has no ``vllm:num_requests_waiting``. Lines are filtered
    before parsing because a vLLM page is mostly histograms we do not need.
    """
    kept = "\n".join(line for line in text.splitlines() if _wanted(line))
    waiting: float | None = None
    usage: float | None = None
    for family in text_string_to_metric_families(kept + "\n"):
        for sample in family.samples:
            if sample.name == WAITING:
                waiting = (waiting or 0.0) + sample.value
            elif sample.name in KV_USAGE:
                usage = sample.value if usage is None else max(usage, sample.value)
    return None if waiting is None else (waiting, usage)


def _wanted(line: str) -> bool:
    if line.startswith("#"):
        return any(f" {name} " in line for name in _WANTED)
    return line.startswith(_WANTED)


class EnginePoller:
    def __init__(
        self,
        pool: Pool,
        session: aiohttp.ClientSession,
        *,
        interval_s: float = 1.0,
        timeout_s: float = 0.5,
        skip_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._session = session
        self._interval_s = interval_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._skip_s = skip_s
        self._clock = clock
        self._skip_until: dict[str, float] = {}

    async def poll_once(self) -> None:
        now = self._clock()
        live = [
            (s.name, s.url)
            for s in self._pool.snapshot()
            if not s.draining and self._skip_until.get(s.name, 0.0) <= now
        ]
        await asyncio.gather(*(self._poll(name, url) for name, url in live))

    async def run(self) -> None:
        """Poll forever; cancel the task to stop."""
        while True:
            await self.poll_once()
            await asyncio.sleep(self._interval_s)

    async def _poll(self, name: str, url: str) -> None:
        """One endpoint. A page without vLLM's gauges (or a 404) means "not vLLM":
        skip it for a while. Any other error only loses this round."""
        spec = self._pool.spec(name)
        # A dns+https replica is reached at its address, verified against its host name.
        host = {"Host": spec.host_header} if spec is not None and spec.host_header else None
        tls_name = spec.server_hostname if spec is not None and spec.server_hostname else None
        try:
            async with self._session.get(
                f"{url}/metrics", timeout=self._timeout, headers=host, server_hostname=tls_name
            ) as response:
                if response.status == 404:
                    self._skip_until[name] = self._clock() + self._skip_s
                    return
                response.raise_for_status()
                text = await response.text()
            stats = parse_engine_metrics(text)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.debug("engine_metrics_failed", endpoint=name, error=str(exc))
            return
        if stats is None:
            self._skip_until[name] = self._clock() + self._skip_s
            return
        self._pool.set_engine_stats(name, *stats)
