"""What the real-backend tests send and read: request bodies that last as long as
asked, streams read whole or in the background, and what the gateway says about
itself (``/metrics``, ``/readyz``, its ``request_done`` log lines)."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import httpx

from deploy.local import llamacpp
from deploy.local.harness import Stack, chat_body, wait_for
from deploy.local.procs import Proc

MODEL = llamacpp.MODEL
NO_EOS = {"0": -100, "2": -100}  # SmolLM2's <|endoftext|> and <|im_end|>
STUCK_S = 5.0  # a first token this slow stands out of a busy machine's noise


def llama_gateway(stack: Stack, urls: list[str], **settings: Any) -> tuple[Proc, str]:
    """A gateway over llama.cpp replicas, which serve one request at a time and continue
    a broken stream on their completions route (``llamacpp.backend``)."""
    backends = [llamacpp.backend(url) for url in urls]
    return stack.gateway(backends, model=MODEL, decode_weight=1, **settings)


def chat(content: str, **extra: object) -> dict[str, object]:
    return chat_body(content, model=MODEL, **extra)


def long_chat(tokens: int) -> dict[str, object]:
    """A stream that runs exactly ``tokens`` tokens (not cacheable: temperature 1)."""
    return chat(
        f"Tell me a long story ({uuid.uuid4().hex[:6]})",
        stream=True,
        max_tokens=tokens,
        logit_bias=NO_EOS,
    )


# What the gateway exposes about itself --------------------------------------------------


def attempts(gw: str) -> Counter[tuple[str, str]]:
    """``gateway_upstream_attempts_total`` by (endpoint, outcome)."""
    counts: Counter[tuple[str, str]] = Counter()
    for line in httpx.get(f"{gw}/metrics").text.splitlines():
        if line.startswith("gateway_upstream_attempts_total{"):
            labels, value = line[line.index("{") + 1 :].split("} ")
            fields = dict(kv.split("=", 1) for kv in labels.split(","))
            counts[(fields["endpoint"].strip('"'), fields["outcome"].strip('"'))] = int(
                float(value)
            )
    return counts


def served(gw: str) -> Counter[str]:
    return Counter({ep: n for (ep, outcome), n in attempts(gw).items() if outcome == "success"})


def pending(gw: str) -> dict[str, int]:
    return {e["name"]: e["pending"] for e in httpx.get(f"{gw}/readyz").json()["endpoints"]}


def gateway_log(proc: Proc, request_id: str) -> dict[str, object]:
    """The gateway's ``request_done`` line of one request (written just after the last byte)."""
    found: list[dict[str, object]] = []

    def written() -> bool:
        for line in proc.log_path.read_text().splitlines():
            if request_id in line and '"request_done"' in line:
                found.append(json.loads(line))
        return bool(found)

    wait_for(written, f"the request_done line of {request_id}", timeout=5)
    return found[0]


# Streams ---------------------------------------------------------------------------------


def read_stream(url: str, body: dict[str, object], **kw: object) -> tuple[int, list[str]]:
    """Status and every non-blank line of a streamed answer."""
    with httpx.stream("POST", url, json=body, timeout=120, **kw) as reply:  # type: ignore[arg-type]
        return reply.status_code, [line for line in reply.iter_lines() if line]


def content(lines: list[str]) -> str:
    pieces = []
    for line in lines:
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices", []):
                pieces.append((choice.get("delta") or {}).get("content") or "")
    return "".join(pieces)


def short_stream(gw: str, n: int = 0, request_id: str = "") -> list[str]:
    status, lines = read_stream(
        f"{gw}/v1/chat/completions",
        chat(f"Say hi ({n})", stream=True, max_tokens=8),
        headers={"X-Request-ID": request_id or uuid.uuid4().hex},
    )
    assert status == 200, lines
    assert lines[-1] == "data: [DONE]", lines[-3:]
    return lines


def warm_up(gw: str) -> None:
    """Two requests at once: the second sees the first pending and takes the other replica."""
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda n: short_stream(gw, n), range(2)))
    assert len(served(gw)) == 2, served(gw)


class Background:
    """A stream read in a thread until it ends or ``stop()`` disconnects it."""

    started: ClassVar[list[Background]] = []

    def __init__(self, url: str, body: dict[str, object], request_id: str = "") -> None:
        Background.started.append(self)
        self._headers = {"X-Request-ID": request_id} if request_id else {}
        self.lines: list[str] = []
        self.first_data = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, body), daemon=True)
        self._thread.start()

    def _run(self, url: str, body: dict[str, object]) -> None:
        try:
            with httpx.stream("POST", url, json=body, headers=self._headers, timeout=120) as reply:
                for line in reply.iter_lines():
                    if line:
                        self.lines.append(line)
                    if line.startswith("data: {"):
                        self.first_data.set()
                    if self._stop.is_set():
                        return
        except httpx.HTTPError as exc:
            self.lines.append(f"exception: {exc!r}")

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(30)
        return self.lines

    def result(self, timeout: float = 120) -> list[str]:
        """Every line, once the stream has ended by itself."""
        self._thread.join(timeout)
        return self.lines
