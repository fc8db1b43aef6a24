"""``make bench``'s tables: one row per target and concurrency, the ratios to nginx,
the issue's targets read off them, and a py-spy profile summarised.

A row's ``proxy CPU ms/req`` is the CPU of the process under test (the
gateway, nginx: master and workers, the gateway's workers) over the requests
completed in its windows; for ``direct`` it is the idle gateway's, which shows
what the gateway burns with no traffic. Added TTFT is a target's percentile
minus the direct percentile of the same run and concurrency.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from bench.loadgen import Cell
from bench.stats import fmt, md_table

# Issue 20's done-when, as ratios to nginx or as added milliseconds.
TARGET_CPU_RATIO = {64: 1.5, 16: 2.0}
TARGET_ADDED_P50_MS = {1: 1.0, 16: 1.0}
TARGET_ADDED_P99_MS = {16: 3.0}
TARGET_RPS_PCT_OF_NGINX = 95.0  # c=64: "within 5 % of nginx's"

COLUMNS = (
    "concurrency",
    "target",
    "req/s",
    "TTFT p50 ms",
    "TTFT p99 ms",
    "added p50 ms",
    "added p99 ms",
    "errors",
    "proxy CPU ms/req",
    "rps % of direct",
    "mock CPU ms/req",
    "client CPU ms/req",
    "host busy %",
)


def row(cell: Cell, direct: Cell) -> dict[str, Any]:
    via = cell.target != "direct"
    nan = math.nan
    window = sum(s.window_s for s in cell.slices)
    return {
        "concurrency": cell.concurrency,
        "target": cell.target,
        "requests": cell.ok_count,
        "rps": cell.rps,
        "ttft_p50_ms": cell.ttft_ms(50),
        "ttft_p99_ms": cell.ttft_ms(99),
        "added_p50_ms": cell.ttft_ms(50) - direct.ttft_ms(50) if via else nan,
        "added_p99_ms": cell.ttft_ms(99) - direct.ttft_ms(99) if via else nan,
        "errors": cell.errors,
        "proxy_cpu_ms_per_req": cell.cpu_ms_per_request("gateway") if via else nan,
        "rps_pct_of_direct": 100 * cell.rps / direct.rps if via and direct.rps else nan,
        "mock_cpu_ms_per_req": cell.cpu_ms_per_request("mock"),
        "client_cpu_ms_per_req": cell.cpu_ms_per_request("client"),
        "host_busy_pct": cell.host_busy_pct,
        "idle_gateway_cpu_ms_per_s": cell.cpu["gateway"] * 1000 / window
        if window and not via
        else nan,
    }


def table(rows: list[dict[str, Any]]) -> str:
    return md_table(COLUMNS, (cells(r) for r in rows))


def cells(r: dict[str, Any]) -> list[str]:
    return [
        str(r["concurrency"]),
        r["target"],
        fmt(r["rps"], 1),
        fmt(r["ttft_p50_ms"], 2),
        fmt(r["ttft_p99_ms"], 2),
        fmt(r["added_p50_ms"], 2),
        fmt(r["added_p99_ms"], 2),
        str(r["errors"]),
        fmt(r["proxy_cpu_ms_per_req"], 2),
        fmt(r["rps_pct_of_direct"], 1),
        fmt(r["mock_cpu_ms_per_req"], 2),
        fmt(r["client_cpu_ms_per_req"], 2),
        fmt(r["host_busy_pct"], 0),
    ]


def _by(rows: list[dict[str, Any]], target: str) -> dict[int, dict[str, Any]]:
    return {r["concurrency"]: r for r in rows if r["target"] == target}


def ratios(rows: list[dict[str, Any]], targets: list[str]) -> str:
    """Each gateway target against nginx: CPU/request, added TTFT, req/s (x = target/nginx)."""
    nginx = _by(rows, "nginx")
    header = ("figure", "nginx", *(f"{t}" for t in targets), *(f"{t} / nginx" for t in targets))
    lines = []
    figures = [("proxy_cpu_ms_per_req", c, "CPU ms/req") for c in (16, 64)]
    figures += [(f"added_{p}_ms", c, f"added TTFT {p} ms") for c in (1, 16) for p in ("p50", "p99")]
    figures += [("rps", 64, "req/s")]
    for key, conc, title in figures:
        if conc not in nginx:
            continue
        ref = nginx[conc][key]
        values = [_by(rows, t).get(conc, {}).get(key, math.nan) for t in targets]
        quotients = [v / ref if ref and ref > 0 else math.nan for v in values]
        lines.append(
            [f"{title} c={conc}", fmt(ref, 2), *(fmt(v, 2) for v in values)]
            + [fmt(q, 2) + "x" if not math.isnan(q) else "-" for q in quotients]
        )
    return md_table(header, lines)


def verdict(rows: list[dict[str, Any]], target: str = "gateway") -> list[str]:
    """Issue 20's done-when, read off the table for ``target`` (information, not a test)."""
    gw, nginx = _by(rows, target), _by(rows, "nginx")
    out: list[str] = []

    def say(ok: bool, text: str) -> None:
        out.append(f"[{'met' if ok else 'MISSED'}] {target}: {text}")

    for conc, limit in TARGET_CPU_RATIO.items():
        if conc in gw and conc in nginx:
            q = gw[conc]["proxy_cpu_ms_per_req"] / nginx[conc]["proxy_cpu_ms_per_req"]
            say(q <= limit, f"c={conc} CPU/request {q:.2f}x nginx's (target <= {limit}x)")
    for conc, limit in TARGET_ADDED_P50_MS.items():
        if conc in gw:
            v = gw[conc]["added_p50_ms"]
            say(v <= limit, f"c={conc} added TTFT p50 {v:.2f} ms (target <= {limit})")
    for conc, limit in TARGET_ADDED_P99_MS.items():
        if conc in gw:
            v = gw[conc]["added_p99_ms"]
            say(v <= limit, f"c={conc} added TTFT p99 {v:.2f} ms (target <= {limit})")
    if 64 in gw and 64 in nginx and nginx[64]["rps"]:
        pct = 100 * gw[64]["rps"] / nginx[64]["rps"]
        say(pct >= TARGET_RPS_PCT_OF_NGINX, f"c=64 req/s {pct:.1f}% of nginx's (target >= 95%)")
    return out


def idle(rows: list[dict[str, Any]]) -> str:
    """What the one-worker gateway burns with no traffic (discovery, pollers)."""
    idle = min(
        (r["idle_gateway_cpu_ms_per_s"] for r in rows if r["target"] == "direct"), default=math.nan
    )
    return f"gateway CPU while idle (during the direct slices): {fmt(idle, 1)} ms/s"


def top_frames(collapsed: Path, limit: int = 25) -> str:
    """The functions with the most py-spy samples: self (leaf) and inclusive, in %."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f.split(":")[0] + ")" if ":" in f else f for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"py-spy: {total} samples of the gateway on CPU, {collapsed}"]
    for title, counts in (("self", own), ("inclusive", inclusive)):
        lines.append(f"\ntop {limit} by {title} samples:")
        for frame, n in counts.most_common(limit):
            lines.append(f"  {100 * n / max(total, 1):5.1f}%  {frame}")
    return "\n".join(lines)
