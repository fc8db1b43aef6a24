"""The cache service's configuration: one frozen class, read from ``CACHE_*`` variables.

Built once in ``__main__`` and passed down; nothing else reads the environment.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CacheSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CACHE_", frozen=True, extra="ignore")

    host: str = "0.0.0.0"
    port: int = 50052
    metrics_port: int = 9102  # 0 disables the Prometheus endpoint
    log_level: str = "info"
    drain_grace_s: float = 10.0

    # Store. Empty URL: the embedded in-process store (no servers needed).
    redis_url: str = ""
    redis_prefix: str = "{llmgw-cache}:"  # hash tag: every key on one cluster slot
    redis_socket_timeout_s: float = 0.5  # short: callers fail open on UNAVAILABLE
    redis_connect_timeout_s: float = 0.25
    stream_maxlen: int = Field(default=50_000, ge=100)
    stream_max_age_s: float = Field(default=600.0, ge=0)  # also trimmed by age (0: count only)
    stream_block_ms: int = Field(default=1000, ge=10)
    snapshot_path: str = ""  # embedded store only: saved on shutdown, loaded at start

    # Entries.
    dim: int = Field(default=384, ge=1)
    default_ttl_s: int = Field(default=86_400, ge=1)
    max_entries: int = Field(default=1_000_000, ge=1)
    max_response_bytes: int = Field(default=1 << 20, ge=1)
    max_prompt_bytes: int = Field(default=64 << 10, ge=1)
    max_key_bytes: int = Field(default=1024, ge=1)  # namespace and exact key

    # Semantic lookup and verification.
    embedding_backend: str = "onnx-int8"
    candidates: int = Field(default=4, ge=1, le=64)

    # The pair verifier (a cross-encoder reading both questions; semcache.pair_verify).
    # The threshold comes from verifier_model/calibration.json for the target precision
    # on the tuning half and the embedding backend above; verifier_threshold > 0
    # overrides it. Disabled: the vector score decides alone, as before.
    verifier_enabled: bool = True
    verifier_model_dir: str = ""  # "": the shipped semcache/verifier_model
    verifier_target_precision: float = Field(default=0.90, gt=0.0, lt=1.0)
    verifier_threshold: float = Field(default=0.0, ge=0.0, lt=1.0)
    # > 0: also serve what the calibrated score accepts unless the model scores it below this.
    verifier_veto_threshold: float = Field(default=0.0, ge=0.0, lt=1.0)
    verifier_candidates: int = Field(default=2, ge=1, le=16)
    verifier_timeout_s: float = Field(default=0.05, gt=0.0)
    verifier_max_pending: int = Field(default=8, ge=1)  # calls in flight; more: a miss
    verifier_threads: int = Field(default=1, ge=1)

    # Index.
    ivf_min_vectors: int = Field(default=8192, ge=256)  # flat below, IVF above
    ivf_nlist: int = Field(default=0, ge=0)  # 0: chosen from the size (~sqrt(n))
    ivf_nprobe: int = Field(default=16, ge=1)
    compact_ratio: float = Field(default=0.2, gt=0.0, le=1.0)  # tombstones/vectors
    sweep_interval_s: float = Field(default=1.0, gt=0.0)
    faiss_threads: int = Field(default=1, ge=1)  # OpenMP threads per FAISS call
    search_threads: int = Field(default=2, ge=1)  # concurrent FAISS calls
    load_threads: int = Field(default=0, ge=0)  # OpenMP threads of full loads; 0: all cores
