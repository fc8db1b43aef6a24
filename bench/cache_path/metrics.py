"""What the services counted: Prometheus scrapes of the gateway, embedder and cache
service, and the differences between two of them."""

from __future__ import annotations

import math
from typing import Any

import aiohttp

from bench.cache_path.client import REQUEST_TIMEOUT

PLAIN_TEXT = {"Accept-Encoding": "identity"}  # the client session does not decompress


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """Every sample of a Prometheus endpoint, keyed by its series (name and labels)."""
    out: dict[str, float] = {}
    try:
        async with session.get(url, headers=PLAIN_TEXT, timeout=REQUEST_TIMEOUT) as resp:
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return out
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            try:
                out[series] = float(value)
            except ValueError:
                continue
    return out


Samples = dict[str, dict[str, float]]  # process -> series -> value


def grown(before: dict[str, float], after: dict[str, float], name: str) -> dict[str, int]:
    """The series of counter ``name`` that grew, by how much, keyed by their label values."""
    out: dict[str, int] = {}
    for series in sorted(after):
        if series.startswith(name + "{"):
            delta = after[series] - before.get(series, 0.0)
            if delta > 0:
                labels = series[len(name) + 1 : -1].split(",")
                out[" ".join(p.split('"')[1] for p in labels if '"' in p)] = round(delta)
    return out


def mean_of(before: dict[str, float], after: dict[str, float], histogram: str) -> float:
    """Mean of the observations a histogram got between two scrapes (``name{labels}``)."""
    name, brace, labels = histogram.partition("{")
    suffix = brace + labels
    n = after.get(f"{name}_count{suffix}", 0.0) - before.get(f"{name}_count{suffix}", 0.0)
    total = after.get(f"{name}_sum{suffix}", 0.0) - before.get(f"{name}_sum{suffix}", 0.0)
    return total / n if n > 0 else math.nan


def inside(before: Samples, after: Samples) -> dict[str, Any]:
    """What the services counted between two scrapes: CACHED's lookups and sidecar errors,
    and the mean time of each step where it is spent."""
    g0, g1 = before["gateway"], after["gateway"]
    e0, e1 = before["embedder"], after["embedder"]
    c0, c1 = before["cache"], after["cache"]
    semantic = 'cache_lookup_duration_seconds{path="semantic"}'
    searches = 'cache_lookup_duration_seconds_count{path="semantic"}'
    return {
        "lookups": grown(g0, g1, "gateway_cache_lookups_total"),
        "sidecar_errors": grown(g0, g1, "gateway_sidecar_errors_total"),
        "gateway_lookup_ms": 1000 * mean_of(g0, g1, "gateway_cache_lookup_seconds"),
        "embed_ms": 1000 * mean_of(e0, e1, "embedder_request_duration_seconds"),
        "embed_calls": round(
            e1.get("embedder_request_duration_seconds_count", 0.0)
            - e0.get("embedder_request_duration_seconds_count", 0.0)
        ),
        "batch_texts": mean_of(e0, e1, "embedder_batch_size"),
        "cache_exact_ms": 1000 * mean_of(c0, c1, 'cache_lookup_duration_seconds{path="exact"}'),
        "cache_semantic_ms": 1000 * mean_of(c0, c1, semantic),
        "semantic_searches": round(c1.get(searches, 0.0) - c0.get(searches, 0.0)),
    }
