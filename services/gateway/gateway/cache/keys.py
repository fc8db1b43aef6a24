"""Where an answer may be reused: the namespace, the exact key, the text to embed.

The **namespace** is a hard wall: the tenant, the route, the model and every
request field except the prompt itself and the fields in ``IGNORED`` (each
with the reason it cannot change the answer) — for chat, the earlier turns of
the conversation too. Two requests share a namespace only if they would be
generated under identical conditions; nothing is ever looked up across
namespaces. Unknown fields (a backend's extensions) are part of it: a field
is ignored only once someone has said why it cannot matter.

Media carried in the request (``data:`` URLs of ``image_url``, ``video_url``,
``audio_url`` parts) are keyed by a hash of their bytes and media type, not by
their text. Media behind an http(s) URL never get here: the policy does not
cache such requests (``cache.policy``).

The **exact key** hashes the canonical form of the whole request (keys sorted,
no whitespace, numbers as parsed), so key order and formatting do not matter.

The **text to embed** is the last user message (chat) or the prompt
(completions). A conversation whose last turn is not a user message, a list of
prompts, or token-id prompts are exact-only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.protocol.calls import AnyRequest, message_text
from gateway.protocol.schemas import ChatCompletionRequest, ChatMessage, CompletionRequest

# The request fields that cannot change the answer, and why. Everything else,
# known or not, is part of the namespace. Kept on purpose: ``seed``, ``n``,
# ``best_of`` (what is generated), ``logprobs``, ``top_logprobs``, ``echo``
# (what is returned), vLLM's ``cache_salt`` (a tenant's wish to be kept apart).
IGNORED: dict[str, str] = {
    # transport: the stored answer is replayed as JSON or SSE, whichever is asked
    "stream": "JSON or SSE: a hit is replayed in either form",
    "stream_options": "the replay honours include_usage from the stored usage (vLLM's "
    "continuous_usage_stats gets it once, at the end)",
    # bookkeeping: who asks and what the provider records, not what is generated
    "user": "an end-user id for abuse monitoring (tenants are apart anyway)",
    "safety_identifier": "OpenAI's successor of user",
    "metadata": "tags OpenAI stores with the completion",
    "store": "whether OpenAI keeps the completion for evals and distillation",
    "request_id": "vLLM's id of the request, for its logs",
    "priority": "vLLM's scheduling priority: when it runs, not what it says",
    "service_tier": "OpenAI's latency and price tier: the same model, the same answer",
    "prompt_cache_key": "a routing hint for OpenAI's prompt cache",
    "prompt_cache_retention": "how long OpenAI keeps its prompt cache",
}


_EXCLUDED = set(IGNORED)
MEDIA_PARTS = ("image_url", "video_url", "audio_url")  # parts whose media is behind a URL


@dataclass(frozen=True, slots=True)
class CacheKey:
    namespace: str
    exact_key: str
    text: str | None  # None: exact-only


def _digest(value: Any) -> str:
    try:
        canonical = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson stops at 64-bit integers; JSON itself does not
        canonical = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:40]


def chat_key(tenant: str, req: ChatCompletionRequest) -> CacheKey:
    data = req.model_dump(mode="json", exclude=_EXCLUDED | {"messages"}, exclude_none=True)
    history = [_message(m) for m in req.messages[:-1]]
    last = req.messages[-1]
    namespace = _namespace(tenant, "chat", req.model, {"params": data, "history": history})
    exact = _digest({"ns": namespace, "last": _message(last)})
    text = message_text(last) if last.role == "user" else None
    return CacheKey(namespace, exact, text or None)


def completion_key(tenant: str, req: CompletionRequest) -> CacheKey:
    data = req.model_dump(mode="json", exclude=_EXCLUDED | {"prompt"}, exclude_none=True)
    namespace = _namespace(tenant, "completion", req.model, {"params": data})
    exact = _digest({"ns": namespace, "prompt": req.prompt})
    text = req.prompt if isinstance(req.prompt, str) else None
    return CacheKey(namespace, exact, text or None)


def _message(message: ChatMessage) -> dict[str, Any]:
    data = message.model_dump(mode="json", exclude_none=True)
    if isinstance(message.content, list):
        data["content"] = [_part(p) for p in message.content]
    return data


def _part(part: dict[str, Any]) -> dict[str, Any]:
    """A content part, its ``data:`` URL replaced by the hash of the bytes it holds."""
    kind = part.get("type")
    if not isinstance(kind, str) or kind not in MEDIA_PARTS:
        return part
    media = part.get(kind)
    url = media.get("url") if isinstance(media, dict) else media
    if not isinstance(url, str) or not url.startswith("data:"):
        return part
    digest = _data_url_digest(url)
    return {**part, kind: {**media, "url": digest} if isinstance(media, dict) else digest}


def _data_url_digest(url: str) -> str:
    """``data:<type>;sha256=<hex of the bytes>``: re-encoding the same bytes (line
    breaks in the base64, say) keys the same; a payload that does not decode is
    hashed as it is written."""
    header, _, payload = url[5:].partition(",")
    media_type = header.removesuffix(";base64")
    try:
        raw = (
            base64.b64decode("".join(payload.split()), validate=True)
            if header.endswith(";base64")
            else urllib.parse.unquote_to_bytes(payload)
        )
    except (binascii.Error, ValueError):
        raw = url.encode()
    return f"data:{media_type};sha256={hashlib.sha256(raw).hexdigest()}"


def cache_key(tenant: str, req: AnyRequest) -> CacheKey:
    if isinstance(req, ChatCompletionRequest):
        return chat_key(tenant, req)
    return completion_key(tenant, req)


def _namespace(tenant: str, route: str, model: str, conditions: dict[str, Any]) -> str:
    # Readable prefix for operators; the digest makes it exact.
    return f"{tenant}/{route}/{model}/{_digest(conditions)}"
