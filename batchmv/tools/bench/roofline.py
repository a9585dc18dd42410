"""The roofline: the peak GEMM throughput of each engine and dtype (a large square GEMM)
and the rate each engine reads memory, from a matrix-vector product (GEMV) over an A
larger than the caches: what a product that reads A once can reach.  Each result is shown
as time, GFLOP/s and percent of ``min(peak, AI * bandwidth)``, where the arithmetic
intensity ``AI = 2*m*n*batch / ((m*n + batch*n + batch*m) * itemsize)`` counts A, x and y
once, and the bandwidth is the fastest GEMV of the dtype over every engine (the rate the
machine gives, not the engine's own).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from . import timing
from .arrays import itemsize, to
from .config import Config


def measure(libs: dict[str, Any], config: Config, tick: Callable[[str], None]) -> dict[str, Any]:
    """Peak GEMM GFLOP/s per engine and dtype, and the memory bandwidth (GB/s)."""
    np = libs["numpy"]
    size = config.peak_size
    rng = np.random.default_rng(1)
    square = rng.random((size, size), dtype=np.float32) - 0.5
    peaks: dict[str, dict[str, float]] = {}
    for lib in libs:
        for dtype in config.dtypes:
            if dtype == "bfloat16" and lib != "torch":
                continue
            tick(f"peak GEMM {lib} {dtype}")
            a = to(lib, libs, square.astype("float32" if dtype == "bfloat16" else dtype), dtype)
            if lib == "jax":
                f = libs["jax"].jit(lambda a, b: a @ b)
                fn = lambda: f(a, a)  # noqa: E731
            else:
                fn = lambda: a @ a  # noqa: E731
            t = timing.measure(fn, max(config.min_time, 0.2))
            peaks.setdefault(lib, {})[dtype] = {
                "gflops": 2 * size**3 / t.best / 1e9, "gflops_median": 2 * size**3 / t.median / 1e9,
                "size": size, "best_s": t.best, "median_s": t.median, "iqr_s": t.iqr,
            }  # fmt: skip
    gemv, gemv_mib = _gemv(libs, config, tick)
    tick("writing a new array")
    count = config.copy_mb * 2**20 // 4
    # a new result array: allocated and written (page faults on fresh memory), as every call here does
    fresh = 4 * count / timing.measure(lambda: np.full(count, 1.0, np.float32), max(config.min_time, 0.2)).median / 1e9
    by_dtype = {d: max(per[d]["gbs"] for per in gemv.values() if d in per) for d in {d for per in gemv.values() for d in per}}
    return {
        "peak_gflops": {lib: {d: v["gflops"] for d, v in per.items()} for lib, per in peaks.items()},
        "peak_detail": peaks,
        "bandwidth_gbs": max(by_dtype.values()),
        "bandwidth_by_dtype": by_dtype,
        "fresh_write_gbs": fresh,
        "bandwidth_detail": {
            "gemv": gemv, "a_mib": gemv_mib,
            "counted": "bytes of A read per second by A @ x (x a vector), A larger than the caches; "
                       "peaks and bandwidths from the fastest block",
        },
    }  # fmt: skip


def _gemv(libs: dict[str, Any], config: Config, tick: Callable[[str], None]) -> tuple[dict[str, Any], int]:
    """GB/s of A read by each engine's ``A @ x`` (x one vector), per dtype, A of ``a_mib`` MiB:
    at least 128 MiB and four times the last-level cache."""
    from batchmv import _skinny

    np = libs["numpy"]
    a_mib = min(1024, max(128, 4 * _skinny.LLC_BYTES // 2**20))
    out: dict[str, dict[str, Any]] = {}
    for dtype in (d for d in config.dtypes if d != "bfloat16"):
        n = 4096
        m = a_mib * 2**20 // (itemsize(dtype) * n)
        rng = np.random.default_rng(2)
        A = (rng.random((m, n), dtype=np.float32) - np.float32(0.5)).astype(dtype, copy=False)
        x = (rng.random(n, dtype=np.float32) - np.float32(0.5)).astype(dtype, copy=False)
        for lib in libs:
            tick(f"GEMV bandwidth {lib} {dtype}")
            a, v = to(lib, libs, A, dtype), to(lib, libs, x, dtype)
            if lib == "jax":
                f = libs["jax"].jit(lambda a, v: a @ v)
                fn = lambda: f(a, v)  # noqa: E731
            else:
                fn = lambda: a @ v  # noqa: E731
            t = timing.measure(fn, max(config.min_time, 0.2))
            out.setdefault(lib, {})[dtype] = {
                "gbs": A.nbytes / t.best / 1e9, "gbs_median": A.nbytes / t.median / 1e9, "shape": [m, n],
                "best_s": t.best, "median_s": t.median, "iqr_s": t.iqr,
            }  # fmt: skip
            a = v = fn = None
        del A
    return out, a_mib


def merge(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """The higher of two measurements of each peak and of the bandwidth; both are kept."""
    peaks = {
        lib: {d: max(g, second["peak_gflops"].get(lib, {}).get(d, 0.0)) for d, g in per.items()}
        for lib, per in first["peak_gflops"].items()
    }
    by_dtype = {d: max(g, second["bandwidth_by_dtype"].get(d, 0.0)) for d, g in first["bandwidth_by_dtype"].items()}
    return {
        "peak_gflops": peaks,
        "bandwidth_gbs": max(first["bandwidth_gbs"], second["bandwidth_gbs"]),
        "bandwidth_by_dtype": by_dtype,
        "fresh_write_gbs": max(first["fresh_write_gbs"], second["fresh_write_gbs"]),
        "measured": "before and after the grid; the higher of the two is used",
        "before": first,
        "after": second,
    }


def annotate(results: list[dict[str, Any]], roofline: dict[str, Any]) -> None:
    """(Re)compute each measured result's roofline fields."""
    for r in results:
        if r["kind"] == "roof":  # (a GEMV on one vector of the point's batch)
            continue
        peak = engine_peak(roofline, r["engine"], r["dtype"])
        ai, attainable = roof(peak or math.inf, bandwidth(roofline, r["dtype"]), r["m"], r["n"], r["batch"], r["dtype"])
        r.update(ai=ai, attainable_gflops=attainable, peak_gflops=peak)
        if r.get("gflops") is not None:
            r.update(pct_roofline=100 * r["gflops"] / attainable, pct_peak=100 * r["gflops"] / peak if peak else None)


def roof(peak_gflops: float, bandwidth_gbs: float, m: int, n: int, b: int, dtype: str) -> tuple[float, float]:
    """(arithmetic intensity in flop/byte, attainable GFLOP/s)."""
    ai = 2 * m * n * b / ((m * n + b * n + b * m) * itemsize(dtype))
    return ai, min(peak_gflops, ai * bandwidth_gbs)


def engine_peak(roofline: dict[str, Any], engine: str, dtype: str) -> float | None:
    peaks = roofline["peak_gflops"]
    return peaks.get(engine, {}).get(dtype) or max((p.get(dtype, 0) for p in peaks.values()), default=None) or None


def bandwidth(roofline: dict[str, Any], dtype: str) -> float:
    """The memory roof for ``dtype``: the fastest GEMV of that dtype (bfloat16: any dtype's)."""
    return roofline.get("bandwidth_by_dtype", {}).get(dtype) or roofline["bandwidth_gbs"]
