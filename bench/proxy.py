"""``make bench``: what the gateway adds to a streamed chat request, against going
direct and against nginx, in the same run.

Starts one mock model server (32 tokens, 20 ms to first token, 5 ms between
tokens, no queueing up to 256 concurrent streams) and, in front of it, nginx
(Debian's package, ``bench/nginx.py``: ``proxy_buffering off``, HTTP/1.1
keep-alive to the upstream, one worker), the gateway (one worker) and the
gateway with ``GATEWAY_WORKERS=2``, each gateway with metrics and request
logging on (its log goes to a file). ``--before DIR`` adds the gateway of
another checkout (``git worktree add DIR <commit>``), put first on its
``PYTHONPATH``, so old and new code are measured in one run.

For each concurrency it runs a closed loop of streaming chat requests against
every target, in the order of the targets and then back (direct, nginx,
gateway, gateway-w2, gateway-w2, gateway, nginx, direct), each slice half the
duration after its own warm-up, so a drift in background load falls on every
target alike. CPU time (user + system) of the process under test (with its
children: nginx's worker, the gateway's workers), the mock and this client is
read at the start and end of every measured window.

    python -m bench.proxy [--duration S] [--warmup S] [--concurrency 1,16,64] [--json FILE]
                          [--profile FILE] [--profile-concurrency 64,16] [--before DIR]
                          [--no-workers] [--floors uvicorn,granian,aiohttp,protocol]

``--profile FILE`` then runs one more, unmeasured slice of the one-worker
gateway per ``--profile-concurrency`` with py-spy sampling it (collapsed
stacks in ``FILE`` with ``-c<N>`` before the suffix) and prints the functions
with the most samples, by self and by inclusive time.

Prints the machine, a markdown table, the ratios to nginx and the issue's
targets read off them. Added TTFT is a target's percentile minus the direct
percentile of the same run. Everything started is stopped at the end, also on
Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import nginx
from bench.loadgen import Cell, CpuClock, Meter, run_slice
from bench.proxy_report import idle, ratios, row, table, top_frames, verdict
from bench.runner import INTERRUPTED, interruptible, machine, run_loop
from deploy.local.harness import MOCK_MODEL, Stack
from deploy.local.procs import PYTHON, ROOT, Proc, free_port

MODEL = MOCK_MODEL  # "mock-llama-3-8b"
PATH = "/v1/chat/completions"
# The mock's settings (deploy.local.harness: MOCKLLM_<KEY>); it serves MODEL.
MOCK_SETTINGS = {"ttft_ms": 20, "inter_token_ms": 5, "output_tokens": 32, "max_concurrency": 256}
LOG_DIR = ROOT / "var" / "log" / "bench"
Targets = dict[str, tuple[Proc, str]]  # target -> (the process under test, the URL to POST)


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    """``os.environ`` with ``values`` while processes are made (``Proc`` copies it)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def start_targets(stack: Stack, tmp: Path, args: argparse.Namespace) -> tuple[Proc, Targets]:
    """The mock, then every proxy in front of it: (mock, targets). The direct target's
    process is the one-worker gateway, idle while the mock is asked directly."""
    mock, mock_url = stack.mock("mock-llm", **MOCK_SETTINGS)
    proxies: Targets = {"nginx": nginx.start(stack, mock_url, tmp)}
    settings: dict[str, Any] = {"log_requests": "true"}
    proxies["gateway"] = stack.gateway([mock_url], ready_path="/readyz", **settings)
    if args.before is not None:  # the old code first on the path (before the venv's .pth)
        with environ(PYTHONPATH=str(args.before.resolve() / "services" / "gateway")):
            proxies["gateway-before"] = stack.gateway(
                [mock_url], "gateway-before", ready_path="/readyz", **settings
            )
    for kind in args.floors:  # bench/proxy_floors.py: a bare relay on each server stack
        port = free_port()
        argv = [PYTHON, "-m", "bench.proxy_floors", kind, str(port), mock_url]
        proc = Proc(f"floor-{kind}", argv, log_dir=stack.log_dir)
        stack.start(proc, lambda port=port: port_open(port), timeout=30.0)  # type: ignore[misc]
        proxies[f"floor-{kind}"] = (proc, f"http://127.0.0.1:{port}")
    if args.workers:
        multi = {**settings, "workers": 2, "metrics_dir": tmp / "metrics-w2"}
        proxies["gateway-w2"] = stack.gateway(
            [mock_url], "gateway-w2", ready_path="/readyz", **multi
        )
    targets = {"direct": (proxies["gateway"][0], mock_url + PATH)}
    return mock, {**targets, **{t: (proc, url + PATH) for t, (proc, url) in proxies.items()}}


async def measure(targets: Targets, mock: Proc, args: argparse.Namespace) -> list[Cell]:
    client = CpuClock(os.getpid(), children=False)  # not the stack
    mock_clock = CpuClock(mock.pid)
    meters = {
        t: Meter({"gateway": CpuClock(proc.pid), "mock": mock_clock, "client": client})
        for t, (proc, _) in targets.items()
    }
    order = [*targets, *reversed(targets)]
    counter = itertools.count()
    cells: list[Cell] = []
    for conc in args.concurrency:
        by_target = {t: Cell(conc, t) for t in targets}
        for target in order:
            cell = by_target[target]
            print(f"  c={conc:<3} {target:<14} ...", end=" ", flush=True, file=sys.stderr)
            result = await run_slice(
                targets[target][1],
                MODEL,
                conc,
                warmup_s=args.warmup,
                duration_s=args.duration / 2,
                on_window_start=meters[target].start,
                on_window_end=meters[target].stop_into(cell),
                counter=counter,
            )
            cell.slices.append(result)
            print(f"{result.rps:.1f} req/s, {result.errors} errors", file=sys.stderr)
        cells += by_target.values()
    return cells


def profile_path(base: Path, conc: int) -> Path:
    return base.with_name(f"{base.stem}-c{conc}{base.suffix}")


async def profile(url: str, pid: int, args: argparse.Namespace) -> None:
    """An extra gateway slice per profiled concurrency, sampled by py-spy (not in the table)."""
    py_spy = shutil.which("py-spy", path=str(Path(PYTHON).parent)) or shutil.which("py-spy")
    if py_spy is None:
        print("py-spy is not installed (make setup)", file=sys.stderr)
        return
    seconds = max(1, round(args.duration))
    for conc in args.profile_concurrency:
        out = profile_path(args.profile, conc)
        argv = [py_spy, "record", "--pid", str(pid), "--rate", "250", "--nonblocking"]
        argv += ["--format", "raw", "--duration", str(seconds), "-o", str(out)]
        spies: list[subprocess.Popen[bytes]] = []

        def start_spy(argv: list[str] = argv, spies: list[subprocess.Popen[bytes]] = spies) -> None:
            spies.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL))

        print(f"  c={conc:<3} gateway under py-spy ({seconds} s) ...", file=sys.stderr)
        try:
            await run_slice(
                url,
                MODEL,
                conc,
                warmup_s=args.warmup,
                duration_s=seconds + 1.0,
                on_window_start=start_spy,
            )
        finally:
            for spy in spies:
                try:
                    spy.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    spy.kill()


def _concurrencies(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


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
        "--concurrency", type=_concurrencies, default=[1, 16, 64], help="comma-separated"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy the gateway afterwards (collapsed)"
    )
    parser.add_argument(
        "--profile-concurrency", type=_concurrencies, default=[64, 16], help="for --profile"
    )
    parser.add_argument(
        "--before", type=Path, default=None, help="a checkout whose gateway is measured too"
    )
    parser.add_argument(
        "--floors",
        type=lambda s: [k for k in s.split(",") if k],
        default=[],
        help="bare relays to measure too: uvicorn,granian,aiohttp,protocol (bench/proxy_floors.py)",
    )
    parser.add_argument(
        "--no-workers",
        dest="workers",
        action="store_false",
        help="leave out the gateway with GATEWAY_WORKERS=2",
    )
    return parser.parse_args(argv)


def _json_value(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else value


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    with (
        tempfile.TemporaryDirectory(prefix="llmgw-bench-") as tmp,
        Stack(LOG_DIR, fresh_logs=True) as stack,
    ):
        mock, targets = start_targets(stack, Path(tmp), args)
        cells = run_loop(measure(targets, mock, args))
        if args.profile is not None:
            proc, url = targets["gateway"]
            run_loop(profile(url, proc.pid, args))
    direct = {c.concurrency: c for c in cells if c.target == "direct"}
    return [row(c, direct[c.concurrency]) for c in cells]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    print(f"# bench.proxy  {info['date']}")
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}; Python {info['python']}")
    print(
        "mock: 32 tokens, 20 ms TTFT, 5 ms between tokens; nginx: proxy_buffering off, "
        "HTTP/1.1 keep-alive upstream, 1 worker; gateway: metrics + request logs on; "
        f"{args.duration:g} s measured per target and concurrency ({args.warmup:g} s "
        f"warm-up per half); logs in {LOG_DIR}",
        flush=True,
    )
    rows = interruptible(lambda: run(args), "the mock, nginx and the gateways are stopped")
    if rows is None:
        return INTERRUPTED
    gateways = sorted({r["target"] for r in rows if r["target"].startswith("gateway")})
    print()
    print(table(rows))
    print()
    print(ratios(rows, gateways))
    print()
    print(idle(rows))
    for target in gateways:
        for line in verdict(rows, target):
            print(line)
    if args.profile is not None:
        for conc in args.profile_concurrency:
            if profile_path(args.profile, conc).exists():
                print(f"\n## c={conc}")
                print(top_frames(profile_path(args.profile, conc)))
    if args.json is not None:
        clean = [{k: _json_value(v) for k, v in r.items()} for r in rows]
        args.json.write_text(json.dumps({"machine": info, "rows": clean}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
