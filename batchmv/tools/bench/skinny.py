"""The skinny section of ``batchmv bench``: a few vectors and an A of 32 and 128 MiB, where a
product is bound by reading A (issue 15).

At every point (float32 and float64, A in C order, batch 1 to 64) it times, for every home
library and engine: ``batchmv.matvec`` (row blocks where :mod:`batchmv._skinny`'s rule
takes the call), ``batchmv.prepare(A)``, the one-GEMM kernel batchmv ran before row blocks
("one GEMM (before)": the remembered kernel of a call built with the rule switched off),
and the home library's native calls, and a GEMV on the same A (the memory roof).  Every
batchmv call of a home engine is then timed again alternating block by block with the best
native call of its library, and with the GEMV, for 10 x --min-time each: those paired
ratios are what the targets read (the machine's load changes within a run).  Each row records the GB/s of A read and
the kernel ``plan`` reports.
"""

from __future__ import annotations

from typing import Any, Callable

import math

from .approaches import Approach, NotApplicable
from .roofline import engine_peak, roof

#: kinds of the main grid's approaches that run here too
KINDS = ("batchmv", "prepare", "native")
#: The memory roof at each point: a GEMV on the same A, timed alternately with each batchmv call
ROOF = "numpy A @ x[0] (GEMV: memory roof)"


def approaches(found: list[Approach], batchmv: Any, kernels: dict[tuple[Any, ...], str]) -> list[Approach]:
    """batchmv's calls (not ``"fastest"``, whose tuning at these sizes takes seconds) and the
    natives from ``found``, and the one-GEMM kernel per home library; batchmv's calls note
    the kernel ``plan`` reports in ``kernels`` under (approach, m, n, batch, dtype)."""
    chosen = [a for a in found if a.kind in KINDS and "fastest" not in a.name]
    out = [_noting(a, batchmv, kernels) if a.kind != "native" else a for a in chosen]
    out.append(Approach(ROOF, "numpy", "numpy", "roof", lambda A, X: (lambda: (A @ X[0])[None]), layouts=("C",)))
    for home in dict.fromkeys(a.home for a in chosen if a.kind == "batchmv"):
        dtypes = next(a.dtypes for a in chosen if a.home == home and a.kind == "batchmv" and a.engine == home)
        out.append(Approach(f"batchmv one GEMM (before) {home}", home, home, "before", _one_gemm, dtypes=dtypes, layouts=("C",)))
    return out


def _noting(a: Approach, batchmv: Any, kernels: dict[tuple[Any, ...], str]) -> Approach:
    def make(A: Any, X: Any) -> Callable[[], Any]:
        m, n = A.shape
        engine = None if a.engine == a.home else a.engine
        kernels[(a.name, m, n, X.shape[0], str(X.dtype).rsplit(".", 1)[-1])] = batchmv.plan(A, X, backend=engine).kernel
        return a.make(A, X)

    return Approach(a.name, a.home, a.engine, a.kind, make, a.linear, a.dtypes, a.core, ("C",), a.max_batch)


def _one_gemm(A: Any, X: Any) -> Callable[[], Any]:
    """The kernel batchmv ran before row blocks: the call's remembered one GEMM (or jax's
    dot_general), built with the rule switched off."""
    from batchmv import _call, _run, _skinny

    _skinny.ENABLED = False
    try:
        run = _run.runner(_call.build(A, X, -1, None, None, None))
    finally:
        _skinny.ENABLED = True
    if run is None:
        raise NotApplicable("no remembered kernel for these arrays")
    return lambda: run(A, X)


def run(libs, batchmv, config, found, roofline, tick, grid_run) -> list[dict[str, Any]]:  # noqa: ANN001
    """The skinny section's result rows (``found``: every approach of the run), timed by
    ``grid_run`` (:func:`.grid.run`, passed in: the grid's module imports the report's)."""
    kernels: dict[tuple[Any, ...], str] = {}
    timed = approaches(found, batchmv, kernels)
    rows = grid_run(libs, batchmv, config, timed, config.skinny, roofline, tick, pair_all=5 * config.min_time)
    for r in rows:
        r["section"] = "skinny"
        if r["kind"] == "roof" and r.get("median_s"):  # one vector, not the batch
            r.update(gflops=2 * r["m"] * r["n"] / r["median_s"] / 1e9, pct_roofline=None)
        if "paired_roof" in r:  # against the GEMV timed alongside: % of the rate A is read at, and of the roof
            fraction = 1 / r["paired_roof"]["ratio"]
            peak = engine_peak(roofline, r["engine"], r["dtype"]) or math.inf
            _, attainable = roof(peak, r["a_gbs"] * r["paired_roof"]["ratio"], r["m"], r["n"], r["batch"], r["dtype"])
            r["paired_roof"].update(pct_bandwidth=100 * fraction, pct_roofline=100 * r["gflops"] / attainable)
        kernel = kernels.get((r["approach"], r["m"], r["n"], r["batch"], r["dtype"]))
        if kernel is not None:
            r["kernel"] = kernel
    return rows


def count(config: Any, found: list[Approach]) -> int:
    """How many runs the section times (for the progress bar)."""
    timed = approaches(found, None, {})
    return sum(len([a for a in timed if a.runs_at(d, lay, b, False)]) for (_, _, b, d, lay) in config.skinny or ())


def table(report: dict[str, Any]) -> list[str]:
    """The section as text: per A and dtype, GB/s of A read (median) and % of the roofline
    per approach and batch, and batchmv's paired ratio to the best native call."""
    rows = [r for r in report["results"] if r.get("section") == "skinny"]
    if not rows:
        return []
    bw = report["roofline"].get("bandwidth_by_dtype", {})
    lines = [
        "",
        f"Skinny batches ({report['config']['threads']} thread(s)): GB/s of A read (median); % of "
        "min(peak GEMM, AI x bandwidth), the bandwidth that of the GEMV on the same A timed alternately "
        "with the call (batchmv's calls; the others: the roofline's); r: time ratio to the best native "
        "call of the library, timed alternately (< 1: faster); *: row blocks",
    ]
    blocks: dict[tuple[Any, ...], dict[str, dict[int, dict[str, Any]]]] = {}
    for r in rows:
        blocks.setdefault((r["m"], r["n"], r["dtype"]), {}).setdefault(r["approach"], {})[r["batch"]] = r
    batches = sorted({r["batch"] for r in rows})
    width = 22
    for (m, n, dtype), per in blocks.items():
        mib = m * n * (4 if dtype == "float32" else 8) / 2**20
        lines.append(f"\nA {m}x{n} {dtype} ({mib:.0f} MiB); memory roof (fastest GEMV) {bw.get(dtype, 0):.1f} GB/s")
        lines.append(f"{'':<40}" + "".join(f"{'batch ' + str(b):>{width}}" for b in batches))
        for name, cells in per.items():
            lines.append(f"{name[:39]:<40}" + "".join(f"{_cell(cells.get(b)):>{width}}" for b in batches))
    return lines


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return ""
    if r.get("median_s") is None:
        return "n/a" if str(r.get("skipped", "")).startswith("n/a") else "skip"
    if r["kind"] == "roof":
        return f"{r['a_gbs']:.1f}"
    if "paired_roof" in r:  # % of the roof against the GEMV timed alternately with it
        pct = f" {r['paired_roof']['pct_roofline']:.0f}%"
    else:
        pct = f" {r['pct_roofline']:.0f}%" if r.get("pct_roofline") is not None else ""
    ratio = f" r{r['paired']['ratio']:.2f}" if "paired" in r else ""
    rb = "*" if r.get("kernel") == "gemm row blocks" else ""
    return f"{r['a_gbs']:.1f}{pct}{ratio}{rb}"
