"""The ``"fastest"`` section of ``batchmv bench``: the engine ``"fastest"`` picks against every
engine measured alone, each in its own process.

For each home library (numpy, torch) and each point (float32, A in C order), one child
process per engine times ``matvec(A, X, backend=engine)`` with nothing else running: the
engine in isolation.  Another child times ``backend="fastest"`` (tuned on its first call,
no tuning cache) in the same way, then both ``"fastest"`` and the home library's own
engine again with a GEMM of the home library between calls (the state of a program that
does its own work between matvec calls, in which two libraries' thread pools meet).  The
target: ``"fastest"`` within 5 % of the best isolated engine at every point; the second
pair shows whether the switch to another library's engine keeps its gain in use.

Every measurement follows :data:`batchmv._timing.SETTLE_S` seconds of the same calls: the
tuning runs every engine, and an idle thread pool keeps spinning for a while after its
last call (benchmarks/README.md, "Thread pools"), which slows the next library's calls: a
moment after tuning, not the state the calls run in.  Every call is timed through
:mod:`batchmv._timing`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from typing import Any

HOMES = ("numpy", "torch")
QUICK_POINTS = ((64, 64, 256), (1024, 1024, 256))
FULL_POINTS = ((64, 64, 256), (256, 256, 4096), (1024, 1024, 256), (1024, 1024, 4096), (4096, 4096, 64), (256, 256, 100_000))
_CHILD = "import sys, batchmv.tools.bench.isolation as i; i.child(sys.stdin.read())"


def run(config: Any, tick: Any) -> list[dict[str, Any]]:
    """Rows {home, m, n, batch, isolated: {engine: s}, fastest_s, chosen, between: {...}}."""
    import batchmv

    engines = [e for e in ("numpy", "torch", "jax") if e in batchmv.available_backends()]
    points = QUICK_POINTS if config.quick else FULL_POINTS
    rows = []
    for home in (h for h in HOMES if h in engines):
        found: dict[str, Any] = {}
        for rep in range(repeats(config)):  # the processes in turn, then again: the lower median counts
            for backend in (*engines, "fastest"):
                tick(f"fastest vs isolated engines: {home} arrays, {backend} in its own process")
                found[backend] = _lower(found.get(backend), _child(home, backend, points, config))
        for i, (m, n, b) in enumerate(points):
            isolated = {e: found[e][i]["median_s"] for e in engines if found[e][i].get("median_s")}
            fast = found["fastest"][i]
            best = min(isolated, key=isolated.__getitem__, default=None)
            rows.append({
                "home": home, "m": m, "n": n, "batch": b, "isolated": isolated, "best_isolated": best,
                "fastest_s": fast.get("median_s"), "chosen": fast.get("chosen"), "note": fast.get("note"),
                "ratio": fast["median_s"] / isolated[best] if best and fast.get("median_s") else None,
                "between": fast.get("between"), "error": fast.get("error"),
            })  # fmt: skip
    return rows


def repeats(config: Any) -> int:
    """Each process runs this many times: separate processes on a shared machine differ from
    run to run (benchmarks/README.md, "Thread pools"); the lower median of two is the
    steadier number."""
    return 1 if config.quick else 2


def _lower(old: list[dict[str, Any]] | None, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per point, the run with the lower median (a run without one loses)."""
    if old is None:
        return new
    key = lambda row: row.get("median_s") or math.inf  # noqa: E731
    return [o if key(o) <= key(n) else n for o, n in zip(old, new)]


def _child(home: str, backend: str, points: tuple, config: Any) -> list[dict[str, Any]]:
    spec = {"home": home, "backend": backend, "points": points, "min_time": config.min_time, "threads": config.threads}
    env = dict(os.environ)
    env.pop("BATCHMV_TUNE_CACHE", None)  # "fastest" measures afresh
    env.pop("BATCHMV_BACKEND", None)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD], input=json.dumps(spec), capture_output=True, text=True, env=env, timeout=900
        )
        if proc.returncode != 0 or not proc.stdout.strip():
            error = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            return [{"error": error} for _ in points]
        return json.loads(proc.stdout.splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError) as err:  # a hung child, or output that is not the JSON line
        return [{"error": f"{type(err).__name__}: {err}"} for _ in points]


def child(spec_text: str) -> None:
    """In the child process: time one engine (or "fastest") at every point; print JSON."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    import batchmv
    from batchmv import _registry, _timing, _tune

    from .timing import measure

    spec = json.loads(spec_text)
    home, backend, threads = spec["home"], spec["backend"], spec["threads"]
    home_engine = _registry.get_engine(home)
    for name in batchmv.available_backends() if backend == "fastest" else [backend]:
        if name in _registry.ENGINES:  # every library that will run, imported before its pool is sized
            _registry.get_engine(name)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    rows = []
    with threadpool_limits(limits=threads):
        for m, n, b in spec["points"]:
            rng = np.random.default_rng(m + n + b)
            A = home_engine.asarray(rng.standard_normal((m, n), dtype=np.float32))
            X = home_engine.asarray(rng.standard_normal((b, n), dtype=np.float32))
            row: dict[str, Any] = {}
            try:
                # copy=False: only engines that take the arrays as they are compete, as in "fastest"
                call = lambda: batchmv.matvec(A, X, backend=backend, copy=False)  # noqa: E731
                call()  # warm-up; "fastest" tunes here
                # the same calls for SETTLE_S seconds: the other pools fall idle meanwhile
                _timing.run_times(call, min_runs=1, max_runs=10**9, budget_s=_timing.SETTLE_S, warmup=0)
                row["median_s"] = measure(call, spec["min_time"]).median
                plan = batchmv.plan(A, X, backend=backend)
                row["chosen"] = plan.backend
                if backend == "fastest":
                    row["note"] = plan.notes[0] if plan.notes else None
                    work = _tune.home_work(home_engine, X)
                    budget = max(spec["min_time"], 0.05)
                    own = lambda: batchmv.matvec(A, X, backend=home)  # noqa: E731
                    alone = _timing.median_seconds(work)
                    row["between"] = {
                        "home_engine_s": max(_timing.rounds_in_use(own, work, budget) - alone, 0.0),
                        "fastest_s": max(_timing.rounds_in_use(call, work, budget) - alone, 0.0),
                        "work_alone_s": alone,
                    }
            except Exception as err:  # noqa: BLE001 - reported in the table
                row["error"] = f"{type(err).__name__}: {err}"
            rows.append(row)
    print(json.dumps(rows))


def children(config: Any) -> int:
    """How many child processes :func:`run` starts (for the progress bar)."""
    import batchmv

    engines = [e for e in ("numpy", "torch", "jax") if e in batchmv.available_backends()]
    return sum(len(engines) + 1 for h in HOMES if h in engines) * repeats(config)
