"""Percentiles, summaries and Markdown tables, shared by every benchmark.

One scale: ``q`` is a percentage, 0..100 (p99 is ``percentile(xs, 99)``). Methods,
by numpy's names where numpy has one; each benchmark keeps the method its
published figures were computed with, so that new runs compare with old ones:

- ``nearest-rank`` (the default): the smallest value with at least q % of the
  values at or below it (with few values, p99 is the largest);
- ``lower`` / ``higher``: the value just below / above position
  ``q / 100 * (n - 1)`` of the sorted values;
- ``linear``: interpolated between those two (numpy's default).

Ranks are computed in exact arithmetic (``q`` read as the decimal it prints as),
so p99.9 of 1,000 values is the 999th, not the 1,000th by a rounding error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any, Literal

import numpy as np

Method = Literal["nearest-rank", "lower", "higher", "linear"]


def percentile(values: Iterable[float], q: float, method: Method = "nearest-rank") -> float:
    """The ``q``-th percentile (``q`` in 0..100) of ``values``; NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"q is a percentage, 0..100: {q}")
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return math.nan
    share = Fraction(str(q)) / 100
    if method == "nearest-rank":
        return ordered[max(1, math.ceil(share * n)) - 1]
    if method == "lower":
        return ordered[math.floor(share * (n - 1))]
    if method == "higher":
        return ordered[math.ceil(share * (n - 1))]
    if method == "linear":
        return float(np.quantile(ordered, float(share)))
    raise ValueError(f"unknown percentile method {method!r}")


def summary(
    values: Iterable[float],
    qs: Sequence[float] = (50, 90, 99),
    name: str = "p{q:g}",
    method: Method = "nearest-rank",
) -> dict[str, float]:
    """Several percentiles of the same values, keyed by ``name`` (``{q}``: the percentage):
    ``summary(ttfts, (50, 99), "ttft_p{q:g}_ms")`` gives ``ttft_p50_ms`` and ``ttft_p99_ms``."""
    ordered = sorted(values)
    return {name.format(q=q): percentile(ordered, q, method) for q in qs}


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: a float with ``digits`` decimals, ``-`` for None or NaN, else ``str``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def counts(counted: Mapping[str, int]) -> str:
    """``{"MISS": 3, "HIT-EXACT": 9}`` as ``HIT-EXACT 9, MISS 3``; ``none`` for an empty
    key, ``-`` for nothing counted."""
    return ", ".join(f"{k or 'none'} {v}" for k, v in sorted(counted.items())) or "-"


def md_row(cells: Iterable[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def md_header(header: Sequence[str]) -> str:
    """A Markdown table's header line and the line under it."""
    return md_row(header) + "\n|" + "---|" * len(header)


def md_table(header: Sequence[str], rows: Iterable[Iterable[object]]) -> str:
    return "\n".join([md_header(header), *(md_row(r) for r in rows)])
