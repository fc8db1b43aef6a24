"""Flow control: what happens to a request when its model pool is saturated.

::

    route ── FlowRequest (tenant, class, weight, estimated tokens, deadline)
      └ Proxy.open ── FlowControl.enter ── room ─────────────────────▶ Ticket ─▶ upstream
                          └ saturated (saturation.py) ─▶ wait (control.py)
                               FairQueue (drr.py): class, then deficit round robin
                               ├ a slot frees ────────────────────────▶ Ticket ─▶ upstream
                               └ full / deadline ─▶ 429 (tenant over share) | 503 (fleet full)
      Proxy.finish ── Ticket.release ─▶ the next waiting request

Sits between admission (``gate``, ``tenancy``) and routing (``balance``):
the slot it grants says the pool has room; which endpoint gets the request is
still the router's choice. Design, settings and measured figures:
docs/flow-control.md.
"""

from gateway.flow.config import BATCH, INTERACTIVE, PRIORITIES, FlowConfig
from gateway.flow.control import FlowControl, FlowRequest, Ticket
from gateway.flow.metrics import FlowMetrics
from gateway.flow.request import MAX_WAIT_HEADER, PRIORITY_HEADER, flow_request

__all__ = [
    "BATCH",
    "INTERACTIVE",
    "MAX_WAIT_HEADER",
    "PRIORITIES",
    "PRIORITY_HEADER",
    "FlowConfig",
    "FlowControl",
    "FlowMetrics",
    "FlowRequest",
    "Ticket",
    "flow_request",
]
