"""``make bench``: what the gateway adds to a streamed chat request, against going direct.

Starts one mock model server (32 tokens, 20 ms to first token, 5 ms between
tokens, no queueing up to 256 concurrent streams) and one gateway in front of
it, with metrics and request logging on (the gateway's log goes to a file).
For each concurrency it runs a closed loop of streaming chat requests, direct
to the mock and through the gateway, in the order DIRECT, GATEWAY, GATEWAY,
DIRECT (each slice half the duration, after its own warm-up), so a drift in
background load on the machine falls on both targets alike. CPU time (user +
system) of the gateway, the mock and this client is read at the start and end
of every measured window.

    python -m bench.proxy [--duration S] [--warmup S] [--concurrency 1,16,64] [--json FILE]
                          [--profile FILE]

``--profile FILE`` then runs one more, unmeasured gateway slice at the highest
concurrency with py-spy sampling the gateway (collapsed stacks in FILE) and
prints the functions with the most samples, by self and by inclusive time.

Prints the machine, then a markdown table. Added TTFT is the gateway's
percentile minus the direct percentile of the same run. Everything started is
stopped at the end, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, TypeVar

from bench.loadgen import Cell, CpuClock, Meter, run_slice
from bench.runner import INTERRUPTED, interruptible, machine, run_loop
from bench.stats import fmt, md_table
from deploy.local.harness import MOCK_MODEL, Stack
from deploy.local.procs import PYTHON, ROOT, Proc

MODEL = MOCK_MODEL  # "mock-llama-3-8b"
PATH = "/v1/chat/completions"
# The mock's settings (deploy.local.harness: MOCKLLM_<KEY>); it serves MODEL.
MOCK_SETTINGS = {"ttft_ms": 20, "inter_token_ms": 5, "output_tokens": 32, "max_concurrency": 256}
T = TypeVar("T")
LOG_DIR = ROOT / "var" / "log" / "bench"
ORDER = ("direct", "gateway", "gateway", "direct")
TARGET_C16_ADDED_P50_MS = 1.5
TARGET_C64_RPS_PCT = 90.0
TARGET_C64_CPU_MS = 2.5


def start_stack(stack: Stack) -> tuple[Proc, str, Proc, str]:
    """Mock then gateway on free loopback ports: (mock, direct URL, gateway, gateway URL)."""
    mock, mock_url = stack.mock("mock-llm", **MOCK_SETTINGS)
    gateway, gateway_url = stack.gateway([mock_url], ready_path="/readyz", log_requests="true")
    return mock, mock_url + PATH, gateway, gateway_url + PATH


async def measure(
    urls: dict[str, str], clocks: dict[str, CpuClock], args: argparse.Namespace
) -> list[Cell]:
    meter = Meter(clocks)
    counter = itertools.count()
    cells: list[Cell] = []
    for conc in args.concurrency:
        by_target = {t: Cell(conc, t) for t in ("direct", "gateway")}
        for target in ORDER:
            cell = by_target[target]
            print(f"  c={conc:<3} {target:<7} ...", end=" ", flush=True, file=sys.stderr)
            result = await run_slice(
                urls[target],
                MODEL,
                conc,
                warmup_s=args.warmup,
                duration_s=args.duration / 2,
                on_window_start=meter.start,
                on_window_end=meter.stop_into(cell),
                counter=counter,
            )
            cell.slices.append(result)
            print(f"{result.rps:.1f} req/s, {result.errors} errors", file=sys.stderr)
        cells += [by_target["direct"], by_target["gateway"]]
    return cells


async def profile(url: str, pid: int, args: argparse.Namespace) -> None:
    """An extra gateway slice at the top concurrency, sampled by py-spy (not in the table)."""
    py_spy = shutil.which("py-spy", path=str(Path(PYTHON).parent)) or shutil.which("py-spy")
    if py_spy is None:
        print("py-spy is not installed (make setup)", file=sys.stderr)
        return
    seconds = max(1, round(args.duration))
    argv = [py_spy, "record", "--pid", str(pid), "--rate", "250", "--nonblocking"]
    argv += ["--format", "raw", "--duration", str(seconds), "-o", str(args.profile)]
    spies: list[subprocess.Popen[bytes]] = []
    conc = max(args.concurrency)
    print(f"  c={conc:<3} gateway under py-spy ({seconds} s) ...", file=sys.stderr)
    try:
        await run_slice(
            url,
            MODEL,
            conc,
            warmup_s=args.warmup,
            duration_s=seconds + 1.0,
            on_window_start=lambda: spies.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL)),
        )
    finally:
        for spy in spies:
            try:
                spy.wait(timeout=15)
            except subprocess.TimeoutExpired:
                spy.kill()


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


COLUMNS = (
    "concurrency",
    "target",
    "req/s",
    "TTFT p50 ms",
    "TTFT p99 ms",
    "added p50 ms",
    "added p99 ms",
    "errors",
    "gateway CPU ms/req",
    "rps % of direct",
    "mock CPU ms/req",
    "client CPU ms/req",
    "host busy %",
)


def row(cell: Cell, direct: Cell) -> dict[str, Any]:
    gw = cell.target == "gateway"
    nan = math.nan
    window = sum(s.window_s for s in cell.slices)
    return {
        "concurrency": cell.concurrency,
        "target": cell.target,
        "requests": cell.ok_count,
        "rps": cell.rps,
        "ttft_p50_ms": cell.ttft_ms(50),
        "ttft_p99_ms": cell.ttft_ms(99),
        "added_p50_ms": cell.ttft_ms(50) - direct.ttft_ms(50) if gw else nan,
        "added_p99_ms": cell.ttft_ms(99) - direct.ttft_ms(99) if gw else nan,
        "errors": cell.errors,
        "gateway_cpu_ms_per_req": cell.cpu_ms_per_request("gateway") if gw else nan,
        "rps_pct_of_direct": 100 * cell.rps / direct.rps if gw and direct.rps else nan,
        "mock_cpu_ms_per_req": cell.cpu_ms_per_request("mock"),
        "client_cpu_ms_per_req": cell.cpu_ms_per_request("client"),
        "host_busy_pct": cell.host_busy_pct,
        "gateway_cpu_ms_per_s": cell.cpu["gateway"] * 1000 / window if window else nan,
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
        fmt(r["gateway_cpu_ms_per_req"], 2),
        fmt(r["rps_pct_of_direct"], 1),
        fmt(r["mock_cpu_ms_per_req"], 2),
        fmt(r["client_cpu_ms_per_req"], 2),
        fmt(r["host_busy_pct"], 0),
    ]


def verdict(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's performance target, read off the table (information, not a test)."""
    gw = {r["concurrency"]: r for r in rows if r["target"] == "gateway"}
    idle = [r["gateway_cpu_ms_per_s"] for r in rows if r["target"] == "direct"]
    out = [f"gateway CPU while idle (during the direct slices): {fmt(min(idle), 1)} ms/s"]
    if 16 in gw:
        v = gw[16]["added_p50_ms"]
        out.append(f"c=16 added TTFT p50 {fmt(v, 2)} ms (target <= {TARGET_C16_ADDED_P50_MS})")
    if 64 in gw:
        pct, cpu = gw[64]["rps_pct_of_direct"], gw[64]["gateway_cpu_ms_per_req"]
        out.append(f"c=64 gateway req/s {fmt(pct, 1)}% of direct (target >= {TARGET_C64_RPS_PCT})")
        out.append(f"c=64 gateway CPU {fmt(cpu, 2)} ms/req (target <= {TARGET_C64_CPU_MS})")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.proxy", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--duration", type=float, default=8.0, help="measured seconds per target and concurrency"
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="unmeasured seconds before each slice"
    )
    parser.add_argument(
        "--concurrency",
        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
        default=[1, 16, 64],
        help="comma-separated worker counts",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy the gateway afterwards (collapsed stacks)",
    )
    return parser.parse_args(argv)


def _json_value(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else value


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    with Stack(LOG_DIR, fresh_logs=True) as stack:
        mock, direct_url, gateway, gateway_url = start_stack(stack)
        clocks = {
            "gateway": CpuClock(gateway.pid),
            "mock": CpuClock(mock.pid),
            "client": CpuClock(os.getpid(), children=False),  # not the stack
        }
        urls = {"direct": direct_url, "gateway": gateway_url}
        cells = run_loop(measure(urls, clocks, args))
        if args.profile is not None:
            run_loop(profile(gateway_url, gateway.pid, args))
    direct = {c.concurrency: c for c in cells if c.target == "direct"}
    return [row(c, direct[c.concurrency]) for c in cells]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    print(f"# bench.proxy  {info['date']}")
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}; Python {info['python']}")
    print(
        "mock: 32 tokens, 20 ms TTFT, 5 ms between tokens; gateway: metrics + request logs on; "
        f"{args.duration:g} s measured per target and concurrency (order {'/'.join(ORDER)}, "
        f"{args.warmup:g} s warm-up per slice); logs in {LOG_DIR}",
        flush=True,
    )
    rows = interruptible(lambda: run(args), "the mock and the gateway are stopped")
    if rows is None:
        return INTERRUPTED
    print()
    print(table(rows))
    print()
    for line in verdict(rows):
        print(line)
    if args.profile is not None and args.profile.exists():
        print()
        print(top_frames(args.profile))
    if args.json is not None:
        clean = [{k: _json_value(v) for k, v in r.items()} for r in rows]
        args.json.write_text(json.dumps({"machine": info, "rows": clean}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
