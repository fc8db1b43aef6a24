"""Whether a request may be answered from the cache, and whether its answer is kept.

By default only deterministic requests are cacheable: ``temperature`` 0, ``n``
1, no tools or function calls, no log probabilities (the OpenAI default
temperature is 1, so a request that does not set it is not cacheable). Per
request:

- ``Cache-Control: no-cache``: do not look up, but store the answer;
- ``Cache-Control: no-store``: neither look up nor store;
- ``X-LLMGW-Cache: force``: opt in for a request that is not deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.protocol.schemas import ChatCompletionRequest, CompletionRequest

OPT_IN_HEADER = "x-llmgw-cache"


@dataclass(frozen=True, slots=True)
class CacheDecision:
    lookup: bool
    store: bool

    @property
    def bypass(self) -> bool:
        return not (self.lookup or self.store)


NOT_CACHED = CacheDecision(lookup=False, store=False)  # answered with X-Cache: BYPASS


def deterministic(req: ChatCompletionRequest | CompletionRequest) -> bool:
    if req.temperature != 0 or req.n != 1 or req.logprobs:
        return False
    if isinstance(req, ChatCompletionRequest):
        return not (req.tools or req.functions or req.top_logprobs)
    return not (req.best_of and req.best_of > 1)


def decide(
    req: ChatCompletionRequest | CompletionRequest,
    cache_control: str,
    opt_in: str,
    *,
    deterministic_only: bool,
) -> CacheDecision:
    directives = {d.strip().lower() for d in cache_control.split(",")}
    if "no-store" in directives:
        return NOT_CACHED
    forced = opt_in.strip().lower() == "force"
    if deterministic_only and not forced and not deterministic(req):
        return NOT_CACHED
    return CacheDecision(lookup="no-cache" not in directives, store=True)
