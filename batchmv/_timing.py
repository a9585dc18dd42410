"""The one timer of batchmv: how ``"fastest"`` and the tools (``bench``, ``demo``, the
isolation runner) time a call.

Every figure is a median of per-call times, so one slow run (a page fault, another
process on the core) does not move it.  Work that a library dispatches asynchronously
(jax, CUDA streams) is waited for inside each timed run (:func:`wait`).
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

#: Seconds a timed call first runs with other work between its calls, before it is timed:
#: long enough that the thread pools of libraries timed before it have stopped spinning
#: (benchmarks/README.md, "thread pools").
SETTLE_S = 0.15


def wait(y: Any) -> Any:
    """Wait until ``y`` is computed (jax dispatches asynchronously; GPUs run on streams);
    return it."""
    if hasattr(y, "block_until_ready"):
        y.block_until_ready()
    elif getattr(y, "is_cuda", False) is True:  # a torch CUDA tensor
        sys.modules["torch"].cuda.synchronize(y.device)
    elif type(y).__module__.split(".")[0] == "cupy":
        y.device.synchronize()
    return y


def run_times(
    run: Callable[[], Any], *, min_runs: int = 3, max_runs: int = 1000, budget_s: float = 0.0,
    number: int = 1, warmup: int = 1,
) -> list[float]:
    """Seconds per call of ``run`` (each waited for), over blocks of ``number`` calls:
    ``warmup`` untimed calls first, then at least ``min_runs`` blocks and more while
    ``budget_s`` seconds of timed blocks last, at most ``max_runs``.  The garbage collector
    is paused while timing."""  # fmt: skip
    for _ in range(warmup):
        wait(run())
    times: list[float] = []
    total = 0.0
    enabled = gc.isenabled()
    gc.disable()
    try:
        while len(times) < min_runs or (total < budget_s and len(times) < max_runs):
            start = time.perf_counter()
            for _ in range(number):
                wait(run())
            elapsed = time.perf_counter() - start
            times.append(elapsed / number)
            total += elapsed
    finally:
        if enabled:
            gc.enable()
    return times


def median_seconds(run: Callable[[], Any], *, min_runs: int = 3, max_runs: int = 15, budget_s: float = 0.02) -> float:
    """Median seconds of ``run()`` after one warm-up call (see :func:`run_times`)."""
    return statistics.median(run_times(run, min_runs=min_runs, max_runs=max_runs, budget_s=budget_s))


def rounds_in_use(run: Callable[[], Any], work: Callable[[], Any], budget_s: float = 0.05) -> float:
    """Median seconds of a round of ``work()`` followed by ``run()``, once such rounds have
    run for :data:`SETTLE_S` seconds: at least 3 rounds, then more while ``budget_s``
    seconds last.  A round counts both ways two thread pools meet: the work right after
    the previous call, and the call right after the work."""
    def round_() -> None:
        work()
        wait(run())

    end = time.perf_counter() + SETTLE_S
    while time.perf_counter() < end:
        round_()
    return statistics.median(run_times(round_, min_runs=3, max_runs=1000, budget_s=budget_s, warmup=0))
