"""One harness that starts a stack of real local processes: tests, benchmarks, ``make run``.

::

    from deploy.local.harness import Stack, chat_body, wait_for

    with Stack(log_dir) as stack:                      # log_dir=None: a new temporary one
        _, redis_url = stack.redis()                   # redis://127.0.0.1:<port>/0
        _, embedder = stack.embedder()                 # 127.0.0.1:<port> (gRPC)
        _, cache = stack.cache(redis_url)              # 127.0.0.1:<port> (gRPC)
        _, mock = stack.mock(ttft_ms=20)               # http://127.0.0.1:<port>, MOCKLLM_TTFT_MS=20
        _, llama = stack.llamacpp()                    # http://127.0.0.1:<port>, llamacpp.MODEL
        proc, gw = stack.gateway([mock], embedder_target=embedder, cache_target=cache)
        httpx.post(f"{gw}/v1/chat/completions", json=chat_body("hi", stream=True))
    # everything it started is stopped, in reverse order

``Stack(log_dir=None, *, announce=False, fresh_logs=False)``
    Starts exactly what it is asked, one process per call, and returns only once
    that process is ready, as ``(proc, address)``. Each listens on a free port of
    127.0.0.1 unless ``port=`` is given. Keyword arguments other than the named
    ones are the service's settings, ``PREFIX_KEY=str(value)`` in its
    environment (``stack.gateway(urls, ttft_timeout_s=0.5)`` sets
    ``GATEWAY_TTFT_TIMEOUT_S``). A process is named ``name`` (its log is
    ``<log_dir>/<name>.log``, ``Proc.tail()`` reads it), or ``name-<port>`` when
    the stack already has one of that name. ``announce`` prints ``starting
    <name> ...`` before each start; ``fresh_logs`` removes a log left by an
    earlier run instead of appending to it.

    - ``redis(name="redis")``: a throwaway redis-server (no persistence); ready
      when it answers PING (10 s).
    - ``mock(name="mock", **settings)``: a mock-llm replica serving
      ``MOCK_MODEL`` unless ``models=`` says otherwise; ready on ``/health`` (30 s).
    - ``llamacpp(name="llamacpp", *, threads=1, interrupt=False)``: a
      ``llama_cpp.server`` replica of ``llamacpp.MODEL`` (built and installed
      first on a machine without it); ready on ``/v1/models``
      (``llamacpp.READY_TIMEOUT_S``).
    - ``embedder(name="embedder", **settings)``: the real embedder; ready when
      gRPC health says SERVING (300 s: a first start exports the model).
    - ``cache(redis_url="", name="cache", **settings)``: the cache service, on
      the embedded store unless ``redis_url`` is given; SERVING (120 s).
    - ``gateway(backends, name="gateway", *, model=MOCK_MODEL,
      ready_path="/healthz", **settings)``: ``backends`` are URLs (each serving
      ``model``) or whole backend entries (dicts); ready on ``ready_path`` (30 s).
    - ``start(proc, ready, timeout)``: any other ``Proc``, recorded the same way.

    Every method also takes ``port=`` and ``timeout=`` (the readiness deadline).
    A process that exits or misses its deadline raises ``RuntimeError`` /
    ``TimeoutError`` with its last log lines; it is recorded all the same, so
    ``stop()`` stops it. ``procs`` lists what was started, in order; ``stop()``
    stops exactly those (SIGTERM, then SIGKILL), in reverse order, and can be
    called again. A ``Stack`` is a context manager that stops on exit.

``wait_for(check, what, timeout=20.0) -> float``
    Polls ``check()`` until it is true and returns when that was
    (``time.monotonic()``); raises ``TimeoutError`` naming ``what`` after ``timeout``.

``chat_body(content, *, model=MOCK_MODEL, **fields) -> dict``
    A chat completion request of one user message, plus ``fields``
    (``stream=True``, ``max_tokens=8``, ...).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from deploy.local import llamacpp
from deploy.local.procs import (
    PYTHON,
    Proc,
    free_port,
    grpc_serving,
    http_ok,
    redis_proc,
    redis_ready,
)

MOCK_MODEL = "mock-llama-3-8b"

# How long each kind of process may take to be ready.
HTTP_READY_S = 30.0  # mock-llm, gateway
REDIS_READY_S = 10.0
EMBEDDER_READY_S = 300.0  # a first start exports the ONNX int8 model
CACHE_READY_S = 120.0


def wait_for(check: Callable[[], object], what: str, timeout: float = 20.0) -> float:
    """Poll ``check()`` until it is true; return when it became true (monotonic clock)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def chat_body(content: str, *, model: str = MOCK_MODEL, **fields: object) -> dict[str, object]:
    """A chat completion request: one user message, plus ``fields``."""
    return {"model": model, "messages": [{"role": "user", "content": content}], **fields}


def _settings(prefix: str, settings: Mapping[str, object]) -> dict[str, str]:
    return {f"{prefix}_{key.upper()}": str(value) for key, value in settings.items()}


class Stack:
    """The processes one test, benchmark or ``make run`` started; see the module docstring."""

    def __init__(
        self, log_dir: Path | None = None, *, announce: bool = False, fresh_logs: bool = False
    ) -> None:
        self.log_dir = log_dir
        self.announce = announce
        self.fresh_logs = fresh_logs
        self.procs: list[Proc] = []

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every process this stack started, the last started first."""
        for proc in reversed(self.procs):
            proc.stop()

    def start(self, proc: Proc, ready: Callable[[], bool], timeout: float) -> Proc:
        """Start ``proc``, record it, and wait until ``ready()`` (or fail with its log tail)."""
        if self.announce:
            print(f"starting {proc.name} ...", flush=True)
        if self.fresh_logs:
            proc.log_path.unlink(missing_ok=True)
        self.procs.append(proc.start())
        return proc.wait_until(ready, timeout=timeout)

    def _name(self, name: str, port: int) -> str:
        taken = {proc.name for proc in self.procs}
        return f"{name}-{port}" if name in taken else name

    def _python(self, name: str, port: int, module: str, env: Mapping[str, str]) -> Proc:
        argv = [PYTHON, "-m", module]
        return Proc(self._name(name, port), argv, env=env, log_dir=self.log_dir)

    def redis(
        self, name: str = "redis", *, port: int | None = None, timeout: float = REDIS_READY_S
    ) -> tuple[Proc, str]:
        port = port or free_port()
        proc = redis_proc(port, name=self._name(name, port), log_dir=self.log_dir)
        self.start(proc, redis_ready(port), timeout)
        return proc, f"redis://127.0.0.1:{port}/0"

    def mock(
        self,
        name: str = "mock",
        *,
        port: int | None = None,
        timeout: float = HTTP_READY_S,
        **settings: object,
    ) -> tuple[Proc, str]:
        port = port or free_port()
        env = _settings("MOCKLLM", {"port": port, "models": MOCK_MODEL, **settings})
        url = f"http://127.0.0.1:{port}"
        proc = self._python(name, port, "mockllm", env)
        self.start(proc, lambda: http_ok(f"{url}/health"), timeout)
        return proc, url

    def llamacpp(
        self,
        name: str = "llamacpp",
        *,
        port: int | None = None,
        timeout: float = llamacpp.READY_TIMEOUT_S,
        threads: int = 1,
        interrupt: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> tuple[Proc, str]:
        """A llama.cpp replica; ``interrupt`` as in ``llamacpp.replica``; ``extra_args``
        are more ``llama_cpp.server`` options (its prompt cache, say)."""
        model = llamacpp.ensure_ready()  # builds and installs on a machine without it
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        proc = llamacpp.replica(
            self._name(name, port),
            port,
            self.log_dir,
            threads=threads,
            interrupt=interrupt,
            model=model,
        )
        proc.argv += list(extra_args)
        self.start(proc, llamacpp.ready(url), timeout)
        return proc, url

    def embedder(
        self,
        name: str = "embedder",
        *,
        port: int | None = None,
        timeout: float = EMBEDDER_READY_S,
        **settings: object,
    ) -> tuple[Proc, str]:
        port = port or free_port()
        env = _settings("EMBEDDER", {"port": port, "metrics_port": 0, **settings})
        proc = self._python(name, port, "embedder", env)
        self.start(proc, lambda: grpc_serving(port), timeout)
        return proc, f"127.0.0.1:{port}"

    def cache(
        self,
        redis_url: str = "",
        name: str = "cache",
        *,
        port: int | None = None,
        timeout: float = CACHE_READY_S,
        **settings: object,
    ) -> tuple[Proc, str]:
        port = port or free_port()
        env = _settings(
            "CACHE", {"port": port, "metrics_port": 0, "redis_url": redis_url, **settings}
        )
        proc = self._python(name, port, "semcache", env)
        self.start(proc, lambda: grpc_serving(port), timeout)
        return proc, f"127.0.0.1:{port}"

    def gateway(
        self,
        backends: Sequence[str | Mapping[str, Any]] = (),
        name: str = "gateway",
        *,
        model: str = MOCK_MODEL,
        port: int | None = None,
        ready_path: str = "/healthz",
        timeout: float = HTTP_READY_S,
        **settings: object,
    ) -> tuple[Proc, str]:
        port = port or free_port()
        entries = [
            {"url": b, "models": [model]} if isinstance(b, str) else dict(b) for b in backends
        ]
        env = _settings("GATEWAY", {"port": port, "backends": json.dumps(entries), **settings})
        url = f"http://127.0.0.1:{port}"
        proc = self._python(name, port, "gateway", env)
        self.start(proc, lambda: http_ok(f"{url}{ready_path}"), timeout)
        return proc, url
