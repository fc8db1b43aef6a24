"""Fairness when the fleet is full (issue 19): tenants' first tokens, shares and sheds.

Two mock replicas that run ``--mock-concurrency`` requests at once each (the
rest wait in their FIFO, as in vLLM), behind the gateway with auth on. The
fleet's capacity in requests per second is its slots over one request's time
(``ttft + max_tokens * itl``). Scenarios, each run with flow control off (the
gateway sends everything on: the mocks' queues decide) and on
(``GATEWAY_FLOW_ENDPOINT_CONCURRENCY`` = the mocks' concurrency):

- ``quiet``: the quiet tenant alone at ``--quiet-share`` of capacity: its baseline;
- ``noisy``: the same, beside a noisy tenant offering ``--noisy-factor`` times
  capacity (open loop, at most ``--cap`` outstanding), both interactive;
- ``interactive``: an interactive tenant alone at ``--interactive-share``: its baseline;
- ``batch``: the same, beside a batch tenant flooding at ``--noisy-factor``;
- ``weights`` (on only): two tenants of weights 2 and 1, always backlogged
  (closed loop), for ``--weights-s``: the shares of tokens served;
- ``replicas``: ``quiet`` and ``noisy`` through two gateway replicas (requests
  alternate between them) that share nothing but Redis: each with the whole
  fleet's slots and the engine-queue signal, and each with half the slots.

Per tenant: offered and served requests per second, TTFT p50/p99 (and p99
against the tenant's alone-baseline in the same mode), the share of
completions, sheds (429, 503, dropped at the client's cap); per scenario the
fleet's utilisation (the mocks' running requests over their slots, sampled
every 50 ms). Everything listens on 127.0.0.1; a run takes a few minutes.

``python -m bench.fairness [--seed 1] [--duration 20] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.fairness_load import Run, Tenant, Traffic
from bench.runner import machine, run_and_report, run_loop
from bench.stats import fmt, md_table, percentile
from deploy.local.harness import MOCK_MODEL, Stack
from gateway.tenancy import hash_key

WEIGHTS = {"heavy": 2.0, "light": 1.0}


def key(name: str) -> str:
    return f"sk-bench-{name}-0123456789"


def tenants_file(path: Path) -> Path:
    entries: list[dict[str, object]] = [
        {"name": n, "key_sha256": [hash_key(key(n))]} for n in ("noisy", "quiet", "inter")
    ]
    entries.append({"name": "etl", "key_sha256": [hash_key(key("etl"))], "priority": "batch"})
    for name, weight in WEIGHTS.items():
        entries.append({"name": name, "key_sha256": [hash_key(key(name))], "weight": weight})
    path.write_text(json.dumps({"tenants": entries}))
    return path


@dataclass
class Row:
    mode: str
    scenario: str
    tenant: str
    offered_rps: float
    served_rps: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    p99_vs_alone: float
    share: float
    shed_429: int
    shed_503: int
    client_cap: int
    errors: int
    utilisation: float
    queued: int = 0  # admitted after waiting in the gateway's queue (its counter)


def summarise(mode: str, scenario: str, run: Run, start: float, end: float) -> list[Row]:
    window = end - start
    inside = [s for s in run.samples if start <= s.started < end]
    served = [s for s in run.samples if s.error is None and start <= s.ended < end]
    busy = [b for t, b in run.busy if start <= t < end]
    rows = []
    for tenant in sorted({s.tenant for s in inside}):
        mine = [s for s in inside if s.tenant == tenant]
        ttfts = [s.ttft * 1000 for s in mine if s.error is None and s.ttft is not None]
        done = sum(1 for s in served if s.tenant == tenant)
        rows.append(
            Row(
                mode,
                scenario,
                tenant,
                offered_rps=len(mine) / window,
                served_rps=done / window,
                ttft_p50_ms=percentile(ttfts, 50),
                ttft_p99_ms=percentile(ttfts, 99),
                p99_vs_alone=float("nan"),
                share=done / len(served) if served else float("nan"),
                shed_429=sum(1 for s in mine if s.status == 429),
                shed_503=sum(1 for s in mine if s.status == 503),
                client_cap=sum(1 for s in mine if s.status == -1),
                errors=sum(1 for s in mine if s.error and s.status in (0, 200)),
                utilisation=sum(busy) / len(busy) if busy else float("nan"),
            )
        )
    return rows


class Bench:
    def __init__(self, args: argparse.Namespace, stack: Stack, tmp: Path) -> None:
        self.args = args
        self.stack = stack
        self.keys = tenants_file(tmp / "tenants.json")
        self.mocks = [
            stack.mock(
                f"mock{i}",
                max_concurrency=args.mock_concurrency,
                ttft_ms=args.ttft_ms,
                inter_token_ms=args.itl_ms,
                output_tokens=2 * args.max_tokens + 1,  # never the limit: max_tokens is
                log_level="warning",
            )[1]
            for i in range(2)
        ]
        self.slots = 2 * args.mock_concurrency
        self.capacity_rps = self.slots / ((args.ttft_ms + args.max_tokens * args.itl_ms) / 1000)
        self.redis = ""

    def gateways(self, mode: str) -> list[str]:
        args = self.args
        settings: dict[str, Any] = {
            "auth_enabled": "true",
            "api_keys_file": self.keys,
            "log_requests": "false",
            "ready_path": "/readyz",
        }
        conc = args.mock_concurrency
        if mode == "on":
            settings |= {"flow_endpoint_concurrency": conc, "flow_reserve": args.reserve}
            return [self.stack.gateway(self.mocks, f"gw-{mode}", **settings)[1]]
        if mode == "off":
            return [self.stack.gateway(self.mocks, f"gw-{mode}", **settings)[1]]
        if not self.redis:
            self.redis = self.stack.redis()[1]
        settings |= {"redis_url": self.redis, "expected_replicas": 2, "flow_reserve": args.reserve}
        if mode == "2x-whole":  # each replica thinks it has every slot; engine queues say no
            settings |= {"flow_endpoint_concurrency": conc, "flow_engine_waiting": 1}
        else:  # "2x-half": the slots split between the replicas
            settings |= {"flow_endpoint_concurrency": max(1, conc // 2)}
        return [self.stack.gateway(self.mocks, f"gw-{mode}-{i}", **settings)[1] for i in range(2)]

    def tenants(self, scenario: str) -> list[Tenant]:
        a, cap = self.args, self.capacity_rps
        flood = a.noisy_factor * cap
        quiet = Tenant("quiet", key("quiet"), rate=a.quiet_share * cap, max_tokens=a.max_tokens)
        inter = Tenant(
            "inter", key("inter"), rate=a.interactive_share * cap, max_tokens=a.max_tokens
        )
        if scenario == "quiet":
            return [quiet]
        if scenario == "noisy":
            return [quiet, Tenant("noisy", key("noisy"), flood, cap=a.cap, max_tokens=a.max_tokens)]
        if scenario == "interactive":
            return [inter]
        if scenario == "batch":
            return [inter, Tenant("etl", key("etl"), flood, cap=a.cap, max_tokens=a.max_tokens)]
        workers = 2 * self.slots
        return [
            Tenant(n, key(n), workers=workers, max_tokens=a.max_tokens) for n in WEIGHTS
        ]  # weights

    async def scenario(self, mode: str, scenario: str, gateways: list[str]) -> list[Row]:
        a = self.args
        seconds = a.weights_s if scenario == "weights" else a.duration
        traffic = Traffic(gateways, MOCK_MODEL, a.seed)
        before = queued_counts(gateways)
        t0 = time.perf_counter()
        run = await traffic.run(self.tenants(scenario), self.mocks, a.warmup + seconds)
        waited = {t: n - before.get(t, 0) for t, n in queued_counts(gateways).items()}
        rows = summarise(mode, scenario, run, t0 + a.warmup, t0 + a.warmup + seconds)
        for row in rows:
            row.utilisation /= self.slots
            row.queued = round(waited.get(row.tenant, 0))
        print(f"  {mode} {scenario}: done", file=sys.stderr, flush=True)
        return rows

    async def run(self) -> list[Row]:
        rows: list[Row] = []
        plan = {
            "off": ["quiet", "noisy", "interactive", "batch"],
            "on": ["quiet", "noisy", "interactive", "batch", "weights"],
            "2x-whole": ["quiet", "noisy"],
            "2x-half": ["quiet", "noisy"],
        }
        for mode in self.args.modes.split(","):
            procs_before = len(self.stack.procs)
            gateways = self.gateways(mode)
            for scenario in plan[mode]:
                if scenario in self.args.scenarios.split(","):
                    rows += await self.scenario(mode, scenario, gateways)
            for proc in self.stack.procs[procs_before:]:
                if proc.name.startswith("gw-"):
                    proc.stop()
        baseline = {(r.mode, r.tenant): r.ttft_p99_ms for r in rows if r.scenario in ALONE}
        for r in rows:
            alone = baseline.get((r.mode, r.tenant))
            if alone and r.scenario not in ALONE:
                r.p99_vs_alone = r.ttft_p99_ms / alone
        return rows


ALONE = ("quiet", "interactive")
_QUEUED = re.compile(r"^gateway_flow_admitted_total\{([^}]*)\} ([0-9.eE+]+)$", re.M)


def queued_counts(gateways: list[str]) -> dict[str, float]:
    """Requests each tenant had admitted from the queue, summed over the gateways."""
    counts: dict[str, float] = {}
    for gw in gateways:
        for labels, value in _QUEUED.findall(httpx.get(f"{gw}/metrics", timeout=5).text):
            if 'path="queued"' in labels and (m := re.search(r'tenant="([^"]*)"', labels)):
                counts[m.group(1)] = counts.get(m.group(1), 0) + float(value)
    return counts


def cells(r: Row) -> list[object]:
    return [
        r.mode, r.scenario, r.tenant, fmt(r.offered_rps, 1), fmt(r.served_rps, 1),
        fmt(r.ttft_p50_ms, 0), fmt(r.ttft_p99_ms, 0), fmt(r.p99_vs_alone), f"{r.share:.1%}",
        r.shed_429, r.shed_503, r.client_cap, r.errors, f"{r.utilisation:.1%}", r.queued,
    ]  # fmt: skip


def report(result: dict[str, Any]) -> str:
    rows = [Row(**r) for r in result["rows"]]
    header = [
        "mode", "scenario", "tenant", "offered/s", "served/s", "TTFT p50 ms", "p99 ms",
        "p99 / alone", "share", "429", "503", "cap", "errors", "fleet busy", "queued",
    ]  # fmt: skip
    table = md_table(header, (cells(r) for r in rows))
    m, a = result["machine"], result["args"]
    return (
        f"{table}\n\n{m['date']}, {m['nproc']} CPUs ({m['cpu']}); seed {a['seed']}, "
        f"{a['duration']} s per scenario after {a['warmup']} s, mocks: 2 x "
        f"{a['mock_concurrency']} slots, TTFT {a['ttft_ms']} ms, {a['max_tokens']} tokens x "
        f"{a['itl_ms']} ms (lengths within 50 %); capacity {result['capacity_rps']:.1f} req/s;"
        f" reserve {a['reserve']}"
    )


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, Stack(Path(tmp), fresh_logs=True) as stack:
        bench = Bench(args, stack, Path(tmp))
        rows = run_loop(bench.run())
        return {
            "machine": machine(),
            "args": vars(args),
            "capacity_rps": bench.capacity_rps,
            "rows": [asdict(r) for r in rows],
        }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per scenario")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before")
    p.add_argument("--weights-s", type=float, default=60.0, help="the weights scenario's seconds")
    p.add_argument("--mock-concurrency", type=int, default=4)
    p.add_argument("--ttft-ms", type=float, default=100.0)
    p.add_argument("--itl-ms", type=float, default=10.0)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--quiet-share", type=float, default=0.1, help="of capacity")
    p.add_argument("--interactive-share", type=float, default=0.3, help="of capacity")
    p.add_argument("--noisy-factor", type=float, default=10.0, help="times capacity")
    p.add_argument(
        "--cap", type=int, default=200, help="a flooding tenant's outstanding requests at most"
    )
    p.add_argument("--reserve", type=int, default=0, help="GATEWAY_FLOW_RESERVE")
    p.add_argument("--modes", default="off,on,2x-whole,2x-half")
    p.add_argument("--scenarios", default="quiet,noisy,interactive,batch,weights")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_and_report(
        lambda: measure(args), report, args.json, lambda r: json.dumps(r, indent=1, default=str)
    )


if __name__ == "__main__":
    raise SystemExit(main())
