"""vLLM's automatic prefix cache, modelled: chained block hashes and an LRU of blocks.

The rendered prompt is cut into blocks of ``BLOCK_TOKENS`` tokens (vLLM's
default 16; the mock counts about four bytes of UTF-8 per token, so a block
is 64 bytes). Block ``i``'s hash covers its own bytes and the hash of block
``i - 1``, so a block is found only when everything before it matches too,
as in vLLM. Only full blocks are cached.

A request's hit is the longest run of leading blocks present, counted in
tokens as vLLM counts ``vllm:prefix_cache_hits`` (never the whole prompt:
vLLM always computes at least the last token). The blocks are added once the
prefill is done, so two identical prompts arriving together both miss, as
on vLLM. When full, the least recently used block goes first; a prompt's
blocks are touched tail first, so its head is the most recent (vLLM frees a
request's blocks in reverse order for the same reason: a tail without its
head is useless).

Pure: no clock, no I/O.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

BLOCK_TOKENS = 16
BYTES_PER_TOKEN = 4  # as mockllm.tokens.estimate_tokens
BLOCK_BYTES = BLOCK_TOKENS * BYTES_PER_TOKEN


def block_hashes(prompt: str) -> list[bytes]:
    """The chained hashes of the prompt's full blocks, first block first."""
    data = prompt.encode()
    hashes: list[bytes] = []
    parent = b""
    for start in range(0, len(data) - BLOCK_BYTES + 1, BLOCK_BYTES):
        parent = hashlib.blake2b(
            parent + data[start : start + BLOCK_BYTES], digest_size=16
        ).digest()
        hashes.append(parent)
    return hashes


class PrefixCache:
    """Cached blocks, least recently used first; ``capacity`` in blocks."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1 block")
        self.capacity = capacity
        self._blocks: OrderedDict[bytes, None] = OrderedDict()
        self.queries = 0  # tokens looked up
        self.hits = 0  # tokens found

    def __len__(self) -> int:
        return len(self._blocks)

    def lookup(self, hashes: list[bytes], prompt_tokens: int) -> int:
        """Tokens of this prompt already cached (touching the blocks found); counted."""
        found = 0
        for h in hashes:
            if h not in self._blocks:
                break
            found += 1
        for h in reversed(hashes[:found]):
            self._blocks.move_to_end(h)
        hit = max(0, min(found * BLOCK_TOKENS, prompt_tokens - 1))
        self.queries += prompt_tokens
        self.hits += hit
        return hit

    def insert(self, hashes: list[bytes]) -> None:
        """The prompt's blocks are computed: keep them, evicting the least recently used."""
        blocks = self._blocks
        for h in reversed(hashes):
            if h in blocks:
                blocks.move_to_end(h)
            else:
                blocks[h] = None
        while len(blocks) > self.capacity:
            blocks.popitem(last=False)
