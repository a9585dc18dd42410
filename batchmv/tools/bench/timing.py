"""Timing for the bench: the median (and IQR) of blocks of calls after a warm-up, in the
manner of ``timeit``: the number of calls per block is calibrated so that a block takes
about a tenth of ``--min-time``, and blocks run until ``--min-time`` has passed (at least
3 blocks).  Two calls can also be timed alternating block by block (:func:`paired`), so
that a change in the machine's load hits both alike, and several (:func:`alternated`).

Every call is timed through :mod:`batchmv._timing`, the library's one timer: each result
is waited for (jax dispatches asynchronously, GPUs run on streams) and the garbage
collector is paused while a block runs.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable

from batchmv import _timing


@dataclass
class Timing:
    median: float  #: seconds per call
    iqr: float  #: interquartile range of the per-call times of the blocks, seconds
    best: float  #: the fastest block's seconds per call
    blocks: int
    number: int  #: calls per block


def measure(fn: Callable[[], Any], min_time: float, first: float | None = None) -> Timing:
    """Median and IQR of the per-call time of ``fn`` over blocks of calls (after a warm-up,
    or after a call that took ``first`` seconds, which serves as the warm-up)."""
    if first is None:
        first = seconds_per_call(fn)
    if first < min_time:  # a second warm-up call (the first may include compilation)
        first = seconds_per_call(fn)
    number = max(1, int(min_time / 10 / max(first, 1e-9)))
    times = _timing.run_times(
        fn, min_runs=3 if first >= min_time / 2 else 5, max_runs=1000, budget_s=min_time, number=number, warmup=0
    )
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return Timing(statistics.median(times), q[2] - q[0], min(times), len(times), number)


def alternated(fns: dict[str, Callable[[], Any]], min_time: float, rounds: int = 7) -> dict[str, Timing]:
    """Medians of the per-call times of several calls timed in alternation: each round
    times one block of every call, in an order that rotates from round to round, so that
    a change in the machine's load hits them all alike; at least ``rounds`` rounds, until
    ``min_time`` has passed per call.  (For tiny calls: every block of one size.)"""
    names = list(fns)
    firsts = {name: seconds_per_call(fns[name], 100) for name in names}  # (warm-up)
    number = max(1, int(min_time / 10 / max(max(firsts.values()), 1e-9)))
    times: dict[str, list[float]] = {name: [] for name in names}
    spent, done = 0.0, 0
    while done < rounds or spent < min_time * len(names):
        for name in names[done % len(names) :] + names[: done % len(names)]:
            seconds = seconds_per_call(fns[name], number)
            times[name].append(seconds)
            spent += seconds * number
        done += 1
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4)
        out[name] = Timing(statistics.median(ts), q[2] - q[0], min(ts), len(ts), number)
    return out


def seconds_per_call(fn: Callable[[], Any], number: int = 1) -> float:
    """Seconds per call of one block of ``number`` calls of ``fn``, no warm-up."""
    (seconds,) = _timing.run_times(fn, min_runs=1, max_runs=1, number=number, warmup=0)
    return seconds


def timed_call(fn: Callable[[], Any]) -> tuple[Any, float]:
    """The result of one call of ``fn`` and its seconds (a warm-up whose result is checked)."""
    results: list[Any] = []

    def call() -> Any:
        results.append(fn())
        return results[-1]

    seconds = seconds_per_call(call)
    return results[0], seconds


def paired(
    fa: Callable[[], Any], fb: Callable[[], Any], ta: float, tb: float, min_time: float, settle: float = 0.0
) -> tuple[float, int]:
    """Median over alternating blocks (a, b, a, b, ...) of time(a) / time(b) per call, the
    blocks sized from the per-call times ``ta`` and ``tb`` as in :func:`measure`.
    ``settle``: seconds each block of ``fa`` first runs untimed, so that the thread pool
    ``fb`` woke has gone idle (benchmarks/README.md, "Thread pools"); then 3 pairs."""
    na, nb = max(1, int(min_time / 10 / ta)), max(1, int(min_time / 10 / tb))
    least = 3 if max(ta, tb) >= min_time / 2 or settle else 7
    ratios: list[float] = []
    total = 0.0
    while len(ratios) < least or (total < 2 * min_time and len(ratios) < (3 if settle else 1000)):
        a, b = _settled(fa, na, settle), seconds_per_call(fb, nb)
        ratios.append(a / b)
        total += a * na + b * nb
    return statistics.median(ratios), len(ratios)


def _settled(fn: Callable[[], Any], number: int, settle: float) -> float:
    if settle:
        _timing.run_times(fn, min_runs=1, max_runs=10**9, budget_s=settle, warmup=0)
    return seconds_per_call(fn, number)
