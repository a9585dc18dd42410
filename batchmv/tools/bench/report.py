"""The report: printed as text, and as JSON (``--json``)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from .overhead import TINY
from .skinny import table as skinny_table
from .sparse import table as sparse_table


def to_json(report: dict[str, Any]) -> str:
    """The report as JSON: floats to 5 significant digits, one line per result."""
    report = _rounded(report)
    head = json.dumps({k: v for k, v in report.items() if k != "results"}, indent=1, default=str)
    rows = ",\n".join("  " + json.dumps(r, separators=(", ", ": "), default=str) for r in report["results"])
    return head[:-2] + ',\n "results": [\n' + rows + "\n ]\n}\n"


def _rounded(obj: Any, digits: int = 5) -> Any:
    """``obj`` with every float rounded to ``digits`` significant digits (a smaller JSON file)."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}") if math.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v, digits) for v in obj]
    return obj


def fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f}us"
    if s < 1:
        return f"{s * 1e3:.2f}ms"
    return f"{s:.2f}s"


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return ""
    if r.get("median_s") is None:
        reason = r.get("skipped", "")
        return "mem" if "memory" in reason else "skip" if "estimated" in reason else "n/a" if reason.startswith("n/a") else "error"
    spread = 100 * r["iqr_s"] / r["median_s"]
    bad = "!" if r.get("max_rel_error", 0) > r.get("tolerance", 1) else ""
    star = "*" if r["timed_rows"] < r["batch"] else ""
    return f"{fmt_time(r['median_s'])}{star}{bad} ±{spread:.0f}% {r['gflops']:.3g} {r['pct_roofline']:.0f}%"


def print_report(report: dict[str, Any]) -> None:
    if report.get("section") == "sparse":
        return _print_sparse(report)
    mach, roof, cfg = report["machine"], report["roofline"], report["config"]
    load = mach.get("load_average_start") or [float("nan")]
    load_end = mach.get("load_average_end") or [float("nan")]
    print(f"batchmv bench: {mach['cpu_model']}, {mach['cpus_usable']} CPUs, {cfg['threads']} threads; "
          f"load average {load[0]:.2f} at start, {load_end[0]:.2f} at end; {report['seconds']:.0f} s")  # fmt: skip
    if load[0] >= 0.5 or load_end[0] >= cfg["threads"] + 0.5:  # at the end, the load includes this run's threads
        print(f"warning: the machine was busy (load average {load[0]:.2f} at start, {load_end[0]:.2f} at end, with "
              f"{cfg['threads']} threads of this run, on {mach['cpus_usable']} CPUs): timings are slow and erratic, "
              "multi-threaded ones most; each result's load average is in --json")  # fmt: skip
    _print_libraries(mach)
    peaks = "; ".join(f"{lib} " + ", ".join(f"{d} {g:.0f}" for d, g in per.items()) for lib, per in roof["peak_gflops"].items())
    detail = roof["before"]["bandwidth_detail"]
    gemv = "; ".join(f"{lib} " + ", ".join(f"{d} {v['gbs']:.1f}" for d, v in per.items()) for lib, per in detail["gemv"].items())
    print(f"roofline (measured before and after the grid, the higher used): peak GEMM GFLOP/s ({cfg['peak_size']}^3, "
          f"fastest block): {peaks}; memory: GB/s of A read by A @ x over an A of {detail['a_mib']} MiB (fastest "
          f"block): {gemv}; roof per dtype: " + ", ".join(f"{d} {g:.1f}" for d, g in roof["bandwidth_by_dtype"].items())
          + f" (writing a new array: {roof['fresh_write_gbs']:.1f} GB/s)")  # fmt: skip
    caches = ", ".join(f"L{c['level']} {c['type'].lower()} {c['size']}" for c in mach.get("caches", []))
    if caches:
        print(f"caches (cpu0): {caches}")
    results = report["results"]
    batches = cfg["batches"]
    blocks: dict[tuple[Any, ...], dict[str, dict[int, dict[str, Any]]]] = {}
    for r in results:
        if r.get("section") != "skinny":  # (the skinny section has its own table)
            blocks.setdefault((r["m"], r["n"], r["dtype"], r["layout"]), {}).setdefault(r["approach"], {})[r["batch"]] = r
    width = 27
    for (m, n, dtype, layout), per in blocks.items():
        print(f"\nm={m} n={n} {dtype}, A {'C order' if layout == 'C' else 'transposed view (T)'}: "
              "median ±IQR, GFLOP/s, % of roofline")  # fmt: skip
        print(f"{'':<44}" + "".join(f"{'batch ' + str(b):>{width}}" for b in batches))
        for name, cells in per.items():
            if all(c.get("median_s") is None and c.get("skipped", "").startswith("n/a") for c in cells.values()):
                continue
            print(f"{name[:43]:<44}" + "".join(f"{_cell(cells.get(b)):>{width}}" for b in batches))
    print(
        "\n* timed on the first vectors of the batch and scaled linearly (loops: at most --loop-rows vectors; the other\n"
        "  linear peers where a call on the whole batch would exceed 2 * --min-time);\n"
        "! result differs from the float64 reference beyond tolerance;\n"
        "skip: estimated above --max-call; mem: A, x and y above --max-memory; n/a: not possible for these arrays.\n"
        "% of roofline: GFLOP/s / min(peak GEMM of the engine and dtype, AI * bandwidth), AI = flops / bytes of A, x, y."
    )
    print("\n".join(skinny_table(report)))
    if report["overhead"]:
        print(f"\nOverhead at m = n = {TINY}, float32 (median; overhead = time - best native call of the library):")
        for o in report["overhead"]:
            t = "error" if o["median_s"] is None else f"{o['median_s'] * 1e6:8.2f} us  {o['overhead_s'] * 1e6:+7.2f} us"
            print(f"  {o['home']:<6} x {o['x_shape']:<8} {o['call']:<24} {t}")
    if report.get("fastest"):
        print("\nbackend='fastest' against each engine alone, each in its own process (float32, A in C order; median);"
              "\n'in use': with a GEMM of the home library between calls, 'fastest' and the home library's engine:")  # fmt: skip
        for r in report["fastest"]:
            alone = ", ".join(f"{e} {fmt_time(s)}" for e, s in sorted(r["isolated"].items(), key=lambda kv: kv[1]))
            if r.get("fastest_s") is None:
                print(f"  {r['home']:<6} {r['m']}x{r['n']} batch {r['batch']}: fastest failed ({r.get('error')}); alone: {alone}")
                continue
            between = r.get("between") or {}
            use = (f"; in use: fastest {fmt_time(between['fastest_s'])}, {r['home']} {fmt_time(between['home_engine_s'])}"
                   if between else "")  # fmt: skip
            print(f"  {r['home']:<6} {r['m']}x{r['n']} batch {r['batch']}: fastest -> {r['chosen']} "
                  f"{fmt_time(r['fastest_s'])} ({r['ratio']:.2f}x the best alone); alone: {alone}{use}")  # fmt: skip
    print("\nTargets:")
    for t in report["targets"]:
        print(f"  [{t['status']:^4}] ({t['id']}) {t['target']}")
        if t.get("measured"):
            print(f"         {t['measured']}")
        for f in t.get("failures", [])[:8]:
            print(f"         fail: {f}")
        if len(t.get("failures", [])) > 8:
            print(f"         ... and {len(t['failures']) - 8} more (see --json)")


def _print_libraries(mach: dict[str, Any]) -> None:
    versions = ", ".join(f"{k} {v}" for k, v in mach["versions"].items())
    print(f"versions: {versions}")
    blas = "; ".join(
        f"{p.get('internal_api')} {p.get('version') or ''} ({os.path.basename(p.get('filepath', ''))})" for p in mach["blas"]
    )
    print(f"BLAS (threadpoolctl): {blas}" + (f"; torch: {mach['torch']['blas']}" if "torch" in mach else ""))


def _print_sparse(report: dict[str, Any]) -> None:
    """The sparse section's report (``batchmv bench --sparse``)."""
    mach, cfg = report["machine"], report["config"]
    load, load_end = mach.get("load_average_start") or [float("nan")], mach.get("load_average_end") or [float("nan")]
    print(f"batchmv bench --sparse: {mach['cpu_model']}, {mach['cpus_usable']} CPUs, {cfg['threads']} threads; "
          f"load average {load[0]:.2f} at start, {load_end[0]:.2f} at end; {report['seconds']:.0f} s")  # fmt: skip
    _print_libraries(mach)
    caches = ", ".join(f"L{c['level']} {c['type'].lower()} {c['size']}" for c in mach.get("caches", []))
    if caches:
        print(f"caches (cpu0): {caches}")
    print("\n".join(sparse_table(report["results"])))
    print("\nTargets:")
    for t in report["targets"]:
        print(f"  [{t['status']:^4}] ({t['id']}) {t['target']}\n         {t['measured']}")
        for f in t["failures"]:
            print(f"         fail: {f}")
