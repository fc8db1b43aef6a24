"""The gateway's outermost ASGI app: the hot routes go straight to their handlers.

Profiling at 64 concurrent streams showed FastAPI's per-request machinery
(route matching, its middleware stack, three to four ``send`` wrappers that
every streamed chunk passes through) costing about a fifth of the gateway's
CPU and adding to time to first token. :class:`HotPaths` serves
``POST /v1/chat/completions`` and ``POST /v1/completions`` itself, with the
same handlers and the same error answers, and hands everything else (other
routes, the OpenAPI document, lifespan events) to the FastAPI app. The hot
routes stay declared in FastAPI too, so the OpenAPI document describes them.

Every error it answers goes through ``on_error`` (the app's ``ErrorAnswers``:
the OpenAI shape, and a refusal counted and logged). ``ops`` is the
operations app (``/metrics``, ``/admin/*``) when it has a port of its own
(``GATEWAY_METRICS_PORT``), else None.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response

from gateway.errors import HeadersTooLarge

Handler = Callable[[Request], Awaitable[Response]]
OnError = Callable[[Request, Exception], Response]


class HotPaths:
    def __init__(
        self,
        app: FastAPI,
        routes: dict[str, Handler],
        on_error: OnError,
        *,
        max_header_bytes: int,
    ) -> None:
        self.app = app
        self._routes = routes
        self._on_error = on_error
        self._max_header_bytes = max_header_bytes
        self.ops: HotPaths | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            if scope["type"] == "http" and _header_bytes(scope) > self._max_header_bytes:
                request = Request(scope, receive)
                error = HeadersTooLarge(
                    f"Request headers are over the limit of {self._max_header_bytes} bytes"
                )
                await self._on_error(request, error)(scope, receive, send)
                return
            if scope["type"] == "http" and scope["method"] == "POST":
                handler = self._routes.get(scope["path"])
                if handler is not None:
                    await self._serve(handler, scope, receive, send)
                    return
            await self.app(scope, receive, send)
        finally:
            # The request's admission permit (gate.py) ends with its response.
            permit = scope.get("state", {}).get("permit")
            if permit is not None:
                permit.release()

    async def _serve(self, handler: Handler, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        try:
            response = await handler(request)
        except Exception as exc:  # noqa: BLE001 - every error leaves in the OpenAI shape
            response = self._on_error(request, exc)
        await response(scope, receive, send)

    @property
    def router(self) -> Any:
        """The FastAPI app's router (its ``lifespan_context`` starts and stops the gateway)."""
        return self.app.router

    def openapi(self) -> dict[str, Any]:
        return self.app.openapi()


def _header_bytes(scope: Any) -> int:
    return sum(len(k) + len(v) + 4 for k, v in scope["headers"])
