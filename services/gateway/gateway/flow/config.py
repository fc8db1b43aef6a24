"""Flow control's settings, with their defaults (``settings.py`` maps ``GATEWAY_FLOW_*`` here)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.tenancy.model import PRIORITIES  # dispatched in this order

INTERACTIVE, BATCH = PRIORITIES


@dataclass(frozen=True)
class FlowConfig:
    # Saturation signals (flow/saturation.py). With none of them set, nothing is ever
    # queued and a request does not even look at flow control (the default: a pool's
    # capacity is not something the gateway can guess).
    endpoint_concurrency: int = 0  # requests an endpoint runs at once (max_num_seqs); 0: unknown
    engine_waiting: float = 0.0  # an engine queue (num_requests_waiting) this deep: full; 0: off
    ttft_s: float = 0.0  # an endpoint whose TTFT cost is above this: full; 0: off
    # The queue (flow/control.py)
    reserve: int = 0  # free slots a tenant at or over its fair share may not take
    queue_per_tenant: int = 64  # requests of one tenant waiting in one pool; more: 429
    queue_max: int = 1024  # requests waiting in one pool; more: 503
    max_wait_s: float = 10.0  # a request's deadline in the queue, unless its header says less
    max_wait_limit_s: float = 60.0  # the longest deadline a request header may ask for
    quantum_tokens: int = 256  # deficit round robin: credit per round, times the tenant's weight
    default_max_tokens: int = 256  # a request without max_tokens is estimated at this many
    refresh_s: float = 0.05  # engine and TTFT signals re-read at most this often
    active_s: float = 10.0  # a tenant seen this recently counts in the fair shares

    @property
    def active(self) -> bool:
        """Whether any saturation signal is on (else flow control is skipped entirely)."""
        return self.endpoint_concurrency > 0 or self.engine_waiting > 0 or self.ttft_s > 0
