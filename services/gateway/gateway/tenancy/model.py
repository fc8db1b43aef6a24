"""A tenant and its limits, and the record that describes one in a file or in Redis.

A tenant's name goes into Redis keys (inside a ``{hash tag}``) and into every
cache namespace, so it is restricted to a safe alphabet.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Priority classes, highest first (gateway.flow.config says the same; tenancy sits below it).
PRIORITIES = ("interactive", "batch")
NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class Tenant:
    name: str
    requests_per_s: float | None  # None: unlimited
    burst: int | None  # None: one second's worth of requests_per_s
    max_streams: int | None  # concurrent requests (streams or not) in flight for the tenant
    admin: bool = False
    # Flow control (gateway/flow) and token budgets (tokens.py)
    weight: float = 1.0  # its share of a saturated pool against the other tenants of its class
    priority: str = "interactive"  # the highest class it may use, and its requests' default
    tokens_per_min: int | None = None  # prompt + completion tokens per minute; None: unlimited

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise ValueError(
                f"tenant name {self.name!r}: use 1-64 letters, digits, '.', '_' or '-'"
            )
        if self.requests_per_s is not None and not self.requests_per_s > 0:
            raise ValueError(f"tenant {self.name}: requests_per_s must be > 0 (or null)")
        if self.burst is not None and self.burst < 1:
            raise ValueError(f"tenant {self.name}: burst must be >= 1 (or null)")
        if self.max_streams is not None and self.max_streams < 1:
            raise ValueError(f"tenant {self.name}: max_streams must be >= 1 (or null)")
        if not self.weight > 0:
            raise ValueError(f"tenant {self.name}: weight must be > 0")
        if self.priority not in PRIORITIES:
            raise ValueError(f"tenant {self.name}: priority must be one of {PRIORITIES}")
        if self.tokens_per_min is not None and self.tokens_per_min < 1:
            raise ValueError(f"tenant {self.name}: tokens_per_min must be >= 1 (or null)")

    @property
    def limited(self) -> bool:
        """False when nothing about this tenant needs counting."""
        return self.requests_per_s is not None or self.max_streams is not None

    @property
    def effective_burst(self) -> int:
        """Requests allowed at once from a full bucket."""
        if self.burst is not None:
            return self.burst
        return max(1, math.ceil(self.requests_per_s or 1))


class TenantLimits(BaseModel):
    """A tenant's settings as stored (Redis ``tenants`` hash value, or a file entry)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    requests_per_s: float | None = Field(None, gt=0)
    burst: int | None = Field(None, ge=1)
    max_streams: int | None = Field(None, ge=1)
    admin: bool = False
    weight: float = Field(1.0, gt=0)
    priority: Literal["interactive", "batch"] = "interactive"
    tokens_per_min: int | None = Field(None, ge=1)

    def tenant(self, name: str) -> Tenant:
        return Tenant(
            name=name,
            requests_per_s=self.requests_per_s,
            burst=self.burst,
            max_streams=self.max_streams,
            admin=self.admin,
            weight=self.weight,
            priority=self.priority,
            tokens_per_min=self.tokens_per_min,
        )
