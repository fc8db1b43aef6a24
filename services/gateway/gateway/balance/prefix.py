"""What the router knows of a prompt: chained hashes of its first blocks, and its size.

The prompt's text (chat: each message's role and text, in order; the caller
renders it) is cut into blocks of ``BLOCK_BYTES`` bytes of UTF-8, about 128
tokens, and block ``i``'s hash covers every byte before its end, so two
prompts share a block hash only if they share everything up to it, as the
model server's own prefix cache (vLLM's blocks of 16 tokens) needs.

Only the first ``MAX_BLOCKS`` blocks (32 KiB, about 8,000 tokens) are
hashed: the work per request is bounded (a 1 MB prompt costs what a 32 KiB
one does), and what lies beyond is counted in ``tokens`` but not told apart,
which matters little since a prefix that long is rarely shared past that
point without also being shared before it. One running BLAKE2b is fed block
by block and a copy of its state read at each block end, so the hashes cost
one pass over at most 32 KiB.

The gateway's blocks are coarser than the server's on purpose: the index is
an estimate, and 128-token blocks keep it and the hashing small.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

BLOCK_BYTES = 512
BYTES_PER_TOKEN = 4  # the usual estimate for English text and BPE tokenizers
BLOCK_TOKENS = BLOCK_BYTES // BYTES_PER_TOKEN
MAX_BLOCKS = 64
# The prefix's name for rendezvous hashing is the hash of the last full block
# of its first ``anchor_parts`` parts (chat: the first message, usually the
# system prompt), at most the 8th: deep enough to be past a common preamble
# ("You are a helpful assistant..."), and the same for every turn of a
# conversation, because it depends only on how the conversation starts.
ANCHOR_BLOCKS = 8
_SEPARATOR = "\x1e"


@dataclass(frozen=True, slots=True)
class PromptPrefix:
    blocks: tuple[int, ...]  # chained hashes of the full blocks of the bounded prefix
    tokens: int  # estimated tokens of the whole prompt
    anchor_block: int = 0  # which block names the prefix (see ANCHOR_BLOCKS)

    @property
    def anchor(self) -> int:
        """The hash rendezvous hashing ranks endpoints by (needs at least one block)."""
        return self.blocks[min(self.anchor_block, len(self.blocks) - 1)]


def prompt_prefix(parts: Iterable[str], anchor_parts: int = 2) -> PromptPrefix:
    """The prefix of the prompt made of ``parts`` (joined by a separator).

    Parts past the hashed bound are only measured (``len``), never copied.
    """
    limit = BLOCK_BYTES * MAX_BLOCKS
    kept: list[str] = []
    kept_chars = 0
    total_chars = 0
    anchor_chars = 0
    for n, part in enumerate(parts):
        size = len(part) + 1
        total_chars += size
        if n < anchor_parts:
            anchor_chars = total_chars
        if kept_chars < limit:
            kept.append(part[: limit - kept_chars])
            kept_chars += size
    data = _SEPARATOR.join(kept).encode("utf-8", "surrogatepass")[:limit]
    running = hashlib.blake2b(digest_size=8)
    view = memoryview(data)
    blocks = []
    for end in range(BLOCK_BYTES, len(data) + 1, BLOCK_BYTES):
        running.update(view[end - BLOCK_BYTES : end])
        blocks.append(int.from_bytes(running.copy().digest(), "little"))
    anchor_block = min(ANCHOR_BLOCKS, max(1, anchor_chars // BLOCK_BYTES)) - 1
    return PromptPrefix(tuple(blocks), max(1, total_chars // BYTES_PER_TOKEN), anchor_block)
