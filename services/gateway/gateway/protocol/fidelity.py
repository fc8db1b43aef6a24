"""Which answers the cache can give back as they were: the fields a replay knows.

A stored answer is replayed as JSON (the stored object itself, with a fresh
``id`` and ``created``) or as SSE chunks rebuilt from it
(``protocol.replay``). JSON gives back any field; SSE only the fields below,
so an answer carrying anything else is not stored (the cache counts it as
``gateway_cache_stores_total{outcome="unreplayable"}``): a lossy hit would be
worse than a miss. A field whose value is null or empty says nothing and is
no obstacle (OpenAI's ``"annotations": []``, vLLM's ``"stop_reason": null``).
``MEASUREMENTS`` (llama.cpp's ``timings``) are dropped from what is stored.

Log probabilities are replayed one token per chunk, each chunk carrying its
token's text, so they are replayable only when the tokens spell the text
exactly: chat entries by their ``bytes`` (or ``token`` when an entry has no
bytes), completions by ``tokens``. They do not when the tokens also cover
what a parser took out of the text (vLLM's reasoning and tool-call parsers)
or when a token is part of a character (vLLM sends "\\ufffd" for those): the
chunk a token came in is then unknowable, and the answer is not stored.
"""

from __future__ import annotations

import codecs
from typing import Any

from gateway.protocol.calls import Kind

# Measurements of the run that produced an answer, not part of it: not stored (a hit
# ran nothing). llama.cpp's server sends its prompt and generation speed as ``timings``.
MEASUREMENTS = frozenset({"timings"})
# Why a choice stopped, on its last chunk: vLLM's stop string or token id, SGLang's.
ENDING_FIELDS = ("stop_reason", "matched_stop")

TOP_FIELDS = frozenset(
    {"id", "object", "created", "model", "choices", "usage", "system_fingerprint", "service_tier"}
)
CHAT_CHOICE_FIELDS = frozenset({"index", "message", "logprobs", "finish_reason", *ENDING_FIELDS})
TEXT_CHOICE_FIELDS = frozenset({"index", "text", "logprobs", "finish_reason", *ENDING_FIELDS})
MESSAGE_FIELDS = frozenset(
    {"role", "content", "refusal", "reasoning_content", "reasoning", "tool_calls", "function_call"}
)
TOOL_CALL_FIELDS = frozenset({"id", "type", "function"})
FUNCTION_FIELDS = frozenset({"name", "arguments"})
CHAT_LOGPROB_FIELDS = ("content", "refusal")
TEXT_LOGPROB_FIELDS = ("tokens", "token_logprobs", "top_logprobs", "text_offset")


def unreplayable(answer: dict[str, Any]) -> str | None:
    """The first field of a complete answer that a replay could not give back as it
    was (a dotted path, for the log), or None when the whole answer can be."""
    kind = Kind.of_object(answer.get("object"))
    found = _unknown(answer, TOP_FIELDS, "")
    for i, choice in enumerate(answer.get("choices") or ()):
        found = found or _choice(kind, choice, f"choices.{i}")
    return found


def _unknown(data: dict[str, Any], known: frozenset[str], path: str) -> str | None:
    for key, value in data.items():
        if key not in known and value is not None and value != [] and value != {}:
            return f"{path}{key}"
    return None


def _choice(kind: Kind, choice: dict[str, Any], path: str) -> str | None:
    if not isinstance(choice.get("index", 0), int):
        return path + ".index"
    if kind is Kind.COMPLETION:
        found = _unknown(choice, TEXT_CHOICE_FIELDS, path + ".")
        if found is None and not isinstance(choice.get("text"), str):
            found = path + ".text"
        if found is None and text_pieces(choice.get("logprobs"), choice.get("text")) is None:
            found = path + ".logprobs"
        return found
    message = choice.get("message")
    if not isinstance(message, dict):
        return path + ".message"
    found = _unknown(choice, CHAT_CHOICE_FIELDS, path + ".") or _message(message, path + ".message")
    if found is None:
        found = _chat_logprobs(choice.get("logprobs"), message, path + ".logprobs")
    return found


def _message(message: dict[str, Any], path: str) -> str | None:
    found = _unknown(message, MESSAGE_FIELDS, path + ".")
    for field in ("role", "content", "refusal", "reasoning_content", "reasoning"):
        value = message.get(field)
        if value is not None and not isinstance(value, str):
            found = found or f"{path}.{field}"
    calls = message.get("tool_calls") or []
    if found is not None or not isinstance(calls, list):
        return found or path + ".tool_calls"
    for i, call in enumerate(calls):
        found = found or _call(call, f"{path}.tool_calls.{i}", TOOL_CALL_FIELDS)
    legacy = message.get("function_call")
    if found is None and legacy is not None:
        found = _function(legacy, path + ".function_call")
    return found


def _call(call: object, path: str, known: frozenset[str]) -> str | None:
    if not isinstance(call, dict) or call.get("type", "function") != "function":
        return path
    return _unknown(call, known, path + ".") or _function(call.get("function"), path + ".function")


def _function(function: object, path: str) -> str | None:
    if not isinstance(function, dict):
        return path
    if not all(isinstance(function.get(k, ""), str) for k in FUNCTION_FIELDS):
        return path
    return _unknown(function, FUNCTION_FIELDS, path + ".")


def _chat_logprobs(logprobs: object, message: dict[str, Any], path: str) -> str | None:
    if logprobs is None:
        return None
    if not isinstance(logprobs, dict):
        return path
    found = _unknown(logprobs, frozenset(CHAT_LOGPROB_FIELDS), path + ".")
    for field in CHAT_LOGPROB_FIELDS:
        if found is None and chat_pieces(logprobs.get(field), message.get(field)) is None:
            found = f"{path}.{field}"
    return found


def chat_pieces(entries: object, text: object) -> list[str] | None:
    """The text each chat logprob entry stands for, or None when the entries do not
    spell ``text`` exactly (no entries: no pieces)."""
    if not entries:
        return []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        return None
    text = text or ""
    if all(_byte_list(e.get("bytes")) for e in entries):
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            pieces = [decoder.decode(bytes(e["bytes"])) for e in entries]
            tail = decoder.decode(b"", final=True)
        except (UnicodeDecodeError, ValueError):
            return None
    else:
        pieces, tail = [e.get("token") for e in entries], ""
    if tail or not all(isinstance(p, str) for p in pieces) or "".join(pieces) != text:
        return None
    return pieces


def _byte_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(b, int) for b in value)


def text_pieces(logprobs: object, text: object) -> list[str] | None:
    """The completion tokens when their logprobs lists agree and spell ``text``
    exactly (no logprobs: no pieces), else None."""
    if logprobs is None:
        return []
    if not isinstance(logprobs, dict) or _unknown(logprobs, frozenset(TEXT_LOGPROB_FIELDS), ""):
        return None
    tokens = logprobs.get("tokens") or []
    lists = [logprobs.get(f) for f in TEXT_LOGPROB_FIELDS]
    if not all(v is None or (isinstance(v, list) and len(v) == len(tokens)) for v in lists):
        return None
    if not all(isinstance(t, str) for t in tokens) or "".join(tokens) != text:
        return None
    return tokens
