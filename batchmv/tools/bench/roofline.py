"""The roofline: the peak GEMM throughput of each engine and dtype (a large square GEMM) and
the memory bandwidth (a large copy, 2 bytes moved per byte copied).  Each result is shown
as time, GFLOP/s and percent of ``min(peak, AI * bandwidth)``, where the arithmetic
intensity ``AI = 2*m*n*batch / ((m*n + batch*n + batch*m) * itemsize)`` counts A, x and y
once.
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
    tick("memory bandwidth")
    count = config.copy_mb * 2**20 // 4
    src = np.ones(count, np.float32)
    dst = np.empty_like(src)
    copies = {"numpy.copyto": lambda: np.copyto(dst, src)}
    if "torch" in libs:
        ts, td = libs["torch"].from_numpy(src), libs["torch"].from_numpy(dst)
        copies["torch Tensor.copy_"] = lambda: td.copy_(ts)
    bandwidth, median = {}, {}
    for label, fn in copies.items():
        t = timing.measure(fn, max(config.min_time, 0.2))
        bandwidth[label] = 2 * src.nbytes / t.best / 1e9
        median[label] = 2 * src.nbytes / t.median / 1e9
    # a new result array: allocated and written (page faults on fresh memory), as every call here does
    fresh = 4 * count / timing.measure(lambda: np.full(count, 1.0, np.float32), max(config.min_time, 0.2)).median / 1e9
    return {
        "peak_gflops": {lib: {d: v["gflops"] for d, v in per.items()} for lib, per in peaks.items()},
        "peak_detail": peaks,
        "bandwidth_gbs": max(bandwidth.values()),
        "fresh_write_gbs": fresh,
        "bandwidth_detail": {"bytes_copied": src.nbytes, "gbs": bandwidth, "gbs_median": median,
                              "counted": "2 bytes moved (read + write) per byte copied; peaks and bandwidth from the fastest block"},
    }


def merge(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """The higher of two measurements of each peak and of the bandwidth; both are kept."""
    peaks = {
        lib: {d: max(g, second["peak_gflops"].get(lib, {}).get(d, 0.0)) for d, g in per.items()}
        for lib, per in first["peak_gflops"].items()
    }
    return {
        "peak_gflops": peaks,
        "bandwidth_gbs": max(first["bandwidth_gbs"], second["bandwidth_gbs"]),
        "fresh_write_gbs": max(first["fresh_write_gbs"], second["fresh_write_gbs"]),
        "measured": "before and after the grid; the higher of the two is used",
        "before": first,
        "after": second,
    }


def annotate(results: list[dict[str, Any]], roofline: dict[str, Any]) -> None:
    """(Re)compute each measured result's roofline fields."""
    for r in results:
        peak = engine_peak(roofline, r["engine"], r["dtype"])
        ai, attainable = roof(peak or math.inf, roofline["bandwidth_gbs"], r["m"], r["n"], r["batch"], r["dtype"])
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
