"""The semantic cache in the request path, end to end through real processes.

``python -m bench.cache_path --help``; what it does: :mod:`bench.cache_path`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from bench.cache_path.cases import measure
from bench.cache_path.report import report, summary_table
from bench.cache_path.stack import measured
from bench.runner import add_quiet_flags, run_and_report


def run(args: argparse.Namespace) -> dict[str, Any]:
    return {**measured(args, measure, dict(args.cached_env)), "cached_env": args.cached_env}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cache_path", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--concurrency",
        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
        default=[1, 8],
        help="comma-separated worker counts",
    )
    parser.add_argument("--rounds", type=int, default=4, help="times each hit question is timed")
    parser.add_argument(
        "--miss-pairs", type=int, default=60, help="never-seen questions per concurrency"
    )
    parser.add_argument("--burst", type=int, default=60, help="requests per fail-open burst")
    add_quiet_flags(parser, 1.5, 300.0)
    parser.add_argument(
        "--cached-env",
        type=lambda s: tuple(s.split("=", 1)),
        action="append",
        default=[],
        metavar="GATEWAY_X=VALUE",
        help="an extra setting for CACHED (repeatable), e.g. GATEWAY_CACHE_SEMANTIC=false",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--summarize",
        type=Path,
        nargs="+",
        default=None,
        help="print the target figures of these --json files and their medians; run nothing",
    )
    return parser.parse_args(argv)


def _json_value(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value


def _from_json(value: object) -> object:
    if value is None:
        return math.nan
    if isinstance(value, dict):
        return {k: v if k in _KEEP_NONE else _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


_KEEP_NONE = {"target_p50_ms", "ready_s", "hit_again_s", "similarity"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summarize:
        runs = [_from_json(json.loads(p.read_text())) for p in args.summarize]
        for r, p in zip(runs, args.summarize, strict=True):
            assert isinstance(r, dict)
            lw = r["load_wait"]
            print(f"{p}: {r['machine']['date']}, load average {lw[0]:.2f} before starting")
        print()
        print(summary_table(runs))  # type: ignore[arg-type]
        return 0
    return run_and_report(
        lambda: run(args),
        report,
        args.json,
        lambda result: json.dumps(_json_value(result), indent=2) + "\n",
    )


if __name__ == "__main__":
    sys.exit(main())
