"""From a request (body + X-Mock-* headers + fault) to a plan: tokens, timing, usage."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mockllm.continuation import Continuation, chat_continuation, completion_continuation
from mockllm.errors import BadRequest, ModelNotFound
from mockllm.faults import Fault, FaultKind, FaultSyntaxError, parse_fault
from mockllm.render import Renderer, Usage
from mockllm.responses import ResponsesRenderer
from mockllm.rich import RichRenderer, features
from mockllm.schema import AnyRequest, ChatCompletionRequest, CompletionRequest, Kind, parse_request
from mockllm.settings import Settings
from mockllm.tokens import estimate_tokens, generate_tokens

FAULT_HEADER = "X-Mock-Fault"
TTFT_HEADER = "X-Mock-TTFT-Ms"
ITL_HEADER = "X-Mock-Inter-Token-Ms"
TOKENS_HEADER = "X-Mock-Tokens"


@dataclass(frozen=True, slots=True)
class Plan:
    renderer: Renderer | ResponsesRenderer
    tokens: tuple[str, ...]
    finish_reason: str
    usage: Usage
    stream: bool
    include_usage: bool
    ttft_s: float
    itl_s: float
    fault: Fault | None
    prompt: str = ""  # the rendered prompt, for the prefix cache

    def token_due(self, index: int) -> float:
        """Seconds after admission at which token ``index`` is sent."""
        return self.ttft_s + index * self.itl_s


def resolve_fault(headers: Mapping[str, str], default: Fault | None) -> Fault | None:
    """The header's fault if present (an empty header means none), else the default."""
    raw = headers.get(FAULT_HEADER)
    if raw is None:
        return default
    try:
        return parse_fault(raw)
    except FaultSyntaxError as exc:
        raise BadRequest(f"{FAULT_HEADER}: {exc}") from exc


def make_plan(
    kind: Kind,
    body: bytes,
    headers: Mapping[str, str],
    settings: Settings,
    fault: Fault | None,
) -> Plan:
    request = parse_request(kind, body)
    if request.model not in settings.models:
        raise ModelNotFound(request.model)
    ttft_ms = _header_number(headers, TTFT_HEADER, settings.ttft_ms)
    itl_ms = _header_number(headers, ITL_HEADER, settings.inter_token_ms)
    natural = int(_header_number(headers, TOKENS_HEADER, settings.output_tokens, integer=True))
    if natural < 1:
        raise BadRequest(f"{TOKENS_HEADER} must be at least 1")
    limit = request.token_limit()
    prompt_key = request.prompt_key()
    token_ids = request.token_ids() if isinstance(request, CompletionRequest) else None
    prompt_tokens = token_ids if token_ids is not None else estimate_tokens(prompt_key)
    answer_key, done = prompt_key, 0
    going_on = _continuation(request, natural)
    if going_on is not None:  # the rest of the answer it would have given (continuation.py)
        answer_key, done = going_on.prompt_key, going_on.done
    left = natural - done
    count = left if limit is None else min(limit, left)
    if fault is not None and fault.kind is FaultKind.SLOW:
        ttft_ms += fault.arg
    wanted = features(kind, request, headers, settings.reasoning_tokens)
    stop = "tool_calls" if wanted.tool is not None else "stop"
    return Plan(
        renderer=RichRenderer(kind, request.model, wanted)
        if wanted.any
        else Renderer(kind, request.model),
        # A continuation of a whole answer has nothing left: one empty token ends it.
        tokens=generate_tokens(request.model, answer_key, natural)[done : done + count] or ("",),
        finish_reason="length" if limit is not None and limit <= left else stop,
        usage=Usage(prompt_tokens, count),
        stream=request.stream,
        include_usage=request.include_usage,
        ttft_s=ttft_ms / 1000.0,
        itl_s=itl_ms / 1000.0,
        fault=fault,
        prompt=prompt_key,
    )


def _continuation(request: AnyRequest, natural: int) -> Continuation | None:
    if isinstance(request, ChatCompletionRequest):
        asked = request.continues()
        if asked is None:
            return None
        return chat_continuation(request.model, asked[0], asked[1], natural)
    if isinstance(request.prompt, str):
        return completion_continuation(request.model, request.prompt, natural)
    return None


def _header_number(
    headers: Mapping[str, str], name: str, default: float, *, integer: bool = False
) -> float:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = float(int(raw)) if integer else float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a {'whole ' if integer else ''}number") from None
    if not value >= 0 or value == float("inf"):
        raise BadRequest(f"{name} must be a finite number >= 0")
    return value
