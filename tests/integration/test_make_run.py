"""`make run`'s stack (``python -m deploy.local.stack``) as a user drives it.

The whole stack starts on shifted ports (``--port-offset``) so it never meets
a user's own ``make run``. A model server killed under load is reported in one
line with its log tail while the gateway keeps answering every request from
the other replica; the embedder dying is reported the same way and the
gateway fails open; Ctrl-C (SIGINT) stops every process.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from deploy.local.procs import ROOT

pytestmark = pytest.mark.integration
MODEL = "mock-llama-3-8b"


def _offset() -> int:
    """A port offset under which all seven of the stack's ports are free (the
    shifted ports stay below the kernel's ephemeral range)."""
    ports = (8000, 8001, 8002, 50051, 50052, 9101, 9102)
    for offset in random.Random().sample(range(1000, 12000), 50):
        if all(_free(port + offset) for port in ports):
            return offset
    pytest.skip("no free block of ports")


def _free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Output:
    """The stack's stdout and stderr, read as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        for stream in (proc.stdout, proc.stderr):
            threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.append(line.rstrip())

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines if text in line]
            if found:
                return found[0]
            time.sleep(0.2)
        raise AssertionError(f"{text!r} not seen in:\n" + "\n".join(self.lines[-40:]))


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Output, int]]:
    offset = _offset()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deploy.local.stack",
            "--port-offset",
            str(offset),
            "--log-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    output = Output(proc)
    try:
        output.wait_for("The stack is up", timeout=300)
        yield proc, output, offset
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _listener(port: int) -> psutil.Process:
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    raise AssertionError(f"nothing listens on {port}")


async def _load(gateway: str, seconds: float, kill: psutil.Process) -> dict[str, int]:
    """Streams with unique prompts (never cached) from 6 clients; the replica is
    killed a second in. Counts requests that failed before streaming."""
    outcome = {"ok": 0, "failed_before_stream": 0, "cut": 0}
    stop = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() < stop:
            body = {
                "model": MODEL,
                "stream": True,
                "messages": [{"role": "user", "content": f"tell me {uuid.uuid4().hex}"}],
            }
            seen = False
            try:
                async with http.stream("POST", "/v1/chat/completions", json=body) as reply:
                    if reply.status_code != 200:
                        outcome["failed_before_stream"] += 1
                        continue
                    lines = [line async for line in reply.aiter_lines() if line]
                    seen = bool(lines)
                    outcome["ok" if lines and lines[-1] == "data: [DONE]" else "cut"] += 1
            except httpx.HTTPError:
                outcome["cut" if seen else "failed_before_stream"] += 1

    async def killer() -> None:
        await asyncio.sleep(1.0)
        kill.kill()

    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        await asyncio.gather(killer(), *(client(http) for _ in range(6)))
    return outcome


def test_a_dead_replica_is_reported_and_the_stack_keeps_serving(running) -> None:
    proc, output, offset = running
    gateway = f"http://127.0.0.1:{8000 + offset}"
    replica = _listener(8001 + offset)
    outcome = asyncio.run(_load(gateway, 6.0, replica))
    line = output.wait_for("mock-llm-1 exited", timeout=10)
    assert "code -9" in line and "routes around it" in line
    assert proc.poll() is None, "the stack stopped with one replica"
    assert outcome["failed_before_stream"] == 0, outcome
    assert outcome["ok"] > 20, outcome

    embedder = _listener(50051 + offset)
    embedder.kill()
    output.wait_for("embedder exited", timeout=10)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "still there?"}]}
    reply = httpx.post(f"{gateway}/v1/chat/completions", json=body, timeout=30)
    assert reply.status_code == 200, "the cache fails open without its embedder"
    assert proc.poll() is None

    children = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    assert proc.wait(timeout=60) == 0
    output.wait_for("stopping", timeout=5)
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"left running after Ctrl-C: {alive}"
