"""The tables ``bench.soak`` prints: memory per service (growth after the warm-up,
the median of every minute, the slope after minute 5), Redis at the end, and the
requests (answers, errors by kind, cache outcomes)."""

from __future__ import annotations

import statistics
from collections import Counter

import redis

from bench.soak_load import Outcome
from bench.stats import percentile

GROWTH_LIMIT = 0.10  # growth after the warm-up of a service not restarted
SLOPE_LIMIT = 0.01  # per 10 minutes, fitted to the minutes after SLOPE_FROM
SLOPE_FROM = 5  # minutes: start-up, imports and caches filling are not growth

Series = dict[str, list[tuple[float, int]]]


def mib(value: float) -> str:
    return f"{value / 2**20:.1f}"


def memory_rows(
    series: Series, warm_end: float, restarted: set[str]
) -> tuple[list[str], list[str]]:
    """Table rows, and the services that grew too much."""
    rows, grew = [], []
    for name, points in series.items():
        after = [v for t, v in points if t >= warm_end and v > 0]
        if len(after) < 2:
            rows.append(f"| {name} | - | - | - | too few samples |")
            continue
        k = max(1, min(6, len(after) // 10))  # about the first and last 30 s
        first, last = statistics.median(after[:k]), statistics.median(after[-k:])
        growth = (last - first) / first
        note = ""
        if name in restarted:
            note = "restarted during the run: the growth spans several processes"
        elif growth >= GROWTH_LIMIT:
            grew.append(name)
            note = "over the 10% limit"
        row = f"| {name} | {mib(first)} | {mib(last)} | {mib(max(after))} | {growth:+.1%} {note}"
        rows.append(row.rstrip() + " |")
    return rows, grew


def minute_medians(series: Series, start: float) -> dict[str, list[float | None]]:
    """Median value of each service in each minute of the run (None: no sample)."""
    minutes = int(max(t for points in series.values() for t, _ in points) - start) // 60 + 1
    medians: dict[str, list[float | None]] = {}
    for name, points in series.items():
        per = [[v for t, v in points if m * 60 <= t - start < (m + 1) * 60 and v > 0]
               for m in range(minutes)]  # fmt: skip
        medians[name] = [statistics.median(v) if v else None for v in per]
    return medians


def minute_rows(series: Series, start: float) -> list[str]:
    """Median RSS (MiB) of each service in each minute of the run: the trend."""
    medians = minute_medians(series, start)
    minutes = max(len(v) for v in medians.values())
    lines = [
        "| service | " + " | ".join(f"min {m + 1}" for m in range(minutes)) + " |",
        "|---|" + "---|" * minutes,
    ]
    for name, values in medians.items():
        cells = [mib(v) if v is not None else "-" for v in values]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def slope(values: list[float | None], first: int = SLOPE_FROM) -> tuple[float, float] | None:
    """Least-squares slope of the per-minute medians from minute ``first`` + 1 on:
    (bytes per 10 minutes, that as a share of their mean), or None with under 3."""
    points = [(m, v) for m, v in enumerate(values) if m >= first and v is not None]
    if len(points) < 3:
        return None
    xs, ys = [float(m) for m, _ in points], [v for _, v in points]
    fitted = statistics.linear_regression(xs, ys).slope * 10
    return fitted, fitted / statistics.fmean(ys)


def slope_rows(series: Series, start: float, restarted: set[str]) -> tuple[list[str], list[str]]:
    """One row per service with its slope after minute SLOPE_FROM; and those over the limit."""
    rows = [
        f"| service | slope after minute {SLOPE_FROM}, MiB / 10 min | % / 10 min |",
        "|---|---|---|",
    ]
    over = []
    for name, values in minute_medians(series, start).items():
        fitted = slope(values)
        if fitted is None:
            rows.append(f"| {name} | - | too few minutes |")
            continue
        note = ""
        if name in restarted:
            note = " (restarted: several processes)"
        elif fitted[1] >= SLOPE_LIMIT:
            over.append(name)
            note = " over the 1% limit"
        rows.append(f"| {name} | {fitted[0] / 2**20:+.2f} | {fitted[1]:+.2%}{note} |")
    return rows, over


def redis_rows(port: int) -> list[str]:
    """Where Redis's memory is at the end: bytes per kind of key (MEMORY USAGE)."""
    client = redis.Redis(port=port)
    try:
        sizes: Counter[str] = Counter()
        counts: Counter[str] = Counter()
        for key in client.scan_iter(count=1000):
            name = key.decode(errors="replace")
            kind = name.split("}", 1)[-1].lstrip(":").split(":", 1)[0]
            sizes[kind] += int(client.memory_usage(key) or 0)
            counts[kind] += 1
        used = int(client.info("memory")["used_memory"])
        lines = [f"Redis at the end: used_memory {mib(used)} MiB.", ""]
        lines += ["| key kind | keys | MiB |", "|---|---|---|"]
        lines += [f"| {k} | {counts[k]} | {mib(v)} |" for k, v in sizes.most_common(8)]
        for key in client.scan_iter(match="*stream*", count=1000):
            if client.type(key) == b"stream":
                lines.append(f"\n{key.decode()}: {client.xlen(key)} messages")
        return lines
    finally:
        client.close()


def request_table(
    outcomes: list[Outcome], windows: list[tuple[float, float]]
) -> tuple[list[str], int]:
    """Table lines, and the number of unexpected errors."""

    def in_restart(o: Outcome) -> bool:
        return any(o.started <= b and o.ended >= a for a, b in windows)

    failed = [o for o in outcomes if not o.ok]
    injected = [o for o in failed if o.fault]
    restart = [o for o in failed if not o.fault and in_restart(o)]
    unexpected = [o for o in failed if not o.fault and not in_restart(o)]
    caches = Counter(o.cache or "(none)" for o in outcomes)
    hits = caches["HIT-EXACT"] + caches["HIT-SEMANTIC"]
    cacheable = hits + caches["MISS"]
    ok_s = sorted(o.ended - o.started for o in outcomes if o.ok)
    p50 = statistics.median(ok_s) if ok_s else 0.0
    p99 = percentile(ok_s, 99, "lower") if ok_s else 0.0
    lines = [
        "| requests | ok | errors: injected | errors: in a replica restart | errors: unexpected |",
        "|---|---|---|---|---|",
        f"| {len(outcomes)} | {len(outcomes) - len(failed)} | {len(injected)} "
        f"(of {sum(1 for o in outcomes if o.fault)} with a fault) | {len(restart)} "
        f"| {len(unexpected)} |",
        "",
        "| HIT-EXACT | HIT-SEMANTIC | MISS | BYPASS | hit ratio (cacheable) | p50 s | p99 s |",
        "|---|---|---|---|---|---|---|",
        f"| {caches['HIT-EXACT']} | {caches['HIT-SEMANTIC']} | {caches['MISS']} "
        f"| {caches['BYPASS']} | {hits / max(1, cacheable):.1%} | {p50:.3f} | {p99:.3f} |",
    ]
    t0 = min((o.started for o in outcomes), default=0.0)
    lines += [f"unexpected at {o.started - t0:.0f} s: {o.detail}" for o in unexpected[:10]]
    lines += [f"during a restart at {o.started - t0:.0f} s: {o.detail}" for o in restart[:5]]
    return lines, len(unexpected)
