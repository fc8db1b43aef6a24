"""The endpoint pool's configuration (mapped from the settings in ``gateway.settings``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gateway.balance.affinity import AffinityConfig
from gateway.balance.breaker import BreakerConfig
from gateway.balance.engine import EngineConfig
from gateway.balance.hedge import HedgeConfig
from gateway.balance.retry_budget import RetryBudgetConfig

DECODE_WEIGHT = 0.1  # see docs/routing.md, "decode weight"


@dataclass(frozen=True)
class PoolConfig:
    tau_s: float = 10.0  # Peak EWMA decay time
    default_rtt_s: float = 0.5  # cost of an endpoint never heard from
    penalty_s: float = 5.0  # latency sample recorded for a failure
    # Weight in the load of a stream past its first token (one still waiting
    # for it weighs 1): low for continuous-batching servers, 1 for servers
    # that run one request at a time. See gateway.balance.endpoint.
    decode_weight: float = DECODE_WEIGHT
    ttft_failure_limit_s: float = 30.0  # a slower first token counts as a failure
    default_retry_after_s: float = 1.0  # a 429 without Retry-After
    max_retry_after_s: float = 60.0
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    retry_budget: RetryBudgetConfig = field(default_factory=RetryBudgetConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    affinity: AffinityConfig = field(default_factory=AffinityConfig)
    hedge: HedgeConfig = field(default_factory=HedgeConfig)


ContinuationMode = Literal["chat", "prompt", "off"]


@dataclass(frozen=True)
class ContinuationConfig:
    """How one backend continues a partial answer (``proxy.continuation``), per backend.

    - ``chat`` (the default): the chat route, the partial answer as a last
      ``assistant`` message with ``continue_final_message: true`` and
      ``add_generation_prompt: false``: vLLM's fields, which the mock honours;
      llama.cpp's own ``llama-server`` continues a last assistant message on
      its chat route as well (its "assistant prefill").
    - ``prompt``: the completions route, with the conversation rendered by this
      backend's chat template, given here as format strings: ``message`` for
      each message (``{role}``, ``{content}``), ``generation`` for the opening
      of the assistant's turn, ``system`` the template's own system message when
      the conversation has none. For a server whose chat route ignores those
      fields: llama-cpp-python's (``deploy/local/llamacpp.py`` gives its model's).
    - ``off``: never asked to continue (a stream it broke may still be
      continued elsewhere).

    A completions request is continued the same way on every mode but ``off``:
    the prompt with the text so far.
    """

    mode: ContinuationMode = "chat"
    message: str = ""
    generation: str = ""
    system: str = ""

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt the backend's chat route would build for ``messages`` (mode ``prompt``)."""
        if self.system and (not messages or messages[0].get("role") != "system"):
            messages = [{"role": "system", "content": self.system}, *messages]
        turns = (self.message.format(role=m["role"], content=m["content"]) for m in messages)
        return "".join(turns) + self.generation


CHAT_CONTINUATION = ContinuationConfig()  # the default: vLLM's fields on the chat route
