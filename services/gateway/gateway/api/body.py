"""Reading and validating request bodies, with OpenAI-shaped errors."""

from __future__ import annotations

import re
import uuid
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from gateway.errors import InvalidRequest, PayloadTooLarge

Model = TypeVar("Model", bound=BaseModel)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes before reading them."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse(model: type[Model], body: bytes) -> Model:
    """Validate JSON ``body`` as ``model``; one clear 400 on any problem."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidRequest(describe(exc)) from exc


def describe(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return "The request body is not valid JSON"
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"Invalid value for '{where}': {first['msg']}"


def request_id(request: Request) -> str:
    """The caller's ``X-Request-ID`` when it is sane, else a new one."""
    given = request.headers.get("x-request-id")
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex
