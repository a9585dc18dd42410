"""The grid: every approach at every point, on the same arrays, in one process.

Peers whose cost grows linearly with the batch (Python loops, the broadcast matmul and
``bmm``, ``numpy.matvec``, ``numpy.einsum``: one matrix-vector product per vector) are
timed on the first k vectors and scaled to the whole batch when a call on all of them
would take longer than twice ``--min-time`` (loops: at most ``--loop-rows`` vectors); the
table marks them with ``*``.  Other calls estimated above ``--max-call`` (twice the
roofline time plus the time to write y into fresh memory) and points whose arrays exceed
``--max-memory`` are skipped and marked.

Target (1) compares medians; where batchmv is more than 5 % slower than the best native
call, the two are timed again alternating block by block and that paired ratio decides.
"""

from __future__ import annotations

import gc
import math
import os
import time
from typing import Any, Callable

from batchmv import _timing

from .approaches import Approach, NotApplicable
from .arrays import at_point, itemsize, max_rel_error, tolerance
from .config import HOMES, Config
from .roofline import bandwidth, engine_peak, roof
from .targets import NATIVE_LIMIT_S, TARGET3_CHECKS, TARGET3_POINT
from .timing import Timing, measure, paired, seconds_per_call, timed_call


def points(config: Config) -> list[tuple[int, int, int, str, str]]:
    """(m, n, batch, dtype, layout) in the order they run: batches ascending per shape."""
    return [
        (m, n, b, dtype, layout)
        for (m, n) in config.shapes
        for b in config.batches
        for dtype in config.dtypes
        for layout in config.layouts
    ]


def run(libs, batchmv, config, approaches, points, roofline, tick, pair_all=0.0) -> list[dict[str, Any]]:  # noqa: ANN001
    """The result rows of every applicable approach at every point; ``tick(label, count=1)``
    reports progress.  ``pair_all`` (seconds, or 0): every batchmv call of a home engine is
    timed again alternating with the best native call (not only those over 1.05 x its
    median), for about twice that many seconds; with more than one thread, each timing of
    a batchmv call then first runs it for :data:`batchmv._timing.SETTLE_S` seconds, so that
    the thread pool a native call before it woke has gone idle (row blocks run in a pool of
    Python threads that sleep when idle; OpenBLAS's and OpenMP's spin for a while)."""
    settle = _timing.SETTLE_S if pair_all and config.threads > 1 else 0.0
    results: list[dict[str, Any]] = []
    #: per (m, n, dtype, layout, approach): (batch, seconds) of the last measurement, to estimate the next
    last: dict[tuple[Any, ...], tuple[int, float]] = {}
    cache: dict[tuple[Any, ...], Any] = {}
    for m, n, b, dtype, layout in points:
        key = (m, n)
        if cache.get("key") != key:  # new arrays for each (m, n) (x: for each batch); freed before the next
            cache.clear()
            gc.collect()
            cache["key"] = key
        applicable = [a for a in approaches if a.runs_at(dtype, layout, b, config.all_peers)]
        nbytes = (m * n + b * n + b * m) * itemsize(dtype)
        point = {"m": m, "n": n, "batch": b, "dtype": dtype, "layout": layout}
        if nbytes > config.max_memory_gb * 1e9:
            for a in applicable:
                results.append({**point, **_ident(a), "skipped": f"A, x and y take {nbytes / 1e9:.1f} GB > --max-memory"})
            tick(f"{m}x{n} b={b} {dtype} {layout}: skipped (memory)", len(applicable))
            continue
        arrays = at_point(libs, cache, m, n, b, dtype, layout)
        ref_rows = min(b, 8)
        ref = arrays["X64"][:ref_rows] @ arrays["A64"].T
        kept: dict[str, tuple[dict[str, Any], Callable[[], Any]]] = {}  # for target (1)'s paired re-measurement
        for a in applicable:
            tick(f"{m}x{n} b={b} {dtype} {layout}: {a.name}")
            row = {**point, **_ident(a)}
            results.append(row)
            peak = engine_peak(roofline, a.engine, dtype)
            flops = 2 * m * n * b
            ai, attainable = roof(peak or math.inf, bandwidth(roofline, dtype), m, n, b, dtype)
            row.update(ai=ai, attainable_gflops=attainable, peak_gflops=peak)
            # estimate: twice the roofline time; for the linear peers, the fastest block of the
            # last measurement (at a smaller batch) scaled linearly when that is longer
            est = 2 * flops / (attainable * 1e9) + b * m * itemsize(dtype) / (roofline["fresh_write_gbs"] * 1e9)
            prev = last.get((m, n, dtype, layout, a.name))
            if prev is not None and a.linear:
                est = max(est, prev[1] * b / prev[0])
            rows = b
            if a.linear and est > 2 * config.min_time:  # exact to scale: time about 2 * --min-time worth of rows
                rows = max(min(b, 16), int(b * 2 * config.min_time / est))
            elif est > config.max_call:
                row["skipped"] = f"estimated {est:.2g} s per call > --max-call {config.max_call:g} s"
                continue
            if a.name.endswith("loop A @ x[i]"):
                rows = min(rows, config.loop_rows)
            A, X = arrays[a.home]
            wall = time.perf_counter()
            try:
                fn = a.make(A, X if rows == b else X[:rows])
                y, first = timed_call(fn)
                row["first_call_s"] = first  # includes compilation (jax.jit) and tuning (backend='fastest')
                row["max_rel_error"] = max_rel_error(libs, y, ref, ref_rows)
                del y
                if first > 2 * config.max_call:  # far slower than estimated: one more call is the result
                    second = seconds_per_call(fn)
                    t = Timing(second, 0.0, second, 1, 1)
                    row["note"] = f"one call after a warm-up of {first:.2g} s (> 2 * --max-call)"
                else:
                    if settle and a.kind in ("batchmv", "prepare"):
                        _timing.run_times(fn, min_runs=1, max_runs=10**9, budget_s=settle, warmup=0)
                    t = measure(fn, config.min_time, None if settle and a.kind in ("batchmv", "prepare") else first)
            except NotApplicable as err:
                row["skipped"] = f"n/a: {err}"
                continue
            except Exception as err:  # report it and go on
                row["skipped"] = f"error: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
                continue
            finally:
                row["wall_s"] = time.perf_counter() - wall
            keep = a.kind in ("batchmv", "prepare", "native", "roof") and a.engine == a.home and "fastest" not in a.name
            if (keep and rows == b) or (m, n, b, dtype, layout) == TARGET3_POINT:
                kept[a.name] = (row, fn)
            fn = None
            scale = b / rows
            seconds = t.median * scale
            last[(m, n, dtype, layout, a.name)] = (b, t.best * scale)
            gflops = flops / seconds / 1e9
            row.update(
                median_s=seconds, iqr_s=t.iqr * scale, blocks=t.blocks, calls_per_block=t.number,
                timed_rows=rows, gflops=gflops, pct_roofline=100 * gflops / attainable,
                a_gbs=m * n * itemsize(dtype) / seconds / 1e9,
                pct_peak=100 * gflops / peak if peak else None, best_s=t.best * scale,
                load=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            )  # fmt: skip
            row["tolerance"] = tolerance(dtype, n)
        _confirm(kept, config, pair_all, settle)
        kept.clear()
    return results


def _confirm(
    kept: dict[str, tuple[dict[str, Any], Callable[[], Any]]], config: Config, pair_all: float = 0.0, settle: float = 0.0
) -> None:
    """Target (1) at one point: where a batchmv call's median exceeds 1.05 x the best native
    call of its library (taking > 100 us), time the two again alternating block by block, so
    that a change of the machine's load hits both alike; the paired ratio goes in the row.
    ``pair_all``: every such call, and each also against the point's "roof" call (a GEMV
    on the same A: the rate A is read at, measured alongside)."""
    roofs = [(r, f) for r, f in kept.values() if r["kind"] == "roof" and "median_s" in r]
    for peer, ours, _ in TARGET3_CHECKS:  # at target (3)'s point: each speed-up, paired too
        if peer in kept and ours in kept and "median_s" in kept[peer][0] and "median_s" in kept[ours][0]:
            (prow, pfn), (orow, ofn) = kept[peer], kept[ours]
            ratio, pairs = paired(pfn, ofn, prow["median_s"] * prow["timed_rows"] / prow["batch"], orow["median_s"], config.min_time)
            speedup = ratio * prow["batch"] / prow["timed_rows"]
            orow.setdefault("paired_speedups", {})[peer] = {"speedup": speedup, "pairs": pairs}
    for home in HOMES:
        natives = [(r, f) for r, f in kept.values() if r["home"] == home and r["kind"] == "native" and "median_s" in r]
        if not natives:
            continue
        best, best_fn = min(natives, key=lambda rf: rf[0]["median_s"])
        if best["median_s"] <= NATIVE_LIMIT_S and not pair_all:
            continue
        for row, fn in kept.values():
            if row["home"] != home or row["kind"] not in ("batchmv", "prepare") or "median_s" not in row:
                continue
            if row["engine"] != row["home"] or "fastest" in row["approach"] or row["timed_rows"] != row["batch"]:
                continue
            if row["median_s"] > 1.05 * best["median_s"] or pair_all:
                ratio, pairs = paired(fn, best_fn, row["median_s"], best["median_s"], pair_all or config.min_time, settle)
                row["paired"] = {"native": best["approach"], "ratio": ratio, "pairs": pairs}
            for roof_row, roof_fn in roofs if pair_all and row["kind"] == "batchmv" else ():
                ratio, pairs = paired(fn, roof_fn, row["median_s"], roof_row["median_s"], pair_all, settle)
                row["paired_roof"] = {"roof": roof_row["approach"], "ratio": ratio, "pairs": pairs}


def _ident(a: Approach) -> dict[str, Any]:
    return {"approach": a.name, "home": a.home, "engine": a.engine, "kind": a.kind}
