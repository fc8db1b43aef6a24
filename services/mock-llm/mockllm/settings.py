"""The mock's configuration: environment variables with the ``MOCKLLM_`` prefix only.

Built once in ``__main__`` and passed down; nothing else reads the environment.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from mockllm.faults import parse_fault


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOCKLLM_", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=0, le=65535)
    models: Annotated[tuple[str, ...], NoDecode] = ("mock-llama-3-8b",)
    ttft_ms: float = Field(default=20.0, ge=0)
    inter_token_ms: float = Field(default=5.0, ge=0)
    output_tokens: int = Field(default=32, ge=1)
    max_concurrency: int = Field(default=64, ge=1)
    queue_style: Literal["vllm", "llamacpp"] = "vllm"
    ping_interval_ms: float = Field(default=500.0, gt=0)
    fault: str = ""
    # The first this many tokens of every chat answer are reasoning (mockllm.rich).
    reasoning_tokens: int = Field(default=0, ge=0)
    # The prefix cache and prefill model (docs: mockllm.prefix_cache, mockllm.prefill).
    # 0 blocks: no prefix cache (every prompt is prefilled in full when a prefill
    # rate is set). A prefill rate of 0: the first token takes ttft_ms whatever
    # the prompt, as before these settings existed.
    prefix_cache_blocks: int = Field(default=0, ge=0)
    prefill_ms_per_token: float = Field(default=0.0, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_timeout_s: float = Field(default=2.0, ge=0)

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(name.strip() for name in value.split(",") if name.strip())
        if not value:
            raise ValueError("at least one model name is required")
        return value

    @field_validator("fault")
    @classmethod
    def _check_fault(cls, value: str) -> str:
        parse_fault(value)  # raises ValueError (FaultSyntaxError) on bad syntax
        return value.strip()
