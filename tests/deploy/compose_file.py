"""deploy/compose.yml read the way the checks need it: each service's settings class
and published ports, and the environment compose gives a service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings

from embedder.settings import EmbedderSettings
from gateway.settings import GatewaySettings
from mockllm.settings import Settings as MockSettings
from semcache.settings import CacheSettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

# Each service of ours, and the settings class its environment must parse as.
SETTINGS: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings,
    "embedder": EmbedderSettings,
    "cache": CacheSettings,
    "mock-llm-1": MockSettings,
    "mock-llm-2": MockSettings,
}
# The ports each service publishes.
PUBLISHED = {
    "gateway": {8000, 9100},
    "embedder": {50051, 9101},
    "cache": {50052, 9102},
    "mock-llm-1": {8001},
    "mock-llm-2": {8002},
    "prometheus": {9090},
    "grafana": {3000},
}


def env_of(compose: dict[str, Any], service: str) -> dict[str, str]:
    env = compose["services"][service].get("environment", {})
    assert isinstance(env, dict), f"{service}: write environment as a mapping"
    return {key: str(value) for key, value in env.items()}
