"""A minimal response for bytes the gateway already has in full.

It is a Starlette ``Response`` (so FastAPI sends it as it is) that takes the
raw header list the proxy builds anyway and skips re-encoding it.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response


class RawResponse(Response):
    def __init__(
        self,
        body: bytes,
        status: int,
        content_type: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.body = body
        self.status_code = status
        self.background = None
        self.raw_headers = [
            (b"content-type", content_type.encode("latin-1")),
            (b"content-length", str(len(body)).encode()),
            *(headers or ()),
        ]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send({"type": "http.response.body", "body": self.body})
