"""Embedder configuration: one frozen settings object, read once in ``__main__``.

Every field is an environment variable with the ``EMBEDDER_`` prefix (for
example ``EMBEDDER_PORT`` or ``EMBEDDER_BACKEND``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# services/embedder/embedder/settings.py -> the repository root.
_REPO_ROOT = Path(__file__).resolve().parents[3]

Backend = Literal["onnx-int8", "torch"]


class EmbedderSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDDER_", frozen=True, extra="ignore")

    # Serving
    host: str = Field("127.0.0.1", description="address for gRPC and metrics; 0.0.0.0 in pods")
    port: int = Field(50051, ge=0, description="gRPC port (0 picks a free one)")
    metrics_port: int = Field(9101, ge=0, description="Prometheus port (0 disables it)")
    log_level: str = "info"
    grace_s: float = Field(10.0, ge=0, description="how long a drain lets in-flight calls run")

    # Model
    backend: Backend = "onnx-int8"
    cache_dir: Path = Field(
        _REPO_ROOT / ".cache" / "embedder",
        description="where the exported ONNX model is kept (baked into the image)",
    )
    intra_op_threads: int = Field(
        1, ge=1, description="threads inside one inference (ONNX Runtime or torch)"
    )
    batch_intra_op_threads: int = Field(
        2, ge=1, description="threads inside one inference of a large batch (ONNX Runtime or torch)"
    )
    batch_threads_min_tokens: int = Field(
        128, ge=1, description="padded tokens (texts x the longest) from which a batch is large"
    )
    workers: int = Field(1, ge=1, description="model runs at once, each in its own thread")

    # Batching
    max_batch_size: int = Field(64, ge=1, description="texts per batch; 1 turns batching off")
    max_batch_tokens: int = Field(
        8192, ge=256, description="padded tokens per batch: texts x the longest one"
    )
    max_queue_texts: int = Field(
        1024, ge=1, description="texts waiting at once; more get RESOURCE_EXHAUSTED"
    )

    # Input limits per request
    max_texts_per_request: int = Field(256, ge=1)
    max_chars_per_request: int = Field(200_000, ge=1)

    @model_validator(mode="after")
    def _request_fits_queue(self) -> Self:
        if self.max_texts_per_request > self.max_queue_texts:
            raise ValueError(
                "max_texts_per_request must not exceed max_queue_texts, "
                "or a full-size request could never be queued"
            )
        return self
