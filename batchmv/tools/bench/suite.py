"""A ``batchmv bench`` run in order: the roofline, the grid, the tiny calls, the roofline
again, ``"fastest"`` against each engine alone, and the targets, with a progress line."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import sys
import time
from collections.abc import Iterator
from typing import Any

from . import approaches, grid, isolation, machine, overhead, roofline, skinny, sparse, targets
from .config import Config, cpu_count


def run(config: Config) -> dict[str, Any]:
    """Run the benchmark; return the report (JSON-serialisable)."""
    jax_before = "jax" in sys.modules  # then its thread pool may already exist, on every CPU
    cpus = cpu_count()
    pinned = machine.pin(config.threads)
    try:
        return _run(config, jax_before, cpus)
    finally:
        if pinned is not None:
            os.sched_setaffinity(0, pinned)


def _run(config: Config, jax_before: bool, cpus: int) -> dict[str, Any]:
    libs = machine.import_libraries()
    if "numpy" not in libs:
        raise RuntimeError("batchmv bench needs numpy")
    import batchmv

    started = time.time()
    with _pools(libs, config.threads, x64="float64" in config.dtypes):
        found = approaches.available(libs, batchmv, config.cross)
        timed = [a for a in found if config.only is None or any(text in a.name.lower() for text in config.only)]
        about = machine.describe(libs, config, cpus)
        if jax_before and "jax" in libs:
            about["threads_note"] += " (jax was imported before the run: its threads may use every CPU)"
        points = grid.points(config) if config.main else []
        alone = config.main and config.cross and any("fastest" in a.name for a in timed)
        total = 2 * (2 + 2 * len(libs) * len(config.dtypes)) + sum(
            len([a for a in timed if a.runs_at(d, lay, b, config.all_peers)]) for (_, _, b, d, lay) in points
        ) + (isolation.children(config) if alone else 0) + skinny.count(config, found)
        bar = _progress(total, config.progress)
        tick = functools.partial(_tick, bar)
        try:
            start = roofline.measure(libs, config, tick)
            results = grid.run(libs, batchmv, config, timed, points, start, tick) if points else []
            if config.skinny:
                results += skinny.run(libs, batchmv, config, found, start, tick, grid.run)
            tick("overhead at m = n = 16")
            tiny = overhead.measure(libs, batchmv, config) if config.main else []
            # the roofline again: on a shared machine the first one may have met a busy moment
            roof = roofline.merge(start, roofline.measure(libs, config, tick))
            roofline.annotate(results, roof)
            fastest = isolation.run(config, tick) if alone else []
        finally:
            if bar is not None:
                bar.close()
        about["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report = {
        "format": "batchmv-bench/1",
        "machine": about,
        "config": dataclasses.asdict(config),
        "roofline": roof,
        "approaches": [
            {"name": a.name, "home": a.home, "engine": a.engine, "kind": a.kind, "linear": a.linear, "dtypes": list(a.dtypes)}
            for a in (timed if config.main else []) + (skinny.approaches(found, None, {}) if config.skinny else [])
        ],
        "results": results,
        "overhead": tiny,
        "fastest": fastest,
        "seconds": round(time.time() - started, 1),
    }
    report["targets"] = targets.check(report)
    return report


def run_sparse(config: Config) -> dict[str, Any]:
    """Run the sparse section alone (``--sparse``); return its report (JSON-serialisable)."""
    cpus = cpu_count()
    pinned = machine.pin(config.threads)
    libs = machine.import_libraries()
    import batchmv

    started = time.time()
    try:
        with _pools(libs, config.threads, x64=True):
            about = machine.describe(libs, config, cpus)
            densities, batches, _ = sparse.points(config.quick)
            bar = _progress(len(densities) * len(batches) * len(libs), config.progress)
            try:
                rows = sparse.run(libs, batchmv, config.quick, config.min_time, config.max_call, functools.partial(_tick, bar))
            finally:
                if bar is not None:
                    bar.close()
            about["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    finally:
        if pinned is not None:
            os.sched_setaffinity(0, pinned)
    return {
        "format": "batchmv-bench/1", "section": "sparse", "machine": about, "config": dataclasses.asdict(config),
        "results": rows, "seconds": round(time.time() - started, 1), "targets": [sparse.check(rows)],
    }  # fmt: skip


@contextlib.contextmanager
def _pools(libs: dict[str, Any], threads: int, x64: bool) -> Iterator[None]:
    """Every library's threads set to ``threads`` (BLAS through threadpoolctl, torch's own
    setting) and, with ``x64``, jax's 64-bit types switched on; all as they were after."""
    from threadpoolctl import threadpool_limits

    torch, jax = libs.get("torch"), libs.get("jax")
    torch_threads = torch.get_num_threads() if torch is not None else None
    x64_before = bool(jax.config.jax_enable_x64) if jax is not None and x64 else None
    try:
        if x64_before is not None:
            jax.config.update("jax_enable_x64", True)
        with threadpool_limits(limits=threads):
            if torch is not None:
                torch.set_num_threads(threads)
            yield
    finally:
        if torch is not None:
            torch.set_num_threads(torch_threads)
        if x64_before is not None:
            jax.config.update("jax_enable_x64", x64_before)


class _Counter:
    """Progress for a stderr that is not a terminal (a log file): one line every ``every`` seconds."""

    def __init__(self, total: int, every: float = 20.0) -> None:
        self.total, self.every, self.n, self.label = total, every, 0, ""
        self.start = self.last = time.monotonic()

    def set_description_str(self, label: str, refresh: bool = False) -> None:
        self.label = label

    def update(self, count: int = 1) -> None:
        self.n += count
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            elapsed = now - self.start
            print(f"batchmv bench: {self.n}/{self.total} after {elapsed:.0f} s: {self.label}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    """A tqdm progress bar on stderr when it is a terminal, otherwise a line every 20 s."""
    if not enabled:
        return None
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm

            width = shutil.get_terminal_size((100, 24)).columns or 100  # a terminal may report 0 columns
            return tqdm(total=total, file=sys.stderr, unit="run", ncols=min(width, 140), mininterval=0.5, leave=False)
        except ImportError:
            pass
    return _Counter(total)


def _tick(bar: Any, label: str, count: int = 1) -> None:
    if bar is not None:
        bar.set_description_str(label[:60], refresh=False)
        bar.update(count)
