"""Request bodies (OpenAI shape, validated by pydantic) and what the mock makes of them.

Only the fields the mock acts on are declared; any other OpenAI/vLLM field is
accepted and ignored, as vLLM ignores sampling options it does not need here.
"""

from __future__ import annotations

from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from mockllm.errors import BadRequest

Kind = Literal["chat", "completion"]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Lenient):
    include_usage: bool = False


class _GenerationRequest(_Lenient):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1, description="the mock generates one choice")

    @property
    def include_usage(self) -> bool:
        return self.stream and self.stream_options is not None and self.stream_options.include_usage


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class ChatMessage(_Lenient):
    role: str
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.text or "" for part in self.content)


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    # vLLM's: continue the last (assistant) message instead of starting a new one.
    continue_final_message: bool = False
    add_generation_prompt: bool = True

    def prompt_key(self) -> str:
        return _chat_key(self.messages)

    def continues(self) -> tuple[str, str] | None:
        """(the conversation's key without the partial answer, the partial answer)
        when this asks to continue a final assistant message."""
        last = self.messages[-1]
        if not self.continue_final_message or last.role != "assistant" or len(self.messages) < 2:
            return None
        return _chat_key(self.messages[:-1]), last.text()

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]

    def prompt_key(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        return "\x1e".join(str(part) for part in self.prompt)

    def token_limit(self) -> int | None:
        return self.max_tokens

    def token_ids(self) -> int | None:
        """The prompt's length when it is given as token ids, else None."""
        if isinstance(self.prompt, list) and self.prompt and not isinstance(self.prompt[0], str):
            return sum(1 if isinstance(p, int) else len(p) for p in self.prompt)
        return None


AnyRequest = ChatCompletionRequest | CompletionRequest


def _chat_key(messages: list[ChatMessage]) -> str:
    return "\n".join(f"{m.role}\x1f{m.text()}" for m in messages)


def parse_request(kind: Kind, body: bytes) -> AnyRequest:
    """Validate a JSON body, translating pydantic's error into a 400."""
    model_cls: type[AnyRequest] = ChatCompletionRequest if kind == "chat" else CompletionRequest
    try:
        return model_cls.model_validate_json(body)
    except pydantic.ValidationError as exc:
        raise BadRequest(_describe(exc)) from exc


def _describe(exc: pydantic.ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    if any(err["type"] == "json_invalid" for err in errors):
        return "The request body is not valid JSON."
    return "; ".join(_one(err) for err in errors[:5])


def _one(err: Any) -> str:
    where = ".".join(str(part) for part in err["loc"]) or "body"
    return f"{where}: {err['msg']}"
