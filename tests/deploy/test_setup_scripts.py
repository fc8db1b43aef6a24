"""The set-up `make test` does on a fresh machine, checked without doing it.

deploy/local/system-packages.sh must do nothing when every package is there,
and stop with one line naming what to install when it cannot install (not
root, or no apt-get); the llama.cpp build's progress is read from both of the
build tools' progress lines.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from deploy.local.llamacpp import _percent

SCRIPT = Path(__file__).resolve().parents[2] / "deploy/local/system-packages.sh"


def _run(target: str, path: str, cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path}
    if cache is not None:
        env["XDG_CACHE_HOME"] = str(cache)
    return subprocess.run(
        ["/bin/bash", str(SCRIPT), target], env=env, capture_output=True, text=True, timeout=30
    )


def test_nothing_is_printed_or_installed_when_all_is_there() -> None:
    present = _run("test", os.environ["PATH"])
    if present.returncode != 0:
        pytest.skip("this machine lacks a test package: " + present.stderr.strip())
    assert present.stdout == present.stderr == ""


def test_without_apt_get_it_stops_with_one_line_naming_the_packages(tmp_path: Path) -> None:
    # A PATH holding only the shell's basics: no redis-server, no promtool, no apt-get.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("id", "python3", "grep"):
        found = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        (bin_dir / tool).symlink_to(found)
    # A kubectl already fetched into the machine cache: nothing is downloaded here.
    cached = tmp_path / "cache/llmgw/bin/kubectl"
    cached.parent.mkdir(parents=True)
    cached.write_text("#!/bin/sh\n")
    cached.chmod(0o755)
    missing = _run("test", str(bin_dir), cache=tmp_path / "cache")
    assert missing.returncode == 1
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1, missing.stderr
    for package in ("redis-server", "prometheus", "cmake", "g++"):
        assert package in lines[0]


def test_an_unknown_target_is_refused() -> None:
    assert _run("everything", os.environ["PATH"]).returncode == 2


@pytest.mark.parametrize(
    ("line", "percent"),
    [
        ("[12/80] /usr/bin/g++ -c ggml.c", 15),
        ("[80/80] Linking CXX shared library libllama.so", 100),
        ("[ 45%] Building CXX object src/llama.cpp.o", 45),
        ("  [100%] Built target llama", 100),
        ("-- Configuring done", None),
        ("note: see [1/2] above", None),
    ],
)
def test_the_build_progress_is_read_from_ninja_and_make_lines(
    line: str, percent: int | None
) -> None:
    assert _percent(line) == percent
