"""Gateway configuration: one frozen settings object, read once in ``__main__``.

Every field is an environment variable with the ``GATEWAY_`` prefix (for
example ``GATEWAY_PORT``); lists and objects are JSON. Backends can also come
from a JSON or YAML file (``GATEWAY_BACKENDS_FILE``) with the same shape::

    backends:
      - url: http://127.0.0.1:8001
        models: [mock-llama-3-8b]
      - url: http://vllm-headless.llm.svc:8000   # DNS name: one endpoint per address
        models: []                                # empty: read from its /v1/models
        name: vllm                                # optional: endpoints are named vllm/<address>
        continuation: chat                        # optional: chat (default), prompt, off
      - url: http://127.0.0.1:8081                # llama-cpp-python: continues on /v1/completions
        models: [smollm2-135m]
        continuation: {mode: prompt, message: "<|im_start|>{role}\\n{content}<|im_end|>\\n",
                       generation: "<|im_start|>assistant\\n"}

Settings are mapped to the components' configs here, in one place
(:meth:`GatewaySettings.pool_config` and the others). A default that a
component's config states (the breaker's, the router's, the limiter's) is
stated there only and read from it here (``_default``), so the two cannot
drift apart.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.balance.affinity import AffinityConfig
from gateway.balance.breaker import BreakerConfig
from gateway.balance.config import ContinuationConfig, ContinuationMode, PoolConfig
from gateway.balance.hedge import HedgeConfig
from gateway.balance.retry_budget import RetryBudgetConfig
from gateway.flow.settings import FlowSettings
from gateway.tenancy import AuthConfig, LimitsConfig, RedisKeysConfig, hash_key


def _default(config: type, name: str) -> Any:
    """The default a component's config states for ``name``."""
    field = {field.name: field for field in dataclasses.fields(config)}[name]
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


class ContinuationSettings(BaseModel):
    """A backend's ``continuation``: see ``balance.config.ContinuationConfig``. A bare
    string is the mode (``continuation: off``; YAML reads a bare ``off`` as false,
    which means off too)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: ContinuationMode = "chat"
    message: str = ""
    generation: str = ""
    system: str = ""

    @model_validator(mode="before")
    @classmethod
    def _mode_alone(cls, value: Any) -> Any:
        if value is False:
            return {"mode": "off"}
        return {"mode": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _template(self) -> ContinuationSettings:
        if self.mode == "prompt" and "{content}" not in self.message:
            raise ValueError("continuation mode prompt needs a message template with {content}")
        return self

    def config(self) -> ContinuationConfig:
        return ContinuationConfig(self.mode, self.message, self.generation, self.system)


class BackendConfig(BaseModel):
    """One model server (or a DNS name that expands to several)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    models: tuple[str, ...] = ()
    name: str = ""
    continuation: ContinuationSettings = ContinuationSettings()

    @field_validator("url")
    @classmethod
    def _strip(cls, url: str) -> str:
        url = url.rstrip("/")
        return url.removesuffix("/v1")


class GatewaySettings(FlowSettings, BaseSettings):
    """Every setting; the ``GATEWAY_FLOW_*`` ones are declared in ``gateway.flow.settings``."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", frozen=True, extra="ignore")

    # Serving
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(1, ge=1, description="uvicorn worker processes")
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="/metrics and /admin/* on this port only (404 on the API one); 0: API port",
    )
    keepalive_s: float = Field(
        75.0, gt=0, description="idle client connections kept open (above clients' idle pools)"
    )
    drain_s: float = Field(30.0, ge=0, description="SIGTERM: how long streams in flight may finish")
    upstream_keepalive_s: float = Field(
        4.0, gt=0, description="idle upstream connections reused (below servers' keep-alive)"
    )
    metrics_dir: Path = Field(
        Path("/tmp/llmgw-gateway-metrics"),
        description="with several workers: where they share metric values (emptied at start)",
    )
    log_level: str = "info"
    log_requests: bool = Field(True, description="one JSON log line per request")
    log_prompts: bool = Field(False, description="include prompt and completion text in logs")
    otlp_endpoint: str = Field("", description="OTLP/HTTP traces URL; empty: tracing off")
    trace_sample_ratio: float = Field(1.0, ge=0, le=1, description="of new traces")

    # Backends
    backends: tuple[BackendConfig, ...] = ()
    backends_file: Path | None = None
    discovery_interval_s: float = Field(10.0, gt=0, description="DNS re-resolution period")

    # Upstream timeouts
    connect_timeout_s: float = Field(2.0, gt=0)
    ttft_timeout_s: float = Field(60.0, gt=0, description="request sent -> first token")
    idle_timeout_s: float = Field(30.0, gt=0, description="longest gap between stream chunks")
    total_timeout_s: float = Field(600.0, gt=0)
    unary_timeout_s: float = Field(
        120.0, gt=0, description="a non-streamed attempt; past it, fail over (stream long outputs)"
    )

    # Routing
    ewma_tau_s: float = Field(_default(PoolConfig, "tau_s"), gt=0)
    default_rtt_s: float = Field(
        _default(PoolConfig, "default_rtt_s"),
        gt=0,
        description="cost of an endpoint with no samples",
    )
    failure_penalty_s: float = Field(
        _default(PoolConfig, "penalty_s"), gt=0, description="latency sample for a failure"
    )
    decode_weight: float = Field(
        _default(PoolConfig, "decode_weight"),
        ge=0,
        le=1,
        description="load weight of a stream past its first token (1 for one-at-a-time servers)",
    )
    slow_ttft_s: float = Field(
        _default(PoolConfig, "ttft_failure_limit_s"),
        gt=0,
        description="a slower first token is a failure",
    )
    prefix_affinity: bool = Field(
        _default(AffinityConfig, "enabled"),
        description="route long prompts where their prefix is cached",
    )
    prefix_cache_tokens: int = Field(
        _default(AffinityConfig, "capacity_tokens"),
        ge=1,
        description="prefix cache per endpoint assumed by the router, in tokens",
    )
    prefill_s_per_token: float = Field(
        _default(AffinityConfig, "token_cost_s"),
        ge=0,
        description="prefill time per uncached prompt token, for affinity scores",
    )
    prefix_load_factor: float = Field(
        _default(AffinityConfig, "load_factor"),
        ge=1,
        description="no affinity to an endpoint above this multiple of the mean load",
    )
    max_attempts: int = Field(3, ge=1, description="tries per request before the first byte")
    retry_budget_ratio: float = Field(
        _default(RetryBudgetConfig, "ratio"), ge=0, le=1, description="retries / recent requests"
    )
    retry_budget_min_per_s: float = Field(
        _default(RetryBudgetConfig, "min_per_s"), ge=0, description="retries always allowed"
    )
    breaker_consecutive_failures: int = Field(_default(BreakerConfig, "consecutive_failures"), ge=1)
    breaker_failure_rate: float = Field(_default(BreakerConfig, "failure_rate"), gt=0, le=1)
    breaker_min_requests: int = Field(
        _default(BreakerConfig, "min_requests"), ge=1, description="volume before the rate counts"
    )
    breaker_window_s: float = Field(_default(BreakerConfig, "window_s"), gt=0)
    breaker_base_ejection_s: float = Field(
        _default(BreakerConfig, "base_ejection_s"), gt=0, description="doubles per ejection"
    )
    breaker_max_ejection_s: float = Field(_default(BreakerConfig, "max_ejection_s"), gt=0)
    breaker_probes: int = Field(
        _default(BreakerConfig, "probes"), ge=1, description="half-open successes needed to close"
    )
    hedge: bool = Field(
        _default(HedgeConfig, "enabled"),
        description="a stream whose first token is late is tried on a second endpoint too",
    )
    hedge_quantile: float = Field(
        _default(HedgeConfig, "quantile"),
        gt=0,
        lt=1,
        description="a stall: 1.5x this quantile of the endpoint's recent first tokens",
    )
    hedge_slow_factor: float = Field(
        _default(HedgeConfig, "slow_factor"),
        gt=1,
        description="an endpoint whose typical first token is this many times the pool's"
        " is slow: its streams are hedged after GATEWAY_HEDGE_MIN_DELAY_MS",
    )
    hedge_min_delay_ms: float = Field(
        _default(HedgeConfig, "min_delay_s") * 1000,
        ge=0,
        description="never hedge sooner (a slow endpoint's streams are hedged this soon)",
    )
    hedge_initial_delay_ms: float = Field(
        _default(HedgeConfig, "initial_delay_s") * 1000,
        ge=0,
        description="the delay before enough first tokens are known (0: no hedge until then)",
    )
    hedge_budget_ratio: float = Field(
        _default(HedgeConfig, "budget").ratio, ge=0, le=1, description="hedges / recent requests"
    )
    stream_continuations: int = Field(
        1,
        ge=0,
        description="a stream whose replica breaks after the first byte is continued on"
        " another this many times at most (0: off; per backend: its continuation)",
    )
    engine_metrics: bool = Field(True, description="poll vLLM /metrics for queue depth")

    # Sidecars (gRPC targets; "dns:///name:port" balances over every address of a
    # headless Service with round_robin). Empty: that sidecar is not used.
    embedder_target: str = ""
    cache_target: str = ""
    sidecar_breaker_failures: int = Field(5, ge=1, description="failures that stop calls")
    sidecar_breaker_open_s: float = Field(2.0, gt=0, description="how long calls stop")
    embeddings_timeout_s: float = Field(5.0, gt=0, description="/v1/embeddings deadline")

    # Cache in the request path
    cache_enabled: bool = True
    cache_semantic: bool = Field(True, description="paraphrase lookups (needs the embedder)")
    cache_lookup_budget_ms: float = Field(
        100.0,
        gt=0,
        description="whole lookup (exact, embed, search + verify: ~10 ms at c=1, ~3x that under"
        " load); over it: a miss. Misses do not wait for it: it bounds how late a hit may come",
    )
    cache_head_start_ms: float = Field(
        3.0,
        ge=0,
        description="the upstream waits this long for the exact lookup (~1.5 ms, p98 under 2.5"
        " ms): an exact hit in time never starts it; an exact miss starts it at once",
    )
    cache_speculative: bool = Field(
        True,
        description="start the upstream while the semantic lookup runs and cancel it on a hit"
        " (false: the upstream waits for the whole lookup)",
    )
    cache_store_timeout_s: float = Field(2.0, gt=0)
    cache_ttl_s: int = Field(0, ge=0, description="entry TTL; 0: the cache service's default")
    cache_deterministic_only: bool = Field(
        True, description="cache only temperature 0, n 1, no tools/logprobs (else opt-in)"
    )
    cache_max_embed_chars: int = Field(
        2000, gt=0, description="longer prompts are exact-only (beyond the model's window)"
    )
    # Tenants, keys and limits (gateway/tenancy; docs/tenancy.md)
    auth_enabled: bool = Field(False, description="require an API key (Bearer) per request")
    api_keys_file: Path | None = Field(None, description="tenants and key digests (JSON/YAML)")
    api_keys_cache_s: float = Field(
        _default(RedisKeysConfig, "cache_s"), gt=0, description="trust a Redis key answer this long"
    )
    default_tenant: str = Field(
        _default(AuthConfig, "default_tenant"), min_length=1, description="tenant when auth is off"
    )
    admin_key: str = Field("", description="key for /admin endpoints; empty: admin disabled")
    admin_key_sha256: str = Field("", description="the admin key given as its SHA-256 digest")
    redis_url: str = Field("", description="shared limits and keys; empty: per-replica limits")
    redis_prefix: str = _default(LimitsConfig, "prefix")
    redis_timeout_s: float = Field(
        _default(LimitsConfig, "redis_timeout_s"),
        gt=0,
        description="longest wait before deciding locally",
    )
    redis_backoff_s: float = Field(_default(LimitsConfig, "backoff_s"), gt=0)
    redis_backoff_max_s: float = Field(_default(LimitsConfig, "backoff_max_s"), gt=0)
    max_in_flight: int = Field(
        _default(LimitsConfig, "max_in_flight"),
        ge=0,
        description="per process; beyond: 503 (0: no limit)",
    )
    expected_replicas: int = Field(
        _default(LimitsConfig, "replicas"), ge=1, description="divides limits when Redis is away"
    )
    stream_lease_ttl_s: float = Field(
        _default(LimitsConfig, "lease_ttl_s"), gt=0, description="a dead replica's slots free after"
    )

    # Input limits
    max_body_bytes: int = Field(1_048_576, gt=0)
    max_messages: int = Field(512, gt=0)
    max_tokens_limit: int = Field(32_768, gt=0)
    max_header_bytes: int = Field(16_384, gt=0, description="all request headers together")

    def pool_config(self) -> PoolConfig:
        return PoolConfig(
            tau_s=self.ewma_tau_s,
            default_rtt_s=self.default_rtt_s,
            penalty_s=self.failure_penalty_s,
            decode_weight=self.decode_weight,
            ttft_failure_limit_s=self.slow_ttft_s,
            affinity=AffinityConfig(
                enabled=self.prefix_affinity,
                capacity_tokens=self.prefix_cache_tokens,
                token_cost_s=self.prefill_s_per_token,
                load_factor=self.prefix_load_factor,
            ),
            breaker=BreakerConfig(
                consecutive_failures=self.breaker_consecutive_failures,
                failure_rate=self.breaker_failure_rate,
                min_requests=self.breaker_min_requests,
                window_s=self.breaker_window_s,
                base_ejection_s=self.breaker_base_ejection_s,
                max_ejection_s=self.breaker_max_ejection_s,
                probes=self.breaker_probes,
            ),
            retry_budget=RetryBudgetConfig(
                ratio=self.retry_budget_ratio, min_per_s=self.retry_budget_min_per_s
            ),
            hedge=HedgeConfig(
                enabled=self.hedge,
                quantile=self.hedge_quantile,
                slow_factor=self.hedge_slow_factor,
                min_delay_s=self.hedge_min_delay_ms / 1000,
                initial_delay_s=self.hedge_initial_delay_ms / 1000,
                budget=replace(_default(HedgeConfig, "budget"), ratio=self.hedge_budget_ratio),
            ),
        )

    def redis_keys_config(self) -> RedisKeysConfig:
        return RedisKeysConfig(
            prefix=self.redis_prefix,
            cache_s=self.api_keys_cache_s,
            timeout_s=self.redis_timeout_s,
            backoff_s=self.redis_backoff_s,
            backoff_max_s=self.redis_backoff_max_s,
        )

    def auth_config(self) -> AuthConfig:
        admin = self.admin_key_sha256 or (hash_key(self.admin_key) if self.admin_key else "")
        return AuthConfig(
            enabled=self.auth_enabled,
            default_tenant=self.default_tenant,
            admin_key_sha256=admin,
        )

    def limits_config(self) -> LimitsConfig:
        return LimitsConfig(
            max_in_flight=self.max_in_flight,
            replicas=self.expected_replicas,
            redis_timeout_s=self.redis_timeout_s,
            backoff_s=self.redis_backoff_s,
            backoff_max_s=self.redis_backoff_max_s,
            lease_ttl_s=self.stream_lease_ttl_s,
            prefix=self.redis_prefix,
        )

    def all_backends(self) -> tuple[BackendConfig, ...]:
        """Backends from the environment plus those in ``backends_file``."""
        if self.backends_file is None:
            return self.backends
        return self.backends + load_backends_file(self.backends_file)


def load_backends_file(path: Path) -> tuple[BackendConfig, ...]:
    text = path.read_text()
    data: Any
    if path.suffix in {".yaml", ".yml"}:
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    items = data.get("backends", []) if isinstance(data, dict) else data
    return tuple(BackendConfig.model_validate(item) for item in items)
