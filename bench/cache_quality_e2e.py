"""The semantic cache's matching quality end to end, through `make run`'s stack.

    python -m bench.cache_quality_e2e [--pairs 2000] [--concurrency 2] [--seed 5]

Starts the stack exactly as ``make run`` does (``python -m deploy.local.stack``
on shifted ports: the embedder, the cache service with its shipped pair
verifier, two mock replicas, the gateway), then, for every pair (a, b):
asks a (a miss: the gateway answers from a replica and stores the answer),
and once every a is stored, asks b and reads ``X-Cache``. ``HIT-SEMANTIC`` on
b means the cache served a's answer for b. Each pair gets its own namespace (a
system message naming the pair), so no pair can hit another's entry.

Pairs: a seeded sample of the held-out half of ``qqp_dev.jsonl`` (the split of
``bench.cache_quality``; nothing of it was trained or tuned on), the
hand-written near-miss and paraphrase sets (``bench/data/verifier``; the
``_b`` and ``_c`` sets are second and third pairs kept apart from all
tuning), and the issue's six near misses and its router paraphrase.

Requests are non-streamed, temperature 0. A lookup that ran out of its budget
is a miss for the client; the gateway's metrics tell them apart, and the
table reports them, since they are a latency matter, not the verifier's.
Bounded: 2 x pairs requests; the stack is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.qqp import load_pairs
from bench.stats import md_table
from bench.train_verifier_eval import DATA, hand_written
from bench.train_verifier_report import HAND_SETS
from deploy.local.procs import ROOT

MODEL = "mock-llama-3-8b"


@dataclass(frozen=True)
class Case:
    group: str  # "qqp", "near_miss", "paraphrases_b", "issue" ...
    a: str
    b: str
    same: bool  # the label: b may be answered with a's answer


def cases(pairs: int, seed: int) -> list[Case]:
    qqp = load_pairs()
    held = [i for i in range(len(qqp.label)) if qqp.held_out[i]]
    chosen = random.Random(seed).sample(held, min(pairs, len(held)))
    out = [Case("qqp", qqp.text_a[i], qqp.text_b[i], bool(qqp.label[i])) for i in chosen]
    for name, want in HAND_SETS:
        if (DATA / f"{name}.txt").exists():
            out += [Case(name, a, b, bool(want)) for _, a, b in hand_written(name)]
    for kind, a, b in hand_written("issue15"):
        out.append(Case(f"issue 15 {kind}", a, b, kind == "paraphrase"))
    return out


def body(index: int, text: str) -> dict[str, object]:
    return {
        "model": MODEL,
        "temperature": 0,
        "max_tokens": 16,
        "messages": [
            {"role": "system", "content": f"pair {index}"},  # its own namespace
            {"role": "user", "content": text},
        ],
    }


async def ask_all(
    http: httpx.AsyncClient, texts: Sequence[tuple[int, str]], concurrency: int
) -> dict[int, str]:
    """X-Cache of each request ("ERROR <status>" when it failed)."""
    out: dict[int, str] = {}
    queue = list(texts)

    async def worker() -> None:
        while queue:
            index, text = queue.pop()
            reply = await http.post("/v1/chat/completions", json=body(index, text))
            out[index] = (
                reply.headers.get("x-cache", "")
                if reply.status_code == 200
                else (f"ERROR {reply.status_code}")
            )

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


async def lookup_counts(http: httpx.AsyncClient) -> dict[str, float]:
    text = (await http.get("/metrics")).text
    pattern = re.compile(r'^gateway_cache_lookups_total\{outcome="([a-z_]+)"\} ([0-9.e+]+)$', re.M)
    return {k: float(v) for k, v in pattern.findall(text)}


async def measure(gateway: str, all_cases: list[Case], concurrency: int) -> dict[int, str]:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=gateway, timeout=60, limits=limits) as http:
        first = await ask_all(http, [(i, c.a) for i, c in enumerate(all_cases)], concurrency)
        failed = [v for v in first.values() if v.startswith("ERROR")]
        if failed:
            print(f"warning: {len(failed)} first questions failed: {failed[:3]}", file=sys.stderr)
        await asyncio.sleep(2.0)  # the stores are written after each answer, in the background
        before = await lookup_counts(http)
        second = await ask_all(http, [(i, c.b) for i, c in enumerate(all_cases)], concurrency)
        after = await lookup_counts(http)
    grown = {k: int(after.get(k, 0) - before.get(k, 0)) for k in after}
    print(f"\nGateway cache lookups while asking the second questions: {grown}")
    return second


def table(all_cases: list[Case], second: dict[int, str]) -> None:
    head = ["set", "pairs", "same meaning", "semantic hits", "right hits", "wrong hits"]
    out = []
    for group in dict.fromkeys(c.group for c in all_cases):
        rows = [(c, second.get(i, "")) for i, c in enumerate(all_cases) if c.group == group]
        same = sum(c.same for c, _ in rows)
        hits = [c for c, x in rows if x == "HIT-SEMANTIC"]
        right = sum(c.same for c in hits)
        precision = f"{right / len(hits):.3f}" if hits else "-"
        recall = f"{right / same:.3f}" if same else "-"
        out.append([group, len(rows), same, len(hits), right, len(hits) - right, precision, recall])
    print("\n" + md_table([*head, "precision", "recall"], out))
    wrong = [(c, x) for i, c in enumerate(all_cases) if not c.same
             and (x := second.get(i, "")) == "HIT-SEMANTIC" and c.group != "qqp"]  # fmt: skip
    for c, _ in wrong:
        print(f"  wrong hit ({c.group}): {c.a} || {c.b}")


def start_stack(offset: int, log_dir: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.local.stack", "--port-offset", str(offset),
         "--log-dir", str(log_dir)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    assert proc.stdout is not None
    for line in proc.stdout:
        if "The stack is up" in line:
            return proc
        if time.monotonic() > deadline or proc.poll() is not None:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit(f"the stack did not start; see {log_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=2000, help="held-out Quora pairs")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--port-offset", type=int, default=3100)
    args = parser.parse_args()
    all_cases = cases(args.pairs, args.seed)
    with tempfile.TemporaryDirectory(prefix="cache-e2e-") as logs:
        proc = start_stack(args.port_offset, Path(logs))
        try:
            started = time.monotonic()
            gateway = f"http://127.0.0.1:{8000 + args.port_offset}"
            second = asyncio.run(measure(gateway, all_cases, args.concurrency))
            took = time.monotonic() - started
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"\n{len(all_cases)} pairs through `make run`'s stack in {took:.0f} s, {when}, "
        f"{platform.machine()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    )
    table(all_cases, second)


if __name__ == "__main__":
    main()
