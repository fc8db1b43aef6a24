"""The report: Markdown tables of one run, and the target figures of several."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Any

from bench.cache_path.cases import TARGET_MISS_ADDED_P50_MS
from bench.cache_path.client import HIT_SEMANTIC
from bench.stats import counts, fmt, md_table


def counted(row: dict[str, Any]) -> str:
    return f"{counts(row['lookups'])}; {counts(row['sidecar_errors'])}"


def pair_table(checks: list[dict[str, Any]]) -> str:
    by: dict[str, list[dict[str, Any]]] = {}
    for c in checks:
        by.setdefault(c["rewrite"], []).append(c)
    rows = []
    for rewrite, cs in [*by.items(), ("all", checks)]:
        hits = [c for c in cs if c["x_cache"] == HIT_SEMANTIC]
        right = [c for c in hits if c["right_answer"]]
        sims = [c["similarity"] for c in hits if c["similarity"] is not None]
        outcomes = Counter(c["lookup_outcome"] for c in cs if c["x_cache"] != HIT_SEMANTIC)
        rows.append(
            [
                rewrite,
                str(len(cs)),
                str(len(hits)),
                str(len(right)),
                fmt(100 * len(right) / len(cs) if cs else math.nan, 0),
                fmt(statistics.median(sims) if sims else math.nan, 3),
                counts(dict(outcomes)),
            ]
        )
    header = [
        "rewrite",
        "pairs",
        "HIT-SEMANTIC",
        "with the original's answer",
        "accepted %",
        "median similarity",
        "the others: lookup outcome",
    ]
    return md_table(header, rows)


def hits_table(rows: list[dict[str, Any]]) -> str:
    header = [
        "case",
        "concurrency",
        "requests",
        "req/s",
        "X-Cache",
        "errors",
        "wrong answers",
        "p50 ms",
        "p99 ms",
        "target p50",
        "gateway CPU ms/req",
        "embedder CPU ms/req",
        "cache + Redis CPU ms/req",
        "host busy %",
        "CACHED counted: lookups; sidecar errors",
    ]
    return md_table(
        header,
        (
            [
                r["case"],
                str(r["concurrency"]),
                str(r["requests"]),
                fmt(r["rps"], 0),
                counts(r["x_cache"]),
                str(r["errors"]),
                str(r["wrong_answers"]),
                fmt(r["p50_ms"]),
                fmt(r["p99_ms"]),
                f"< {r['target_p50_ms']:g} ms" if r["target_p50_ms"] else "-",
                fmt(r["gateway_cpu_ms_per_req"]),
                fmt(r["embedder_cpu_ms_per_req"]),
                fmt(r["cache_redis_cpu_ms_per_req"]),
                fmt(r["host_busy_pct"], 0),
                counted(r),
            ]
            for r in rows
        ),
    )


def miss_table(rows: list[dict[str, Any]]) -> str:
    header = [
        "concurrency",
        "gateway",
        "requests",
        "X-Cache",
        "errors",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "total p50 ms",
        "total p99 ms",
        "paired median TTFT / total ms",
        "gateway CPU ms/req",
        "CACHED counted: lookups; sidecar errors",
    ]
    out = []
    for r in rows:
        added = "x_cache" not in r
        out.append(
            [
                str(r["concurrency"]),
                f"**{r['gateway']}**" if added else r["gateway"],
                str(r["requests"]),
                "-" if added else counts(r["x_cache"]),
                "-" if added else str(r["errors"]),
                f"**{fmt(r['ttft_p50_ms'])}**" if added else fmt(r["ttft_p50_ms"]),
                fmt(r["ttft_p99_ms"]),
                f"**{fmt(r['total_p50_ms'])}**" if added else fmt(r["total_p50_ms"]),
                fmt(r["total_p99_ms"]),
                f"{fmt(r['paired_ttft_median_ms'])} / {fmt(r['paired_total_median_ms'])}"
                if added
                else "-",
                fmt(r["gateway_cpu_ms_per_req"]),
                counted(r) if r.get("lookups") else "-",
            ]
        )
    return md_table(header, out)


def inside_table(hits: list[dict[str, Any]], misses: list[dict[str, Any]]) -> str:
    header = [
        "case",
        "concurrency",
        "gateway lookup ms",
        "embed call ms (calls)",
        "texts per model run",
        "cache exact lookup ms",
        "cache semantic lookup ms (searches)",
    ]
    rows = [(r["case"], r) for r in hits]
    rows += [("miss, streamed", r) for r in misses if r["gateway"] == "cached"]
    return md_table(
        header,
        (
            [
                case,
                str(r["concurrency"]),
                fmt(r["gateway_lookup_ms"]),
                f"{fmt(r['embed_ms'])} ({r['embed_calls']})",
                fmt(r["batch_texts"]),
                fmt(r["cache_exact_ms"]),
                f"{fmt(r['cache_semantic_ms'])} ({r['semantic_searches']})",
            ]
            for case, r in rows
        ),
    )


def failopen_table(rows: list[dict[str, Any]]) -> str:
    header = [
        "stopped (SIGKILL)",
        "requests",
        "errors",
        "X-Cache",
        "p50 / max ms",
        "restart -> serving s",
        "restart -> hit again s",
        "probes until then",
    ]
    return md_table(
        header,
        (
            [
                r["stopped"],
                str(r["requests"]),
                str(r["errors"]) + (f" ({counts(r['error_kinds'])})" if r["errors"] else ""),
                counts(r["x_cache"]),
                f"{fmt(r['p50_ms'], 1)} / {fmt(r['max_ms'], 1)}",
                fmt(r["ready_s"], 1),
                "-" if r["stopped"] == "nothing" else f"{fmt(r['hit_again_s'], 1)} ({r['probe']})",
                counts(r["probes"]),
            ]
            for r in rows
        ),
    )


def figures(result: dict[str, Any]) -> dict[str, tuple[str, float]]:
    """The issue's target figures of one run: name -> (target, value)."""
    out: dict[str, tuple[str, float]] = {}
    for r in result["hits"]:
        target = f"< {r['target_p50_ms']:g} ms" if r["target_p50_ms"] else "-"
        out[f"{r['case']} p50 ms, c={r['concurrency']}"] = (target, r["p50_ms"])
        share = 100 * r["as_expected"] / r["requests"] if r["requests"] else math.nan
        out[f"{r['case']}: % {r['expected']}, c={r['concurrency']}"] = ("-", share)
    for r in result["miss"]:
        if "x_cache" not in r:
            c = r["concurrency"]
            out[f"miss: added TTFT p50 ms, c={c}"] = (
                f"<= {TARGET_MISS_ADDED_P50_MS:g} ms",
                r["ttft_p50_ms"],
            )
            out[f"miss: added total p50 ms, c={c}"] = ("-", r["total_p50_ms"])
    checks = result["pairs"]
    accepted = sum(1 for c in checks if c["x_cache"] == HIT_SEMANTIC and c["right_answer"])
    out["paraphrases accepted %"] = ("-", 100 * accepted / len(checks) if checks else math.nan)
    for r in result["fail_open"]:
        out[f"errors in the burst, {r['stopped']} stopped"] = ("0", float(r["errors"]))
        if r["hit_again_s"] is not None:
            out[f"{r['stopped']} restarted -> hit again s"] = ("-", r["hit_again_s"])
    return out


def summary_table(runs: list[dict[str, Any]]) -> str:
    per_run = [figures(r) for r in runs]
    names = list(per_run[0])
    rows = []
    for name in names:
        values = [f[name][1] for f in per_run if name in f]
        clean = [v for v in values if not math.isnan(v)]
        med = statistics.median(clean) if clean else math.nan
        note = f" ({len(clean)} of {len(values)} runs)" if len(clean) < len(values) else ""
        rows.append([name, per_run[0][name][0], *(fmt(v) for v in values), f"**{fmt(med)}**{note}"])
    header = ["figure", "target", *(f"run {i + 1}" for i in range(len(runs))), "median"]
    return md_table(header, rows)


def report(result: dict[str, Any]) -> str:
    info = result["machine"]
    lw = result["load_wait"]
    ls, le = result["load_during"]
    out = [
        f"# bench.cache_path  {info['date']}",
        "",
        f"machine: {info['nproc']} CPUs, {info['cpu']}; Python {info['python']}",
        f"load average (1/5/15 min): {lw[0]:.2f} / {lw[1]:.2f} / {lw[2]:.2f} before starting, "
        f"{ls[0]:.2f} / {ls[1]:.2f} / {ls[2]:.2f} at the first timed request, "
        f"{le[0]:.2f} / {le[1]:.2f} / {le[2]:.2f} after the last",
        "mock: 32 tokens, 20 ms TTFT, 5 ms between tokens; gateways: metrics + request logs on, "
        "CACHED with every cache setting at its default; temperature 0"
        + "".join(f"; CACHED with {k}={v}" for k, v in result.get("cached_env", [])),
        f"primed: {result['primed']['stored']}/{result['primed']['questions']} questions stored "
        f"in {result['primed']['seconds']:.1f} s",
        "",
        "## Paraphrases (each asked once through VERDICT: JSON, concurrency 1, 1 s lookup budget)",
        "",
        pair_table(result["pairs"]),
        "",
        "## Hits, end to end (request sent -> last byte; p50/p99 over the requests that "
        "got the expected X-Cache)",
        "",
        hits_table(result["hits"]),
        *(
            f"\nwrong answer ({r['case']}, c={r['concurrency']}): asked {w['asked']!r}, "
            f"similarity {w['similarity']}, answered {w['answer']!r}"
            for r in result["hits"]
            for w in r.get("wrong_examples", [])
        ),
        "",
        "## Where the lookup's time goes (means over each case, from the services' own "
        "histograms: the gateway's whole lookup, the embedder's calls, the cache service's "
        "lookups)",
        "",
        inside_table(result["hits"], result["miss"]),
        "",
        "## Miss cost (never-seen questions, streamed, CACHED and PLAIN interleaved)",
        "",
        miss_table(result["miss"]),
        "",
        "## Fail-open (a burst at concurrency 4 right after the SIGKILL, through CACHED)",
        "",
        failopen_table(result["fail_open"]),
        "",
        "## Target figures",
        "",
        summary_table([result]),
    ]
    return "\n".join(out)
