"""The gateway's heap during the soak's mixed load: what grows, by traceback.

``python -m bench.soak_heap [--minutes 8]`` starts the soak's stack (real
``redis-server``, the embedder, the cache service on Redis, two mock replicas,
the gateway) with the gateway run under ``tracemalloc``: a thread in the
gateway takes a snapshot every ``--every-s`` seconds (after a full collection,
so only live objects count) and writes it, with the process's RSS and
tracemalloc's traced total, to ``var/log/soak-heap/``. The soak's load and its
replica restarts run meanwhile. At the end it prints RSS next to the traced
Python heap per snapshot (a heap flat while RSS grows is the allocator, not a
leak) and the allocation sites that grew most between the first snapshot
after ``--from-s`` and the last, grouped by traceback.

Why tracemalloc and not memray: the question is which live Python objects
accumulate, which a diff of two tracemalloc snapshots answers directly and
with nothing to install; memray's strength (native frames, every allocation
over time) is for a leak below Python, which the RSS-versus-traced comparison
shows first.

``python -m bench.soak_heap diff A B`` compares two saved snapshots again.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import runpy
import sys
import threading
import time
import tracemalloc
from collections.abc import Mapping
from pathlib import Path

import psutil

from bench.soak import faults, start_stack
from bench.soak import parse as soak_args
from bench.soak_load import drive
from deploy.local.harness import Stack as Harness
from deploy.local.procs import PYTHON, ROOT, Proc

OUT = ROOT / "var" / "log" / "soak-heap"
IGNORED = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>", "<unknown>")


# -- inside the gateway -----------------------------------------------------------------------


def serve() -> None:
    """Run ``python -m gateway`` with tracemalloc on and a thread writing snapshots."""
    out = Path(os.environ["SOAK_HEAP_DIR"])
    every = float(os.environ.get("SOAK_HEAP_EVERY_S", "60"))
    tracemalloc.start(int(os.environ.get("SOAK_HEAP_FRAMES", "16")))
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def snapshots() -> None:
        proc = psutil.Process()
        n = 0
        while True:
            time.sleep(every)
            gc.collect()
            snap = tracemalloc.take_snapshot()
            traced, _ = tracemalloc.get_traced_memory()
            snap.dump(str(out / f"{n:03d}.snap"))
            (out / f"census-{n:03d}.txt").write_text(census())
            with (out / "series.tsv").open("a") as f:
                rss = proc.memory_info().rss
                f.write(f"{n}\t{time.monotonic() - started:.0f}\t{rss}\t{traced}\n")
            n += 1

    threading.Thread(target=snapshots, name="heap-snapshots", daemon=True).start()
    sys.argv = ["gateway"]
    runpy.run_module("gateway", run_name="__main__", alter_sys=True)


def census(watch: tuple[str, ...] = ("Lease", "Call", "Found", "Embedded", "Task")) -> str:
    """Live objects by type (the 30 most numerous), and for the watched types what
    holds two of them (the types of their referrers, two levels up)."""
    objects = gc.get_objects()
    counts: dict[str, int] = {}
    by_type: dict[str, list[object]] = {}
    for obj in objects:
        name = type(obj).__name__
        counts[name] = counts.get(name, 0) + 1
        if name in watch:
            by_type.setdefault(name, []).append(obj)
    lines = [f"{n:8d} {name}" for name, n in sorted(counts.items(), key=lambda i: -i[1])[:30]]
    lines += [f"{len(by_type.get(name, ())):8d} {name} (watched)" for name in watch]
    for name, found in by_type.items():
        for obj in found[-2:]:
            lines.append(f"\nwhat holds a {name}: {obj!r:.120}")
            for ref in gc.get_referrers(obj):
                if ref is objects or ref is found:
                    continue
                up = [f"{type(r).__name__}" for r in gc.get_referrers(ref)][:6]
                lines.append(f"  {type(ref).__name__} {str(ref)[:100]!r} <- {up}")
    del objects, by_type
    return "\n".join(lines)


# -- the driver -------------------------------------------------------------------------------


class HeapHarness(Harness):
    """The soak's harness, but its gateway runs under :func:`serve`."""

    def __init__(self, log_dir: Path, every_s: float) -> None:
        super().__init__(log_dir, announce=True, fresh_logs=True)
        self.every_s = every_s

    def _python(self, name: str, port: int, module: str, env: Mapping[str, str]) -> Proc:
        if module != "gateway":
            return super()._python(name, port, module, env)
        env = {**env, "SOAK_HEAP_DIR": str(OUT), "SOAK_HEAP_EVERY_S": str(self.every_s)}
        return Proc(name, [PYTHON, "-m", "bench.soak_heap", "serve"], env=env, log_dir=self.log_dir)


def _load(path: Path) -> tracemalloc.Snapshot:
    snap = tracemalloc.Snapshot.load(str(path))
    return snap.filter_traces(
        [tracemalloc.Filter(False, name) for name in (*IGNORED, tracemalloc.__file__)]
    )


def diff(old: Path, new: Path, top: int = 15) -> None:
    """Print the sites that grew most from ``old`` to ``new``, by line and by traceback."""
    a, b = _load(old), _load(new)
    print(f"\n{old.name} -> {new.name}, by line (top {top}):\n")
    for stat in b.compare_to(a, "lineno")[:top]:
        print(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d}  {stat.traceback[0]}")
    print(f"\nby traceback (top {top // 2}, innermost frames last):")
    for stat in b.compare_to(a, "traceback")[: top // 2]:
        print(f"\n  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks")
        for line in stat.traceback.format(limit=8):
            print(f"    {line}")


def report(from_s: float) -> None:
    rows = [line.split("\t") for line in (OUT / "series.tsv").read_text().splitlines()]
    print("\n| snapshot | s | RSS MiB | traced MiB |\n|---|---|---|---|")
    for n, t, rss, traced in rows:
        print(f"| {n} | {t} | {int(rss) / 2**20:.1f} | {int(traced) / 2**20:.1f} |")
    first = next((r for r in rows if float(r[1]) >= from_s), rows[0])
    diff(OUT / f"{int(first[0]):03d}.snap", OUT / f"{int(rows[-1][0]):03d}.snap")


async def run(args: argparse.Namespace) -> None:
    with HeapHarness(OUT, args.every_s) as harness:
        for old in OUT.glob("*.snap"):
            old.unlink()
        (OUT / "series.tsv").unlink(missing_ok=True)
        stack = start_stack(harness, args.ttl_s)
        end = time.monotonic() + args.minutes * 60
        outcomes, _ = await asyncio.gather(
            drive(stack.gateway_url, args, end), faults(stack, args.restart_every_s, end)
        )
        failed = sum(1 for o in outcomes if not o.ok and not o.fault)
        print(f"{len(outcomes)} requests, {failed} failed without an injected fault")
        await asyncio.sleep(args.every_s + 5)  # one snapshot after the load
    report(args.from_s)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return serve()
    if argv[:1] == ["diff"]:
        return diff(Path(argv[1]), Path(argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--every-s", type=float, default=60.0)
    parser.add_argument("--from-s", type=float, default=150.0, help="diff from here to the end")
    parser.add_argument("--rps", type=float, default=20.0)
    known, rest = parser.parse_known_args(argv)
    args = soak_args(["--minutes", str(known.minutes), "--rps", str(known.rps), *rest])
    args.every_s, args.from_s = known.every_s, known.from_s
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
