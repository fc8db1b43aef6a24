"""Whether a request may be answered from the cache, and whether its answer is kept.

By default only deterministic requests are cacheable: ``temperature`` 0, ``n``
1, no ``best_of`` above 1 (the OpenAI default temperature is 1, so a request
that does not set it is not cacheable). Tools, function calls and log
probabilities do not make a request less deterministic, and the cache keeps
and replays tool calls and log probabilities (``protocol.fidelity``; an answer
it could not replay whole is not stored), so they are cacheable like text.
Per request:

- ``Cache-Control: no-cache``: do not look up, but store the answer;
- ``Cache-Control: no-store``: neither look up nor store;
- ``X-LLMGW-Cache: force``: opt in for a request that is not deterministic.

**Media by reference are never cached**, forced or not: a request with an
``image_url`` (``video_url``, ``audio_url``) part whose URL is not a ``data:``
URL, a ``file`` part naming a ``file_id``, or a content part of a type the
gateway does not know. What the model sees is behind the reference, not in
the request: the same URL can serve another image tomorrow (a stale hit the
cache cannot detect), and fetching it to hash it would put a download on
every request's path. Media whose bytes are in the request are keyed by those
bytes (``cache.keys``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.cache.keys import MEDIA_PARTS
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


# Content parts that carry everything the model sees in the request itself.
_INLINE_PARTS = frozenset({"text", "input_text", "refusal", "input_audio", "image_embeds"})


def deterministic(req: ChatCompletionRequest | CompletionRequest) -> bool:
    if req.temperature != 0 or req.n != 1:
        return False
    if isinstance(req, ChatCompletionRequest):
        return True
    return not (req.best_of and req.best_of > 1)


def by_reference(req: ChatCompletionRequest | CompletionRequest) -> bool:
    """Whether the request names content it does not carry (see the module docstring)."""
    if not isinstance(req, ChatCompletionRequest):
        return False
    return any(
        isinstance(m.content, list) and any(_part_by_reference(p) for p in m.content)
        for m in req.messages
    )


def _part_by_reference(part: dict[str, Any]) -> bool:
    kind = part.get("type")
    if kind in _INLINE_PARTS:
        return False
    if kind in MEDIA_PARTS:
        media = part.get(kind)
        url = media.get("url") if isinstance(media, dict) else media
        return not (isinstance(url, str) and url.startswith("data:"))
    if kind == "file":
        file = part.get("file")
        return not (isinstance(file, dict) and file.get("file_data") and not file.get("file_id"))
    return True


def decide(
    req: ChatCompletionRequest | CompletionRequest,
    cache_control: str,
    opt_in: str,
    *,
    deterministic_only: bool,
) -> CacheDecision:
    directives = {d.strip().lower() for d in cache_control.split(",")}
    if "no-store" in directives or by_reference(req):
        return NOT_CACHED
    forced = opt_in.strip().lower() == "force"
    if deterministic_only and not forced and not deterministic(req):
        return NOT_CACHED
    return CacheDecision(lookup="no-cache" not in directives, store=True)
