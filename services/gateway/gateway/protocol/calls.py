"""The kind of a call, set once from its route, and the texts a request carries."""

from __future__ import annotations

import enum
from collections.abc import Iterator

from gateway.protocol.schemas import ChatCompletionRequest, ChatMessage, CompletionRequest

AnyRequest = ChatCompletionRequest | CompletionRequest


class Kind(enum.Enum):
    """Chat or text completion: the route, the request schema and the object names."""

    CHAT = "chat"
    COMPLETION = "completion"

    @property
    def route(self) -> str:
        return "/v1/chat/completions" if self is Kind.CHAT else "/v1/completions"

    @property
    def schema(self) -> type[AnyRequest]:
        return ChatCompletionRequest if self is Kind.CHAT else CompletionRequest

    @property
    def object_name(self) -> str:
        """The ``object`` field of a whole answer."""
        return "chat.completion" if self is Kind.CHAT else "text_completion"

    @property
    def chunk_object(self) -> str:
        """The ``object`` of a streamed chunk."""
        return "chat.completion.chunk" if self is Kind.CHAT else "text_completion"

    @property
    def id_prefix(self) -> str:
        return "chatcmpl-" if self is Kind.CHAT else "cmpl-"

    @classmethod
    def of_object(cls, name: object) -> Kind:
        return cls.CHAT if name in ("chat.completion", "chat.completion.chunk") else cls.COMPLETION


def message_text(message: ChatMessage) -> str | None:
    """A message's text, or None when it holds anything but text parts (images...)."""
    if isinstance(message.content, str):
        return message.content
    if isinstance(message.content, list):
        parts = [p.get("text") for p in message.content if p.get("type") == "text"]
        if len(parts) == len(message.content) and all(isinstance(p, str) for p in parts):
            return "\n".join(parts)  # type: ignore[arg-type]
    return None


def prompt_text(req: AnyRequest) -> str:
    """The user's text (the last message, or the prompt), for logs when prompt logging is on."""
    if isinstance(req, ChatCompletionRequest):
        return message_text(req.messages[-1]) or ""
    return req.prompt if isinstance(req.prompt, str) else str(req.prompt)


def prompt_parts(req: AnyRequest) -> Iterator[str] | None:
    """The prompt in the order the model server renders it (roles and texts), or None
    when it is not text (token ids). A batch of prompts is represented by its first."""
    if isinstance(req, CompletionRequest):
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            prompt = prompt[0]
        return iter((prompt,)) if isinstance(prompt, str) else None
    return _message_parts(req)


def _message_parts(req: ChatCompletionRequest) -> Iterator[str]:
    for message in req.messages:
        yield message.role
        content = message.content
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            yield from (p["text"] for p in content if isinstance(p.get("text"), str))
