"""``make run``: the whole stack as local processes, no Docker.

Starts, in order, each waiting for the one before to be ready:
Redis (only with ``--redis local``), the embedder (gRPC :50051), the cache
service (gRPC :50052; the embedded store unless a Redis URL is given), two
mock-llm replicas (:8001, :8002) or two llama.cpp replicas of a real model
(``--backend llamacpp``), and the gateway (:8000). Prints curls that stream,
then waits; Ctrl-C (or SIGTERM) stops everything in reverse order. A process
that exits is reported (which, its code, its last log lines); only the
gateway's exit stops the stack, since the gateway routes around a dead model
server and fails open without its sidecars.

Logs of every process go to ``var/log/<name>.log``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from deploy.local import llamacpp
from deploy.local.harness import MOCK_MODEL, Stack
from deploy.local.procs import ROOT, Proc

LOG_DIR = ROOT / "var" / "log"


@dataclass(frozen=True)
class Ports:
    """Where each process listens; ``--port-offset`` shifts them all (a second
    stack next to the first, or a test's)."""

    gateway: int = 8000
    mocks: tuple[int, ...] = (8001, 8002)
    embedder: int = 50051
    cache: int = 50052
    redis: int = 6379
    embedder_metrics: int = 9101
    cache_metrics: int = 9102

    def shifted(self, offset: int) -> Ports:
        return Ports(
            gateway=self.gateway + offset,
            mocks=tuple(port + offset for port in self.mocks),
            embedder=self.embedder + offset,
            cache=self.cache + offset,
            redis=self.redis + offset,
            embedder_metrics=self.embedder_metrics + offset,
            cache_metrics=self.cache_metrics + offset,
        )


CURLS = """
The stack is up. Logs: {logs}

  # stream a chat completion token by token
  curl -N http://127.0.0.1:{port}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "{model}", "stream": true, "messages": [{{"role": "user", "content": "Say hello"}}]}}'

  # ask twice (temperature 0 is cacheable): the second answer says X-Cache: HIT-EXACT
  for i in 1 2; do curl -s -o /dev/null -D - http://127.0.0.1:{port}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "{model}", "temperature": 0, "messages": [{{"role": "user", "content": "What is a semantic cache?"}}]}}' | grep -i x-cache; done

  # a paraphrase the cache's verifier is sure of comes from the cache too: X-Cache: HIT-SEMANTIC
  for q in "How do I reset the password of my router?" "How can I reset my router's password?"; do
    curl -s -o /dev/null -D - http://127.0.0.1:{port}/v1/chat/completions -H 'Content-Type: application/json' \\
      -d "{{\\"model\\": \\"{model}\\", \\"temperature\\": 0, \\"messages\\": [{{\\"role\\": \\"user\\", \\"content\\": \\"$q\\"}}]}}" | grep -i x-cache; done

  curl http://127.0.0.1:{port}/v1/models        # what the backends serve
  curl http://127.0.0.1:{port}/metrics          # Prometheus metrics

Ctrl-C stops everything.
"""


def mock_backends(stack: Stack, ports: Ports) -> tuple[list[str | dict[str, object]], str]:
    urls: list[str | dict[str, object]] = [
        # A vLLM-like prefix cache and prefill cost, so prefix-aware routing shows.
        stack.mock(
            f"mock-llm-{i}", port=port, prefix_cache_blocks=16384, prefill_ms_per_token=0.05
        )[1]
        for i, port in enumerate(ports.mocks, start=1)
    ]
    return urls, MOCK_MODEL


def llamacpp_backends(stack: Stack, ports: Ports) -> tuple[list[str | dict[str, object]], str]:
    """One llama.cpp replica per port. The cores are shared out between the
    replicas: llama.cpp's threads spin while they wait, so more threads than
    cores make every replica slower. Each continues a broken stream on its
    completions route (``llamacpp.CONTINUATION``)."""
    threads = max(1, (os.cpu_count() or 2) // max(1, len(ports.mocks)))
    entries: list[str | dict[str, object]] = [
        llamacpp.backend(stack.llamacpp(f"llamacpp-{i}", port=port, threads=threads)[1])
        for i, port in enumerate(ports.mocks, start=1)
    ]
    return entries, llamacpp.MODEL


def run(args: argparse.Namespace, stack: Stack) -> None:
    ports: Ports = Ports().shifted(args.port_offset)
    redis_url = args.redis_url
    if args.redis == "local":
        _, redis_url = stack.redis(f"redis-{ports.redis}", port=ports.redis, timeout=15)
    _, embedder = stack.embedder(port=ports.embedder, metrics_port=ports.embedder_metrics)
    _, cache = stack.cache(redis_url or "", port=ports.cache, metrics_port=ports.cache_metrics)
    backends_of = llamacpp_backends if args.backend == "llamacpp" else mock_backends
    backends, model = backends_of(stack, ports)
    stack.gateway(
        backends,
        model=model,
        port=ports.gateway,
        ready_path="/readyz",
        timeout=60,
        embedder_target=embedder,
        cache_target=cache,
        # llama.cpp serves one request at a time: a decoding stream blocks the next.
        decode_weight="1" if args.backend == "llamacpp" else "0.1",
    )
    print(CURLS.format(port=ports.gateway, model=model, logs=args.log_dir), flush=True)


def report_exit(proc: Proc, lines: int = 10) -> str:
    """One line saying which process exited and what the rest of the stack does
    about it, then its last log lines.

    Only the gateway is essential: a model server that dies is routed around
    (the breaker ejects it), a sidecar that dies turns the cache off (the
    gateway fails open). So the stack keeps serving and says so.
    """
    code = proc.popen.returncode if proc.popen is not None else None
    if proc.name == "gateway":
        effect = "the stack cannot serve without it; stopping everything"
    elif proc.name in ("embedder", "cache"):
        effect = "the gateway keeps serving with the cache failing open (misses)"
    else:
        effect = "the gateway routes around it to the other replicas"
    tail = "\n".join(f"  | {line}" for line in proc.tail(lines).splitlines())
    return f"{proc.name} exited (code {code}): {effect}. Last lines of {proc.log_path}:\n{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("mock", "llamacpp"), default="mock")
    parser.add_argument(
        "--redis",
        choices=("embedded", "local"),
        default="embedded",
        help="embedded: in-process store; local: start redis-server :6379",
    )
    parser.add_argument("--redis-url", default="", help="use this Redis instead")
    parser.add_argument("--port-offset", type=int, default=0, help="add this to every port")
    parser.add_argument("--log-dir", type=Path, default=LOG_DIR, help="where the logs go")
    args = parser.parse_args(argv)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    stack = Stack(args.log_dir, announce=True)
    try:
        run(args, stack)
        reported: set[str] = set()
        while not stopping:
            for dead in [p for p in stack.procs if not p.alive() and p.name not in reported]:
                reported.add(dead.name)
                print(report_exit(dead), file=sys.stderr, flush=True)
                if dead.name == "gateway":
                    return 1
            time.sleep(0.5)
    except (RuntimeError, TimeoutError) as exc:
        print(f"could not start the stack: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping ...", flush=True)
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
