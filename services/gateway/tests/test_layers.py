"""The gateway's layers (drawn in services/gateway/README.md) hold: a module
imports only its own package and the layers below its own. Two packages on
one layer do not import each other (``proxy`` and ``cache`` meet in
``serving``, not in each other)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gateway"

# Bottom first. Keep in step with the drawing in services/gateway/README.md.
LAYERS = [
    {"protocol"},
    {"errors", "metrics", "tracing"},
    {"responses", "asgi", "balance", "tenancy"},
    {"flow"},  # flow control: over the pool's readings and the tenants, under the proxy
    {"settings", "clients"},  # settings builds the balance and tenancy configs
    {"proxy", "cache", "gate"},
    {"serving"},
    {"api"},
    {"app"},
    {"__main__"},
]
LAYER = {part: n for n, parts in enumerate(LAYERS) for part in parts}


def _part(module: str) -> str:
    return module.split(".")[1]


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return [name for name in names if name.startswith("gateway.")]


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_part_of_the_gateway_has_a_layer() -> None:
    parts = {path.relative_to(PACKAGE).parts[0].removesuffix(".py") for path in MODULES}
    assert parts - {"__init__"} == set(LAYER)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_runs_up_or_across_the_layers(path: Path) -> None:
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    if own == "__init__":
        return
    wrong = [
        name for name in _imports(path) if _part(name) != own and LAYER[_part(name)] >= LAYER[own]
    ]
    assert not wrong, f"{own} (layer {LAYER[own]}) imports {wrong}"


def test_the_check_sees_a_wrong_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from gateway.serving import Completions\n")
    assert [_part(name) for name in _imports(bad)] == ["serving"]
    assert LAYER["serving"] >= LAYER["cache"]
