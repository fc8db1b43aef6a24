"""Errors the mock answers with, each carrying its HTTP status and OpenAI error type.

    MockError                   500  InternalServerError
    ├── BadRequest              400  BadRequestError  (bad JSON, wrong fields, bad X-Mock-* header)
    ├── ModelNotFound           404  NotFoundError
    ├── NotFound                404  NotFoundError  (a stored response this replica lacks)
    └── InjectedStatus          any  (the ``status:<code>`` fault)

The body is vLLM's / OpenAI's error object:
``{"error": {"message": ..., "type": ..., "param": null, "code": <status>}}``.
"""

from __future__ import annotations

from typing import Any, ClassVar

_TYPE_BY_STATUS = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    408: "RequestTimeoutError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


def error_type_for(status: int) -> str:
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    return "InternalServerError" if status >= 500 else "BadRequestError"


def error_body(message: str, status: int) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": error_type_for(status),
            "param": None,
            "code": status,
        }
    }


class MockError(Exception):
    status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def http_status(self) -> int:
        return self.status

    @property
    def headers(self) -> dict[str, str]:
        return {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.http_status)


class BadRequest(MockError):
    status = 400


class ModelNotFound(MockError):
    status = 404

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist.")


class NotFound(MockError):
    status = 404


class InjectedStatus(MockError):
    """The ``status:<code>`` fault: answer with that status and an error body."""

    def __init__(self, code: int) -> None:
        super().__init__(f"Injected fault: status {code}")
        self.code = code

    @property
    def http_status(self) -> int:
        return self.code

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"} if self.code == 429 else {}
