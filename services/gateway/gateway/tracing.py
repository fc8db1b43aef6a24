"""Optional OpenTelemetry tracing of the request path; off, and free, unless configured.

With ``GATEWAY_OTLP_ENDPOINT`` set (an OTLP/HTTP traces URL such as
``http://otel-collector:4318/v1/traces``), every completion request gets a
root span, with children for the cache lookup and the upstream call; the W3C
``traceparent`` goes to the model server in the request headers and to the
sidecars in gRPC metadata, so their spans (if they trace) join the same trace.
Without it, :class:`Tracing` holds no tracer and every call below is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()


def current_trace_headers() -> dict[str, str]:
    """``traceparent`` (and ``tracestate``) of the current span, for outgoing calls."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier


class Tracing:
    def __init__(self, tracer: Any | None, provider: Any | None = None) -> None:
        self._tracer = tracer
        self._provider = provider

    @classmethod
    def from_settings(cls, endpoint: str, sample_ratio: float) -> Tracing:
        if not endpoint:
            return cls(None)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        return cls.with_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)), sample_ratio
        )

    @classmethod
    def with_processor(cls, processor: Any, sample_ratio: float = 1.0) -> Tracing:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        provider = TracerProvider(
            resource=Resource.create({"service.name": "llmgw-gateway"}),
            sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
        )
        provider.add_span_processor(processor)
        return cls(provider.get_tracer("gateway"), provider)

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def start_request(
        self, name: str, headers: MutableMapping[str, str], attributes: dict[str, Any]
    ) -> tuple[Span | None, Context | None]:
        """The root span of a request (continuing the caller's trace if it sent one)."""
        if self._tracer is None:
            return None, None
        parent = _PROPAGATOR.extract(headers)
        span = self._tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        return span, set_span_in_context(span)

    @contextmanager
    def child(self, name: str, context: Context | None, **attributes: Any) -> Iterator[None]:
        if self._tracer is None or context is None:
            yield
            return
        with self._tracer.start_as_current_span(name, context=context, attributes=attributes):
            yield

    def start_child(self, name: str, context: Context | None, **attributes: Any) -> Span | None:
        if self._tracer is None or context is None:
            return None
        return self._tracer.start_span(
            name, context=context, kind=SpanKind.CLIENT, attributes=attributes
        )

    @staticmethod
    def inject(context: Context | None, carrier: MutableMapping[str, str]) -> None:
        if context is not None:
            _PROPAGATOR.inject(carrier, context=context)

    @staticmethod
    def end(span: Span | None, status: int, **attributes: Any) -> None:
        if span is None:
            return
        span.set_attribute("http.response.status_code", status)
        for key, value in attributes.items():
            span.set_attribute(key, value)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()
