"""mock-llm: an OpenAI-compatible test double of vLLM (aiohttp, deterministic, cheap in CPU)."""
