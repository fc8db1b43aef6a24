"""Settings come from MOCKLLM_* variables and are validated once, at start."""

import pydantic
import pytest

from mockllm.settings import Settings


def test_defaults_match_the_documented_ones() -> None:
    s = Settings()
    assert (s.host, s.port, s.models) == ("127.0.0.1", 8001, ("mock-llama-3-8b",))
    assert (s.ttft_ms, s.inter_token_ms, s.output_tokens, s.max_concurrency) == (20, 5, 32, 64)
    assert (s.queue_style, s.fault) == ("vllm", "")


def test_environment_is_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOCKLLM_MODELS", "a, b ,c")
    monkeypatch.setenv("MOCKLLM_PORT", "9100")
    monkeypatch.setenv("MOCKLLM_QUEUE_STYLE", "llamacpp")
    monkeypatch.setenv("MOCKLLM_FAULT", "status:503")
    s = Settings()
    assert s.models == ("a", "b", "c")
    assert s.port == 9100
    assert s.queue_style == "llamacpp"
    assert s.fault == "status:503"


@pytest.mark.parametrize(
    ("name", "value"),
    [("MOCKLLM_FAULT", "explode"), ("MOCKLLM_MODELS", " , "), ("MOCKLLM_QUEUE_STYLE", "x")],
)
def test_bad_values_fail_at_start(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(pydantic.ValidationError):
        Settings()


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(pydantic.ValidationError):
        s.port = 1  # type: ignore[misc]
