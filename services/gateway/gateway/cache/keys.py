"""Where an answer may be reused: the namespace, the exact key, the text to embed.

The **namespace** is a hard wall: the tenant, the route, the model and every
request field except the prompt itself (and the stream flags, which change
only the transport) — for chat, the earlier turns of the conversation too. Two
requests share a namespace only if they would be generated under identical
conditions; nothing is ever looked up across namespaces.

The **exact key** hashes the canonical form of the whole request (keys sorted,
no whitespace, numbers as parsed), so key order and formatting do not matter.

The **text to embed** is the last user message (chat) or the prompt
(completions). A conversation whose last turn is not a user message, a list of
prompts, or token-id prompts are exact-only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.protocol.calls import AnyRequest, message_text
from gateway.protocol.schemas import ChatCompletionRequest, CompletionRequest

# Fields that do not change what is generated.
_TRANSPORT = {"stream", "stream_options", "user"}


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
    data = req.model_dump(mode="json", exclude=_TRANSPORT | {"messages"}, exclude_none=True)
    history = [m.model_dump(mode="json", exclude_none=True) for m in req.messages[:-1]]
    last = req.messages[-1]
    namespace = _namespace(tenant, "chat", req.model, {"params": data, "history": history})
    exact = _digest({"ns": namespace, "last": last.model_dump(mode="json", exclude_none=True)})
    text = message_text(last) if last.role == "user" else None
    return CacheKey(namespace, exact, text or None)


def completion_key(tenant: str, req: CompletionRequest) -> CacheKey:
    data = req.model_dump(mode="json", exclude=_TRANSPORT | {"prompt"}, exclude_none=True)
    namespace = _namespace(tenant, "completion", req.model, {"params": data})
    exact = _digest({"ns": namespace, "prompt": req.prompt})
    text = req.prompt if isinstance(req.prompt, str) else None
    return CacheKey(namespace, exact, text or None)


def cache_key(tenant: str, req: AnyRequest) -> CacheKey:
    if isinstance(req, ChatCompletionRequest):
        return chat_key(tenant, req)
    return completion_key(tenant, req)


def _namespace(tenant: str, route: str, model: str, conditions: dict[str, Any]) -> str:
    # Readable prefix for operators; the digest makes it exact.
    return f"{tenant}/{route}/{model}/{_digest(conditions)}"
