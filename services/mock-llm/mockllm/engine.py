"""The prompt's path through the replica before its first token: prefix cache, then prefill.

``Engine.prefill(prompt, prompt_tokens)`` looks the prompt's blocks up in the
prefix cache (when ``prefix_cache_blocks`` > 0), spends ``uncached tokens x
prefill_ms_per_token`` of the replica's shared compute, then caches the
prompt's blocks. The KV blocks a request holds while it runs count towards
``vllm:kv_cache_usage_perc`` (cached blocks nobody is using are free for
reuse, as in vLLM, and do not count).
"""

from __future__ import annotations

import math

from mockllm.prefill import PrefillEngine
from mockllm.prefix_cache import BLOCK_TOKENS, PrefixCache, block_hashes
from mockllm.settings import Settings


class Engine:
    def __init__(self, settings: Settings) -> None:
        blocks = settings.prefix_cache_blocks
        self.cache: PrefixCache | None = PrefixCache(blocks) if blocks else None
        self._rate_s = settings.prefill_ms_per_token / 1000.0
        self._compute = PrefillEngine()
        self.held_blocks = 0

    @property
    def enabled(self) -> bool:
        return self.cache is not None or self._rate_s > 0

    def kv_usage(self) -> float | None:
        """Blocks held by running requests over capacity; None without a prefix cache."""
        if self.cache is None:
            return None
        return min(1.0, self.held_blocks / self.cache.capacity)

    async def prefill(self, prompt: str, prompt_tokens: int, output_tokens: int) -> int:
        """Prefill one prompt; returns the KV blocks it holds (give them back with release)."""
        hashes = block_hashes(prompt) if self.cache is not None else []
        hit = self.cache.lookup(hashes, prompt_tokens) if self.cache is not None else 0
        held = math.ceil((prompt_tokens + output_tokens) / BLOCK_TOKENS)
        self.held_blocks += held
        try:
            await self._compute.run((prompt_tokens - hit) * self._rate_s)
        except BaseException:
            self.release(held)
            raise
        if self.cache is not None:
            self.cache.insert(hashes)
        return held

    def release(self, held: int) -> None:
        self.held_blocks -= held
