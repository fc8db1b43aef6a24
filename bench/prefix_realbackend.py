"""Prefix affinity on the real model: ``python -m bench.prefix_realbackend``.

Two llama.cpp replicas (SmolLM2-135M-Instruct, one thread each on the 2
cores) with llama.cpp's prompt cache on (``--cache True``: a RAM cache of
evaluated prompts' states, and the last prompt's KV reused for a common
prefix), and two gateways in front of both: one with prefix affinity off
(today's Peak EWMA P2C), one with it on. Nothing else differs.

The workload is multi-turn chat: each conversation has its own long system
prompt (``--system-words`` words of generated text, about 1.3 tokens a word)
and grows by a short user turn and the model's answer per turn. Two users
run at once (one per replica's worth of capacity), each holding several
conversations and taking turns among them, so a replica's last prompt is
often someone else's. Each phase uses fresh system prompts (nothing cached
from an earlier phase can help), and phases alternate between the two
gateways, ``--rounds`` times each, so a drift in background load falls on
both.

Before the phases, the replicas' prefill rate is measured (a long and a short
unique prompt, direct) and given to the affinity gateway as
``GATEWAY_PREFILL_S_PER_TOKEN``; llama.cpp serves one request at a time, so
both gateways run with ``GATEWAY_DECODE_WEIGHT=1``, as ``make run --backend
llamacpp`` does.

TTFT is request sent -> first data event with content, through the gateway.
Turn 1 of a conversation is a miss on any router (its system prompt is new);
turns 2 and later are where affinity can help, so they are reported apart.

    python -m bench.prefix_realbackend [--rounds 2] [--conversations 6] [--turns 4]

Bounded: rounds x 2 x conversations x turns requests; everything started is
stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, field

import httpx

from bench.stats import percentile
from deploy.local import llamacpp
from deploy.local.harness import Stack
from deploy.local.procs import ROOT

LOG_DIR = ROOT / "var" / "log" / "bench-prefix-realbackend"
NO_EOS = {"0": -100, "2": -100}  # SmolLM2's <|endoftext|> and <|im_end|>
PATH = "/v1/chat/completions"
USERS = 2
WORDS = [
    "river",
    "stone",
    "lantern",
    "orchard",
    "meadow",
    "copper",
    "harbor",
    "violet",
    "thunder",
    "candle",
    "window",
    "garden",
    "silver",
    "marble",
    "forest",
    "winter",
    "summer",
    "autumn",
    "spring",
    "valley",
    "mountain",
    "engine",
    "pocket",
    "ribbon",
    "castle",
    "ladder",
    "mirror",
    "shadow",
    "velvet",
    "anchor",
    "compass",
    "feather",
    "island",
    "jungle",
    "kettle",
    "needle",
    "oyster",
    "pepper",
    "quartz",
    "saddle",
    "tunnel",
    "umbrella",
    "walnut",
    "yellow",
    "zephyr",
    "basket",
    "cobalt",
    "desert",
    "ember",
    "falcon",
    "glacier",
    "hollow",
    "ivory",
    "jasmine",
    "kernel",
    "lagoon",
    "mosaic",
    "nectar",
    "olive",
    "prairie",
]


@dataclass
class Result:
    router: str
    first_turn: list[float] = field(default_factory=list)
    later_turns: list[float] = field(default_factory=list)
    errors: int = 0


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def quantile(values: list[float], q: float) -> float:
    """Nearest rank, q in 0..1 (with few samples p90 is near the largest)."""
    return percentile(values, q * 100) if values else math.nan


async def ttft(
    client: httpx.AsyncClient, url: str, messages: list[dict], tokens: int
) -> tuple[float, str]:
    """Time to the first content token, and the whole answer (to extend the conversation)."""
    body = {
        "model": llamacpp.MODEL,
        "stream": True,
        "max_tokens": tokens,
        "temperature": 0,
        "logit_bias": NO_EOS,
        "messages": messages,
    }
    started = time.perf_counter()
    first, parts = math.nan, []
    async with client.stream("POST", url, json=body) as reply:
        if reply.status_code != 200:
            raise RuntimeError(f"status {reply.status_code}: {(await reply.aread())[:200]!r}")
        async for line in reply.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0].get("delta", {}).get("content")
            if delta:
                if math.isnan(first):
                    first = time.perf_counter() - started
                parts.append(delta)
    return first, "".join(parts)


async def user(
    url: str, convs: list[list[dict]], args: argparse.Namespace, rng: random.Random, out: Result
) -> None:
    timeout = httpx.Timeout(300.0, connect=5.0)
    async with httpx.AsyncClient(timeout=timeout) as client:
        for turn in range(args.turns):
            for messages in convs:
                messages.append({"role": "user", "content": f"Turn {turn + 1}: {text(rng, 30)}?"})
                try:
                    first, answer = await ttft(client, url, messages, args.tokens)
                except (httpx.HTTPError, RuntimeError) as exc:
                    print(f"    error: {exc}", file=sys.stderr)
                    out.errors += 1
                    messages.pop()
                    continue
                (out.first_turn if turn == 0 else out.later_turns).append(first)
                messages.append({"role": "assistant", "content": answer})


async def phase(url: str, router: str, seed: int, args: argparse.Namespace) -> Result:
    rng = random.Random(seed)
    out = Result(router)
    per_user = [
        [
            [{"role": "system", "content": text(rng, args.system_words)}]
            for _ in range(args.conversations // USERS)
        ]
        for _ in range(USERS)
    ]
    await asyncio.gather(
        *(user(url, convs, args, random.Random(seed + i), out) for i, convs in enumerate(per_user))
    )
    return out


async def prefill_rate(direct: str, args: argparse.Namespace) -> float:
    """Seconds per prompt token: TTFT of a long minus a short unique prompt, over their length."""
    rng = random.Random(7)
    timeout = httpx.Timeout(300.0, connect=5.0)
    async with httpx.AsyncClient(timeout=timeout) as client:
        times = {}
        for words in (20, args.system_words):
            samples = []
            for _ in range(3):
                msgs = [{"role": "user", "content": text(rng, words)}]
                samples.append((await ttft(client, direct + PATH, msgs, 1))[0])
            times[words] = statistics.median(samples)
    tokens = (args.system_words - 20) * 1.3
    return max(1e-6, (times[args.system_words] - times[20]) / tokens)


def start_replicas(stack: Stack, args: argparse.Namespace) -> list[str]:
    cache = ("--cache", "True", "--cache_type", "ram", "--cache_size", str(args.cache_mb << 20))
    return [
        stack.llamacpp(f"llamacpp-{i + 1}", threads=args.threads, extra_args=cache)[1]
        for i in range(2)
    ]


def start_gateway(stack: Stack, name: str, backends: list[str], **settings: str) -> str:
    _, url = stack.gateway(
        backends,
        name=name,
        model=llamacpp.MODEL,
        ready_path="/readyz",
        cache_enabled="false",
        decode_weight="1",
        **settings,
    )
    return url + PATH


def summary(results: list[Result], args: argparse.Namespace, rate: float) -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} cores (load average at the end {load}), llama-cpp-python "
        f"{llamacpp.VERSION}, SmolLM2-135M-Instruct Q4_1, 2 replicas x {args.threads} thread, "
        f"prompt cache on; measured prefill {rate * 1000:.2f} ms/token; "
        f"{args.conversations} conversations x {args.turns} turns per phase, system prompts of "
        f"{args.system_words} words, {args.tokens} tokens per answer, {USERS} users",
        "",
        "| router | phase | errors | turn 1 TTFT p50 ms | turns 2+ TTFT p50 ms | turns 2+ p90 ms "
        "| turns 2+ mean ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(results):
        later = r.later_turns
        lines.append(
            f"| {r.router} | {i // 2 + 1} | {r.errors} | {quantile(r.first_turn, 0.5) * 1000:.0f} "
            f"| {quantile(later, 0.5) * 1000:.0f} | {quantile(later, 0.9) * 1000:.0f} "
            f"| {statistics.fmean(later) * 1000 if later else math.nan:.0f} |"
        )
    pooled = {
        n: [x for r in results if r.router == n for x in r.later_turns] for n in ("P2C", "affinity")
    }
    p50 = {n: quantile(v, 0.5) for n, v in pooled.items()}
    mean = {n: statistics.fmean(v) if v else math.nan for n, v in pooled.items()}
    lines += [
        "",
        f"Turns 2+ pooled, affinity / P2C: TTFT p50 {p50['affinity'] / p50['P2C']:.2f}x, "
        f"mean {mean['affinity'] / mean['P2C']:.2f}x.",
    ]
    return "\n".join(lines)


async def run(args: argparse.Namespace, stack: Stack) -> str:
    replicas = start_replicas(stack, args)
    rate = await prefill_rate(replicas[0], args)
    print(f"  prefill {rate * 1000:.2f} ms/token", file=sys.stderr)
    common = {"prefill_s_per_token": f"{rate:.6f}", "prefix_cache_tokens": str(args.cache_tokens)}
    urls = {
        "P2C": start_gateway(stack, "gateway-p2c", replicas, **common, prefix_affinity="false"),
        "affinity": start_gateway(
            stack, "gateway-affinity", replicas, **common, prefix_affinity="true"
        ),
    }
    results = []
    for i in range(args.rounds):
        order = ("P2C", "affinity") if i % 2 == 0 else ("affinity", "P2C")
        for j, router in enumerate(order):
            print(f"  round {i + 1} {router} ...", file=sys.stderr, flush=True)
            results.append(await phase(urls[router], router, 1000 * (i + 1) + 100 * j, args))
    return summary(results, args, rate)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="phases per router")
    parser.add_argument("--conversations", type=int, default=6, help="per phase, shared by 2 users")
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--system-words", type=int, default=800, help="about 1.3 tokens a word")
    parser.add_argument("--tokens", type=int, default=8, help="tokens per answer")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads per replica")
    parser.add_argument("--cache-mb", type=int, default=1024, help="llama.cpp RAM prompt cache")
    parser.add_argument("--cache-tokens", type=int, default=16384, help="told to the router")
    args = parser.parse_args(argv)
    try:
        with Stack(LOG_DIR, fresh_logs=True) as stack:
            print(asyncio.run(run(args, stack)))
    except (RuntimeError, TimeoutError) as exc:
        print(f"prefix_realbackend: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
