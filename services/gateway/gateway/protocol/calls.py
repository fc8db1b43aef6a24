"""The kind of a call, set once from its route, and the texts a request carries."""

from __future__ import annotations

import enum
from collections.abc import Iterator

from gateway.protocol.schemas import ChatCompletionRequest, ChatMessage, CompletionRequest

AnyRequest = ChatCompletionRequest | CompletionRequest


class Kind(enum.Enum):
    """What a call is, set once from its route: the request schema, the object names,
    how its stream ends, whether it can be cached or continued.

    ``CHAT`` and ``COMPLETION`` are the generation routes the cache and stream
    continuation understand. ``RESPONSES`` is ``/v1/responses``: routed, failed
    over and timed like chat, its stream watched for ``response.completed``,
    never cached or continued. ``PASSTHROUGH`` is every other model-routed POST
    (vLLM's ``/tokenize``, ``/v1/rerank``..., embeddings a backend serves): the
    body goes to the model's pool untouched and the answer comes back whole;
    its path is the call's own (``Call.path``).
    """

    CHAT = "chat"
    COMPLETION = "completion"
    RESPONSES = "responses"
    PASSTHROUGH = "passthrough"

    @property
    def route(self) -> str:
        """The route of the call kind (``PASSTHROUGH`` calls name their own: ``Call.path``)."""
        return _ROUTES[self]

    @property
    def generates(self) -> bool:
        """Chat or text completion: the answers the cache stores and continuation resumes."""
        return self is Kind.CHAT or self is Kind.COMPLETION

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


_ROUTES = {
    Kind.CHAT: "/v1/chat/completions",
    Kind.COMPLETION: "/v1/completions",
    Kind.RESPONSES: "/v1/responses",
    Kind.PASSTHROUGH: "",
}


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
