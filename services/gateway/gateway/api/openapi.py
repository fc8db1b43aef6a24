"""What the OpenAPI document says about routes that read their bodies themselves.

The hot routes read and validate raw bytes (so they can forward them
unchanged), so FastAPI cannot infer their request bodies: :func:`body` declares
them from the pydantic models, and :func:`install` moves the models' nested
definitions into ``components/schemas`` so every ``$ref`` in the document
resolves. Response content types and error statuses are declared here too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

_REF = "#/components/schemas/{model}"

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed JSON or an invalid field (OpenAI error object)"},
    401: {"description": "Missing or unknown API key"},
    404: {"description": "Unknown model"},
    413: {"description": "Body over the size limit"},
    429: {"description": "The tenant's rate or stream limit (Retry-After)"},
    431: {"description": "Headers over the size limit"},
    502: {"description": "Every model server failed"},
    503: {"description": "No backend available, or the gateway is shedding load (Retry-After)"},
    504: {"description": "The model server did not answer in time"},
}

COMPLETION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The completion: JSON, or with `stream: true` server-sent events",
        "content": {"application/json": {}, "text/event-stream": {}},
    },
    **ERRORS,
}

ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: ERRORS[400],
    401: {"description": "No admin key, or a wrong one"},
    403: {"description": "A tenant key without admin rights, or admin disabled"},
    413: ERRORS[413],
    431: ERRORS[431],
    503: {"description": "No cache service is configured or reachable"},
}


def body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as the JSON request body."""
    schema = model.model_json_schema(ref_template=_REF)
    schema.pop("$defs", None)  # moved to components by install()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def install(app: FastAPI, models: Iterable[type[BaseModel]]) -> None:
    """Add the body models' definitions to the generated document's components."""
    models = list(models)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                definition = model.model_json_schema(ref_template=_REF)
                schemas.update(definition.pop("$defs", {}))
                schemas.setdefault(model.__name__, definition)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
