"""Continuing a partial answer, as vLLM does, so a gateway can splice a stream.

A gateway whose upstream broke mid-stream asks another replica to continue
from the text already sent:

- **chat**: the conversation plus the partial answer as a last ``assistant``
  message, with vLLM's ``continue_final_message: true`` and
  ``add_generation_prompt: false``;
- **completions**: the prompt with the partial answer appended.

The mock's answers are deterministic (``tokens.generate_tokens``), so it can
do what a real model does, exactly: when the partial text is the start of
the answer it would give to the conversation (or prompt) without it, it
sends the rest of that answer, and the spliced stream equals the
uninterrupted one. A partial text that is not its own is continued with
fresh tokens, as a model continues any text.

For completions the prompt's end is found by trying the last ``count``
pieces of the prompt (the partial answer has at most that many tokens), and
only when the prompt ends with one of the mock's own words: a few hashes,
and nothing for an ordinary prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from mockllm.tokens import VOCABULARY, generate_tokens

_WORDS = frozenset(VOCABULARY)


@dataclass(frozen=True, slots=True)
class Continuation:
    """Where the answer of the original request stands: its prompt key and the
    number of its tokens already sent."""

    prompt_key: str
    done: int


def chat_continuation(model: str, base_key: str, partial: str, count: int) -> Continuation | None:
    """The continuation of ``partial`` as the answer to ``base_key``, if it is the start
    of the mock's own answer there."""
    done = _tokens_in(generate_tokens(model, base_key, count), partial)
    return Continuation(base_key, done) if done is not None else None


def completion_continuation(model: str, prompt: str, count: int) -> Continuation | None:
    """Split ``prompt`` into an original prompt and the start of the mock's answer to it.

    The answer's first token has no leading space, so it is glued to the end
    of the original prompt: each of the last ``count`` space-separated pieces
    is tried as the one holding it, with each of the mock's words it ends with.
    """
    pieces = prompt.split(" ")
    if pieces[-1] not in _WORDS and not any(pieces[-1].endswith(w) for w in _WORDS):
        return None
    for taken in range(1, min(count, len(pieces)) + 1):
        glued, rest = pieces[-taken], pieces[len(pieces) - taken + 1 :]
        if rest and rest[0] not in _WORDS:
            return None  # every piece after the first answer token is one of its words
        tail = len(" ".join(pieces[-taken:]))
        for word in _WORDS:
            if not glued.endswith(word):
                continue
            start = len(prompt) - tail + len(glued) - len(word)
            done = _tokens_in(generate_tokens(model, prompt[:start], count), prompt[start:])
            if done:
                return Continuation(prompt[:start], done)
    return None


def _tokens_in(tokens: tuple[str, ...], partial: str) -> int | None:
    """How many of ``tokens`` make up ``partial`` exactly, or None."""
    text = ""
    for i, token in enumerate(tokens):
        if text == partial:
            return i
        text += token
        if not partial.startswith(text):
            return None
    return len(tokens) if text == partial else None
