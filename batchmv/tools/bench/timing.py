"""Timing for the bench: the median (and IQR) of blocks of calls after a warm-up, in the
manner of ``timeit``: the number of calls per block is calibrated so that a block takes
about a tenth of ``--min-time``, and blocks run until ``--min-time`` has passed (at least
3 blocks).  Two calls can also be timed alternating block by block (:func:`paired`), so
that a change in the machine's load hits both alike.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable


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
        start = time.perf_counter()
        fn()
        first = time.perf_counter() - start
    if first < min_time:  # a second warm-up call (the first may include compilation)
        start = time.perf_counter()
        fn()
        first = time.perf_counter() - start
    number = max(1, int(min_time / 10 / max(first, 1e-9)))
    min_blocks = 3 if first >= min_time / 2 else 5
    times: list[float] = []
    total = 0.0
    enabled = gc.isenabled()
    gc.disable()
    try:
        while len(times) < min_blocks or (total < min_time and len(times) < 1000):
            start = time.perf_counter()
            for _ in range(number):
                fn()
            elapsed = time.perf_counter() - start
            times.append(elapsed / number)
            total += elapsed
    finally:
        if enabled:
            gc.enable()
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return Timing(statistics.median(times), q[2] - q[0], min(times), len(times), number)


def paired(fa: Callable[[], Any], fb: Callable[[], Any], ta: float, tb: float, min_time: float) -> tuple[float, int]:
    """Median over alternating blocks (a, b, a, b, ...) of time(a) / time(b) per call."""
    na, nb = max(1, int(min_time / 10 / ta)), max(1, int(min_time / 10 / tb))
    least = 3 if max(ta, tb) >= min_time / 2 else 7
    ratios: list[float] = []
    total = 0.0
    enabled = gc.isenabled()
    gc.disable()
    try:
        while len(ratios) < least or (total < 2 * min_time and len(ratios) < 1000):
            start = time.perf_counter()
            for _ in range(na):
                fa()
            mid = time.perf_counter()
            for _ in range(nb):
                fb()
            end = time.perf_counter()
            ratios.append(((mid - start) / na) / ((end - mid) / nb))
            total += end - start
    finally:
        if enabled:
            gc.enable()
    return statistics.median(ratios), len(ratios)
