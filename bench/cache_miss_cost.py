"""What a cache miss and a semantic hit cost, side by side in one run, at concurrency 1.

    python -m bench.cache_miss_cost [--misses 30] [--rounds 3] [--exact 30]
                                    [--old-gateway DIR] [--load-below 2.5] [--wait-load 120]
                                    [--json FILE]

Starts the stack of ``bench.cache_path`` (Redis, the embedder, the cache service,
one mock model server: 20 ms to the first of 32 tokens, 5 ms between them) and,
in front of the one mock, these gateways (one process each):

- CACHED: every setting at its default (the upstream starts as soon as the exact
  lookup misses or the head start runs out, and a hit cancels it);
- EAGER: ``GATEWAY_CACHE_HEAD_START_MS=0``, the upstream starts with the
  lookup (what the head start saves exact hits, and what it costs misses);
- WAITING: ``GATEWAY_CACHE_SPECULATIVE=false``, the upstream waits for the whole
  lookup (the exact lookup, then the embedding, then the semantic stage);
- OLD, with ``--old-gateway DIR``: the ``gateway`` package from DIR (for
  example the commit before the speculative start, exported with ``git
  archive``), with CACHED's lookup budget, so that only the code differs;
- VERDICT (1 s budget) asks each paraphrase once: only accepted ones are timed.

Requests go one at a time, each unit of comparison in a rotating order, so
that the machine's load (it is shared) falls on every gateway alike:

1. **exact hits** (primed questions, streamed) through CACHED, WAITING, OLD;
   the head start's test: how many of CACHED's started an upstream attempt;
2. **semantic hits** (a never-sent spacing variant of an accepted paraphrase,
   JSON) through CACHED, WAITING, OLD, and ``POST /v1/embeddings`` of the same
   text through CACHED: the target is a hit at most 2x that call (p50);
3. **misses** (never-seen questions, streamed, each gateway its own question)
   through CACHED, CACHED with ``Cache-Control: no-store`` (BYPASS: no lookup,
   no store) and WAITING, OLD: time to first token and to the last byte; the
   target is a miss at most 1 ms over the bypass (p50).

CACHED's own counters, read around each phase, give the lookup outcomes, the
upstream attempts a hit cancelled (and their seconds), and the mean time of
each stage (``bench.cache_path.metrics.inside``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.cache_path.client import (
    BYPASS,
    EMBEDDINGS,
    HIT_EXACT,
    HIT_SEMANTIC,
    JSON_HEADERS,
    MISS,
    Job,
    Reply,
    ask,
    embeddings_call,
)
from bench.cache_path.metrics import grown, inside, scrape
from bench.cache_path.questions import miss_question, question_pairs
from bench.cache_path.session import Bench, check_pairs, prime
from bench.cache_path.stack import Stack, measured
from bench.runner import add_quiet_flags, run_and_report
from bench.stats import fmt, md_table, percentile, summary

TARGET_MISS_ADDED_MS = 1.0
TARGET_HIT_OVER_EMBEDDING = 2.0
NO_STORE = {**JSON_HEADERS, "Cache-Control": "no-store"}


Unit = list[tuple[str, Job | str]]  # (series, a chat request or the text to embed)


async def run_units(bench: Bench, units: Sequence[Unit]) -> dict[str, list[Reply]]:
    """Each unit's requests one at a time, the order rotating from one unit to the next."""
    out: dict[str, list[Reply]] = {}
    for i, unit in enumerate(units):
        k = i % len(unit)
        for series, job in unit[k:] + unit[:k]:
            if isinstance(job, str):
                reply = await embeddings_call(bench.session, bench.stack.cached_url, job)
            else:
                reply = await ask(bench.session, job)
            reply.job.tag = i
            out.setdefault(series, []).append(reply)
    return out


async def cancelled(bench: Bench) -> dict[str, tuple[float, float]]:
    """Each gateway's upstream attempts cancelled by a hit, and their seconds."""
    name = "gateway_cache_cancelled_upstream"
    out = {}
    for gw, url in gateways(bench.stack).items():
        got = await scrape(bench.session, url + "/metrics")
        out[gw] = (got.get(f"{name}_total", 0.0), got.get(f"{name}_seconds_total", 0.0))
    return out


async def phase(bench: Bench, units: Sequence[Unit], warmup: int) -> dict[str, Any]:
    """Run the units after ``warmup`` unrecorded ones; the counters around them."""
    await run_units(bench, units[:warmup])
    before, stopped = await bench.samples(), await cancelled(bench)
    replies = await run_units(bench, units[warmup:])
    after, stopped_after = await bench.samples(), await cancelled(bench)
    g0, g1 = before["gateway"], after["gateway"]
    by = {gw: (n1 - stopped[gw][0], s1 - stopped[gw][1]) for gw, (n1, s1) in stopped_after.items()}
    return {
        "replies": replies,
        "inside": inside(before, after),
        "cancelled_upstream": by["cached"][0],
        "cancelled_upstream_s": by["cached"][1],
        "cancelled_by_gateway": by,
        "upstream_attempts": grown(g0, g1, "gateway_upstream_attempts_total"),
        "lookups_within": within(g0, g1),
    }


def within(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Share of CACHED's lookups that ended within each bucket bound (ms -> fraction)."""
    name = "gateway_cache_lookup_seconds"
    total = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
    out = {}
    for le in ("0.001", "0.0025", "0.005", "0.01", "0.025"):
        series = f'{name}_bucket{{le="{le}"}}'
        n = after.get(series, 0.0) - before.get(series, 0.0)
        out[f"{float(le) * 1000:g}"] = n / total if total else float("nan")
    return out


def gateways(stack: Stack) -> dict[str, str]:
    return {"cached": stack.cached_url, **stack.extra_urls}


def exact_units(bench: Bench, n: int) -> list[Unit]:
    primed = list(bench.answers)
    return [
        [
            (name, Job(url, primed[i % len(primed)], True))
            for name, url in gateways(bench.stack).items()
        ]
        for i in range(n)
    ]


def semantic_units(bench: Bench, rounds: int) -> list[Unit]:
    units = []
    for _ in range(rounds):
        for pair in bench.accepted:
            texts = {name: bench.fresh(pair) for name in gateways(bench.stack)}
            unit: Unit = [
                (name, Job(url, texts[name], False, pair=pair))
                for name, url in gateways(bench.stack).items()
            ]
            units.append([*unit, ("embeddings", texts["cached"])])
    return units


def miss_units(bench: Bench, n: int, first: int) -> list[Unit]:
    urls = gateways(bench.stack)
    series = [*urls, "bypass"]
    units = []
    for i in range(n):
        q = {name: miss_question(first + i * len(series) + k) for k, name in enumerate(series)}
        unit: Unit = [(name, Job(url, q[name], True, ttft=True)) for name, url in urls.items()]
        bypass = Job(bench.stack.cached_url, q["bypass"], True, ttft=True, headers=NO_STORE)
        units.append([*unit, ("bypass", bypass)])
    return units


def row(series: str, replies: list[Reply], expected: str) -> dict[str, Any]:
    ok = [r for r in replies if r.error is None and r.x_cache == expected]
    ttfts = [r.ttft * 1000 for r in ok if r.ttft is not None]
    return {
        "series": series,
        "requests": len(replies),
        "x_cache": dict(Counter(r.error or r.x_cache for r in replies)),
        "as_expected": len(ok),
        **summary([r.total_ms for r in ok], (50, 90), "p{q:g}_ms"),
        **summary(ttfts, (50, 90), "ttft_p{q:g}_ms"),
    }


def paired(a: list[Reply], b: list[Reply], ttft: bool) -> float:
    """Median over units of a's time minus b's (time to first token, or total)."""
    other = {r.job.tag: r for r in b if r.error is None}
    diffs = []
    for r in a:
        s = other.get(r.job.tag)
        if r.error is None and s is not None:
            if not ttft:
                diffs.append(r.total_ms - s.total_ms)
            elif r.ttft is not None and s.ttft is not None:
                diffs.append((r.ttft - s.ttft) * 1000)
    return statistics.median(diffs) if diffs else float("nan")


def summarize(name: str, timed: dict[str, Any], expected: dict[str, str]) -> dict[str, Any]:
    replies = timed["replies"]
    rows = [row(s, replies[s], expected.get(s, expected["*"])) for s in replies]
    out = {**timed, "phase": name, "rows": rows}
    out["replies"] = None  # not kept in the JSON
    return out


async def measure(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=16)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        bench = Bench(stack, session, args, pairs=question_pairs())
        primed = await prime(bench, [p.original for p in bench.pairs])
        checks = await check_pairs(bench)
        print(
            f"  {primed['stored']}/{primed['questions']} primed, "
            f"{len(bench.accepted)}/{len(checks)} paraphrases accepted",
            file=sys.stderr,
        )
        load = [os.getloadavg()]
        exact = await phase(bench, exact_units(bench, args.exact + 3), 3)
        print("  exact hits done", file=sys.stderr)
        semantic = await phase(
            bench, semantic_units(bench, args.rounds), min(3, len(bench.accepted))
        )
        print("  semantic hits done", file=sys.stderr)
        misses = await phase(bench, miss_units(bench, args.misses + 2, 0), 2)
        load.append(os.getloadavg())
    figures = headline(exact, semantic, misses)
    return {
        "primed": primed,
        "accepted": len(bench.accepted),
        "paraphrases": len(checks),
        "load": load,
        "figures": figures,
        "phases": [
            summarize("exact hits, streamed", exact, {"*": HIT_EXACT}),
            summarize(
                "semantic hits, JSON", semantic, {"*": HIT_SEMANTIC, "embeddings": EMBEDDINGS}
            ),
            summarize("misses, streamed", misses, {"*": MISS, "bypass": BYPASS}),
        ],
    }


def headline(
    exact: dict[str, Any], semantic: dict[str, Any], misses: dict[str, Any]
) -> dict[str, Any]:
    """The figures the issue names, each a difference or ratio within this run."""
    m, s, e = misses["replies"], semantic["replies"], exact["replies"]

    def p50(replies: list[Reply], expected: str, ttft: bool = False) -> float:
        ok = [r for r in replies if r.error is None and r.x_cache == expected]
        if ttft:
            return percentile([r.ttft * 1000 for r in ok if r.ttft is not None], 50)
        return percentile([r.total_ms for r in ok], 50)

    out: dict[str, Any] = {}
    bypass_ttft, bypass_total = p50(m["bypass"], BYPASS, True), p50(m["bypass"], BYPASS)
    embed = p50(s["embeddings"], EMBEDDINGS)
    out["embeddings call p50 ms"] = embed
    out["bypass TTFT p50 ms"] = bypass_ttft
    for name in (n for n in s if n != "embeddings"):
        out[f"{name}: miss added TTFT p50 ms (target <= {TARGET_MISS_ADDED_MS})"] = (
            p50(m[name], MISS, True) - bypass_ttft
        )
        out[f"{name}: miss added TTFT, paired median ms"] = paired(m[name], m["bypass"], True)
        out[f"{name}: miss added total p50 ms"] = p50(m[name], MISS) - bypass_total
        out[f"{name}: semantic hit p50 ms"] = p50(s[name], HIT_SEMANTIC)
        out[f"{name}: semantic hit / embeddings call (target <= {TARGET_HIT_OVER_EMBEDDING})"] = (
            p50(s[name], HIT_SEMANTIC) / embed
        )
        out[f"{name}: exact hit p50 ms"] = p50(e[name], HIT_EXACT)
    if "old" in s:
        out["semantic hit: waiting - old, paired median ms"] = paired(s["waiting"], s["old"], False)
    if "waiting" in s:
        out["semantic hit: cached - waiting, paired median ms"] = paired(
            s["cached"], s["waiting"], False
        )
    out["exact hits that started an upstream attempt (cached, eager)"] = (
        f"{exact['cancelled_upstream']:.0f} of {len(e['cached'])}, "
        f"{exact['cancelled_by_gateway']['eager'][0]:.0f} of {len(e['eager'])}"
    )
    out["semantic hits: upstream attempts cancelled (cached)"] = semantic["cancelled_upstream"]
    out["semantic hits: upstream ms run per cancelled attempt (cached)"] = (
        1000 * semantic["cancelled_upstream_s"] / semantic["cancelled_upstream"]
        if semantic["cancelled_upstream"]
        else float("nan")
    )
    return out


def report(result: dict[str, Any]) -> str:
    info, load = result["machine"], result["load"]
    lines = [
        f"# bench.cache_miss_cost, {info['date']}",
        "",
        f"machine: {info['nproc']} CPUs, {info['cpu']}, Python {info['python']}; load average "
        f"(1/5/15 min) {' / '.join(f'{x:.2f}' for x in load[0])} at the first timed request, "
        f"{' / '.join(f'{x:.2f}' for x in load[1])} after the last",
        f"primed {result['primed']['stored']}/{result['primed']['questions']}, paraphrases "
        f"accepted {result['accepted']}/{result['paraphrases']}; concurrency 1",
        "",
        md_table(("figure", "value"), ((k, fmt(v)) for k, v in result["figures"].items())),
    ]
    for ph in result["phases"]:
        head = ("series", "requests", "X-Cache", "p50 ms", "p90 ms", "TTFT p50", "TTFT p90")
        rows = [
            (
                r["series"],
                str(r["requests"]),
                ", ".join(f"{k} {v}" for k, v in sorted(r["x_cache"].items())),
                fmt(r["p50_ms"]),
                fmt(r["p90_ms"]),
                fmt(r["ttft_p50_ms"]),
                fmt(r["ttft_p90_ms"]),
            )
            for r in ph["rows"]
        ]
        i = ph["inside"]
        lines += [
            "",
            f"## {ph['phase']}",
            "",
            md_table(head, rows),
            "",
            f"CACHED counted: lookups {i['lookups']}; sidecar errors {i['sidecar_errors'] or '-'}; "
            f"upstream attempts {ph['upstream_attempts'] or '-'}. Upstream attempts a hit "
            "cancelled (ms they had run, in all): "
            + ", ".join(
                f"{gw} {n:.0f} ({sec * 1000:.1f})"
                for gw, (n, sec) in ph["cancelled_by_gateway"].items()
            )
            + ". "
            f"Mean ms: gateway lookup {fmt(i['gateway_lookup_ms'])}, embed call "
            f"{fmt(i['embed_ms'])} ({i['embed_calls']} calls, all gateways), cache exact "
            f"{fmt(i['cache_exact_ms'])}, cache semantic {fmt(i['cache_semantic_ms'])}. "
            "CACHED's lookups that ended within ... ms: "
            + ", ".join(f"{k}: {v:.0%}" for k, v in ph["lookups_within"].items()),
        ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    budget = {"GATEWAY_CACHE_LOOKUP_BUDGET_MS": args.old_budget_ms}
    extra = {
        "eager": {"GATEWAY_CACHE_HEAD_START_MS": "0"},
        "waiting": {"GATEWAY_CACHE_SPECULATIVE": "false"},
    }
    if args.old_gateway is not None:
        extra["old"] = {"PYTHONPATH": str(args.old_gateway / "services" / "gateway"), **budget}
    return measured(args, measure, None, extra)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cache_miss_cost", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--misses", type=int, default=30, help="miss units (one per gateway)")
    parser.add_argument("--rounds", type=int, default=3, help="times each paraphrase is timed")
    parser.add_argument("--exact", type=int, default=30, help="exact-hit units")
    parser.add_argument("--old-gateway", type=Path, default=None, help="a tree with an old gateway")
    parser.add_argument("--old-budget-ms", default="100", help="OLD's lookup budget (ms)")
    add_quiet_flags(parser, 2.5, 120.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_and_report(
        lambda: run(args),
        report,
        args.json,
        lambda result: orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n",
    )


if __name__ == "__main__":
    sys.exit(main())
