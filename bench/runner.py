"""What running a benchmark takes besides measuring: the machine it ran on, a quiet
machine to start on, the event loop, and stopping cleanly on SIGTERM or Ctrl-C.

A benchmark's ``main`` sets :func:`terminate` as the SIGTERM handler, so that a
``finally`` stops every process it started; :func:`run_loop` runs its coroutine
on uvloop with SIGTERM cancelling it; :func:`interruptible` turns Ctrl-C (or a
cancelled loop) into one line and exit status 130.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import uvloop

T = TypeVar("T")
INTERRUPTED = 130


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """When and where: the date (UTC), CPUs, CPU model and Python version."""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
    }


def wait_for_quiet(below: float, max_wait_s: float) -> tuple[float, float, float]:
    """Wait until the 1-minute load average is under ``below`` (at most ``max_wait_s``);
    return the load averages (1, 5, 15 min) it started with."""
    deadline = time.monotonic() + max_wait_s
    load = os.getloadavg()
    while load[0] >= below and time.monotonic() < deadline:
        print(f"load average {load[0]:.2f} >= {below}: waiting ...", file=sys.stderr, flush=True)
        time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
        load = os.getloadavg()
    return load


def terminate(signum: int, _frame: object) -> NoReturn:
    """SIGTERM handler: exit through every ``finally``, so started processes are stopped."""
    raise SystemExit(128 + signum)


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop; SIGTERM cancels it (Ctrl-C already does, via asyncio.Runner)."""

    async def guarded() -> T:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await coro

    try:
        return uvloop.run(guarded())
    finally:
        signal.signal(signal.SIGTERM, terminate)  # the loop took it over


def interruptible(run: Callable[[], T], stopped: str = "everything started is stopped") -> T | None:
    """``run()`` with SIGTERM handled by :func:`terminate`; on Ctrl-C (or a cancelled
    loop) print ``interrupted: <stopped>`` and return None (exit with ``INTERRUPTED``)."""
    signal.signal(signal.SIGTERM, terminate)
    try:
        return run()
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"interrupted: {stopped}", file=sys.stderr)
        return None


def add_quiet_flags(parser: argparse.ArgumentParser, below: float, wait_s: float) -> None:
    """``--load-below`` and ``--wait-load``, for :func:`wait_for_quiet`."""
    parser.add_argument(
        "--load-below", type=float, default=below, help="wait for this load average"
    )
    parser.add_argument("--wait-load", type=float, default=wait_s, help="longest wait for it (s)")


def run_and_report(
    run: Callable[[], T],
    report: Callable[[T], str],
    json_path: Path | None,
    dump: Callable[[T], str],
) -> int:
    """``main``'s common part: run (see :func:`interruptible`), print the report, keep
    ``dump(result)`` in ``json_path`` if given; the exit status."""
    result = interruptible(run)
    if result is None:
        return INTERRUPTED
    print(report(result))
    if json_path is not None:
        json_path.write_text(dump(result))
    return 0
