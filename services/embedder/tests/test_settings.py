"""Settings come from EMBEDDER_* variables and refuse limits that contradict each other."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from embedder.settings import EmbedderSettings


def test_defaults_serve_the_fast_backend_on_the_documented_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("EMBEDDER_PORT", "EMBEDDER_METRICS_PORT", "EMBEDDER_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    settings = EmbedderSettings()
    assert (settings.port, settings.metrics_port, settings.backend) == (50051, 9101, "onnx-int8")
    assert settings.cache_dir.parts[-2:] == (".cache", "embedder")


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDDER_BACKEND", "torch")
    monkeypatch.setenv("EMBEDDER_MAX_BATCH_SIZE", "1")
    monkeypatch.setenv("EMBEDDER_CACHE_DIR", "/opt/embedder")
    settings = EmbedderSettings()
    assert settings.backend == "torch"
    assert settings.max_batch_size == 1
    assert str(settings.cache_dir) == "/opt/embedder"


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValidationError):
        EmbedderSettings(backend="onnx-fp16")  # type: ignore[arg-type]


def test_a_request_limit_larger_than_the_queue_is_refused() -> None:
    with pytest.raises(ValidationError, match="max_queue_texts"):
        EmbedderSettings(max_queue_texts=8, max_texts_per_request=16)


def test_settings_are_frozen() -> None:
    settings = EmbedderSettings()
    with pytest.raises(ValidationError):
        settings.port = 1  # type: ignore[misc]
