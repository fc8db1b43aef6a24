"""Errors raised by the balancer. No HTTP here: the API layer translates them.

::

    BalanceError
    ├── UnknownModel   no endpoint declares the requested model
    └── NoEndpoint     the model is served, but no endpoint is left to try
                       (all excluded by earlier attempts of this request)
"""

from __future__ import annotations


class BalanceError(Exception):
    def __init__(self, model: str, message: str) -> None:
        super().__init__(message)
        self.model = model


class UnknownModel(BalanceError):
    def __init__(self, model: str) -> None:
        super().__init__(model, f"no endpoint serves model {model!r}")


class NoEndpoint(BalanceError):
    def __init__(self, model: str) -> None:
        super().__init__(model, f"no endpoint left to try for model {model!r}")
