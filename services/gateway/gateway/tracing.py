"""Optional OpenTelemetry tracing of the request path; off, and free, unless configured.

Tracing is on when an OTLP/HTTP endpoint is known: ``GATEWAY_OTLP_ENDPOINT``
(a traces URL such as ``http://otel-collector:4318/v1/traces``), else the
standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (as is) or
``OTEL_EXPORTER_OTLP_ENDPOINT`` (``/v1/traces`` appended); ``OTEL_SDK_DISABLED=true``
or ``OTEL_TRACES_EXPORTER=none`` keep it off. ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES`` name the service (``llmgw-gateway`` only when
they do not); ``OTEL_TRACES_SAMPLER``, when set, replaces the gateway's ratio.

Every completion request gets a server span (``POST /v1/chat/completions``,
HTTP semantic conventions), with children for the cache lookup and the call
to the model servers. That one follows OpenTelemetry's GenAI conventions for
an inference client span: named ``{gen_ai.operation.name} {gen_ai.request.model}``
(``chat llama``, ``text_completion llama``), with the request's parameters,
the usage, the server that answered; it covers every attempt (failover,
hedges), as the conventions ask of retries. The gateway's own attributes are
``llmgw.*``; for one release they are also written under their old names
(``LEGACY_NAMES``). The W3C ``traceparent`` goes to the model server in the
request headers and to the sidecars in gRPC metadata, so their spans (vLLM's
follow the same conventions) join the same trace. Without an endpoint,
:class:`Tracing` holds no tracer and every call below is a no-op.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import structlog
from opentelemetry.context import Context, create_key, get_value, set_value
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = structlog.get_logger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
_INFERENCE = create_key("llmgw.inference")  # the request's inference span, described

DEFAULT_SERVICE_NAME = "llmgw-gateway"
# The API the model servers speak: the conventions name an OpenAI-compatible
# service "openai" (server.address and the models tell which one it is).
PROVIDER = "openai"
# gen_ai.operation.name per call kind (``protocol.calls.Kind`` values).
OPERATIONS = {"chat": "chat", "completion": "text_completion", "responses": "chat"}
# Until the next release, the old attribute names are written too (README).
LEGACY_NAMES = True
_LEGACY_REQUEST = {"gen_ai.request.model": "llm.model", "gen_ai.request.stream": "llm.stream"}
_LEGACY_INFERENCE = {"gen_ai.request.model": "model"}


def current_trace_headers() -> dict[str, str]:
    """``traceparent`` (and ``tracestate``) of the current span, for outgoing calls."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier


def traces_endpoint(setting: str, environ: Mapping[str, str]) -> str:
    """Where spans go: the gateway's setting, else the standard ``OTEL_*`` variables;
    empty: tracing off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ""
    if setting:
        return setting
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return ""
    if url := environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        return url
    if base := environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        return f"{base.removesuffix('/')}/v1/traces"
    return ""


def operation(kind: str) -> str:
    """``gen_ai.operation.name`` of a call kind."""
    return OPERATIONS.get(kind, kind)


def _own(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The gateway's own attributes as ``llmgw.<name>`` (and ``<name>``, for now)."""
    out = {f"llmgw.{key}": value for key, value in attributes.items()}
    if LEGACY_NAMES:
        out.update(attributes)
    return out


def _legacy(attributes: dict[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    if LEGACY_NAMES:
        attributes.update({old: attributes[new] for new, old in names.items() if new in attributes})
    return attributes


class Tracing:
    def __init__(self, tracer: Any | None, provider: Any | None = None) -> None:
        self._tracer = tracer
        self._provider = provider

    @classmethod
    def from_settings(
        cls, endpoint: str, sample_ratio: float, environ: Mapping[str, str] | None = None
    ) -> Tracing:
        """Tracing as configured (``environ``: the process's by default)."""
        environ = os.environ if environ is None else environ
        url = traces_endpoint(endpoint, environ)
        if not url:
            return cls(None)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", ""
        )
        if protocol and protocol != "http/protobuf":
            log.warning("otlp_protocol_unsupported", protocol=protocol, used="http/protobuf")
        return cls.with_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=url)),
            sample_ratio,
            sampler_from_env="OTEL_TRACES_SAMPLER" in environ,
        )

    @classmethod
    def with_processor(
        cls, processor: Any, sample_ratio: float = 1.0, *, sampler_from_env: bool = False
    ) -> Tracing:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES first; the default only without them.
        resource = Resource.create()
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
        sampler = None if sampler_from_env else ParentBased(TraceIdRatioBased(sample_ratio))
        provider = TracerProvider(resource=resource, sampler=sampler)
        provider.add_span_processor(processor)
        return cls(provider.get_tracer("gateway"), provider)

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def start_request(
        self,
        route: str,
        headers: MutableMapping[str, str],
        *,
        kind: str,
        model: str,
        stream: bool,
        request: Mapping[str, Any] | None = None,
        **own: Any,
    ) -> tuple[Span | None, Context | None]:
        """The server span of a request (continuing the caller's trace if it sent one).

        ``request`` holds the GenAI request parameters (``gen_ai.request.*``) for the
        inference span :meth:`start_inference` starts from the returned context;
        ``own`` are the gateway's attributes (``llmgw.*``).
        """
        if self._tracer is None:
            return None, None
        op = operation(kind)
        attributes = {
            "http.request.method": "POST",
            "http.route": route,
            "gen_ai.operation.name": op,
            "gen_ai.request.model": model,
            "gen_ai.request.stream": stream,
            **_own(own),
        }
        parent = _PROPAGATOR.extract(headers)
        span = self._tracer.start_span(
            f"POST {route}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes=_legacy(attributes, _LEGACY_REQUEST),
        )
        inference = {
            "gen_ai.operation.name": op,
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.request.model": model,
            "gen_ai.request.stream": stream,
            **{k: v for k, v in (request or {}).items() if v is not None},
        }
        return span, set_value(_INFERENCE, inference, set_span_in_context(span))

    def start_inference(self, context: Context | None) -> Span | None:
        """The client span of the call to the model servers, every attempt included:
        ``{operation} {model}``, as :meth:`start_request` described it."""
        if self._tracer is None or context is None:
            return None
        described = get_value(_INFERENCE, context)
        attributes = dict(described) if isinstance(described, dict) else {}
        name = f"{attributes.get('gen_ai.operation.name', 'chat')} " + str(
            attributes.get("gen_ai.request.model", "")
        )
        return self._tracer.start_span(
            name.strip(),
            context=context,
            kind=SpanKind.CLIENT,
            attributes=_legacy(attributes, _LEGACY_INFERENCE),
        )

    @contextmanager
    def child(self, name: str, context: Context | None, **attributes: Any) -> Iterator[None]:
        if self._tracer is None or context is None:
            yield
            return
        with self._tracer.start_as_current_span(name, context=context, attributes=attributes):
            yield

    @staticmethod
    def inject(context: Context | None, carrier: MutableMapping[str, str]) -> None:
        if context is not None:
            _PROPAGATOR.inject(carrier, context=context)

    @staticmethod
    def server(span: Span | None, url: str, server_hostname: str = "") -> None:
        """``server.*`` of the endpoint that answered (its host name when its URL holds
        an address that stands for one; the address is then ``network.peer.address``)."""
        if span is None or not span.is_recording():
            return
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        span.set_attribute("server.address", server_hostname or parts.hostname or "")
        span.set_attribute("server.port", port)
        if server_hostname and parts.hostname:
            span.set_attribute("network.peer.address", parts.hostname)

    @staticmethod
    def end(span: Span | None, status: int, **own: Any) -> None:
        """End a span with the HTTP status and the gateway's attributes (``llmgw.*``)."""
        if span is None:
            return
        span.set_attribute("http.response.status_code", status)
        for key, value in _own(own).items():
            span.set_attribute(key, value)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    @staticmethod
    def end_inference(
        span: Span | None,
        status: int,
        outcome: str,
        *,
        tokens_in: int = 0,
        tokens_out: int = 0,
        answer: bytes | None = None,
        sent_at: float = 0.0,
        first_chunk_at: float = 0.0,
        **own: Any,
    ) -> None:
        """End the inference span: usage, what the answer says of itself when it was
        kept whole (model, id, finish reasons: parsed only for a recorded span), the
        time to the first chunk of a stream (``first_chunk_at`` - ``sent_at``,
        ``time.perf_counter`` values; 0: not a stream or no chunk), ``error.type``
        (the outcome) unless it succeeded, and an error status unless it was cancelled."""
        if span is None:
            return
        if span.is_recording():
            first_chunk_s = first_chunk_at - sent_at if sent_at and first_chunk_at else 0.0
            for key, value in _response(tokens_in, tokens_out, answer, first_chunk_s).items():
                span.set_attribute(key, value)
            if outcome not in ("success", "local"):
                span.set_attribute("error.type", outcome)
                if outcome != "cancelled":  # a stream cut after its 200 failed too
                    span.set_status(Status(StatusCode.ERROR))
        Tracing.end(span, status, **own)

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()


def _response(
    tokens_in: int, tokens_out: int, answer: bytes | None, first_chunk_s: float
) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    if tokens_in:
        attributes["gen_ai.usage.input_tokens"] = tokens_in
    if tokens_out:
        attributes["gen_ai.usage.output_tokens"] = tokens_out
    if first_chunk_s > 0:
        attributes["gen_ai.response.time_to_first_chunk"] = first_chunk_s
    if answer:
        try:
            body = json.loads(answer)
        except ValueError:
            return attributes
        if not isinstance(body, dict):
            return attributes
        if isinstance(body.get("model"), str) and body["model"]:
            attributes["gen_ai.response.model"] = body["model"]
        if isinstance(body.get("id"), str) and body["id"]:
            attributes["gen_ai.response.id"] = body["id"]
        choices = body.get("choices")
        if isinstance(choices, list):
            reasons = [c.get("finish_reason") for c in choices if isinstance(c, dict)]
            if reasons and all(isinstance(r, str) for r in reasons):
                attributes["gen_ai.response.finish_reasons"] = reasons
    return attributes
