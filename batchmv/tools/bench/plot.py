"""``--plot``: GFLOP/s against batch size per approach, with the roofline (matplotlib)."""

from __future__ import annotations

import math
from typing import Any

from .config import DTYPES
from . import roofline
from .targets import measured


_LIB_COLOR = {"numpy": "tab:blue", "torch": "tab:red", "jax": "tab:green"}
_PEER_COLOR = (
    ("loop", "tab:gray"), ("einsum", "tab:olive"), ("numpy.matvec", "tab:orange"), ("torch.matmul", "tab:purple"),
    ("torch.bmm", "tab:pink"), ("vmap", "tab:cyan"),
)  # fmt: skip
_LIB_MARKER = {"numpy": "v", "torch": "D", "jax": "P"}


def _plot_label(r: dict[str, Any]) -> str | None:
    """The series a result belongs to in the plot (None: not drawn)."""
    if r["kind"] == "native":
        return f"best native call, {r['home']}"
    if r["kind"] == "batchmv" and r["engine"] != r["home"]:
        return None  # cross-library engines: in the table and the JSON, not in the plot
    return r.get("approach") or r["name"]


def _plot_style(label: str, kind: str, home: str) -> dict[str, Any]:
    color = _LIB_COLOR.get(home, "black")
    if kind == "batchmv" and "fastest" in label:
        return {"color": color, "ls": "-.", "lw": 1.6, "marker": "^", "ms": 4}
    if kind == "batchmv":
        return {"color": color, "ls": "-", "lw": 2.6, "marker": "o", "ms": 4}
    if kind == "prepare":
        return {"color": color, "ls": "-", "lw": 1.2, "marker": "s", "ms": 3, "alpha": 0.8}
    if kind == "native":
        return {"color": color, "ls": "--", "lw": 1.6, "marker": "x", "ms": 5}
    peer = next((c for key, c in _PEER_COLOR if key in label), "tab:brown")
    return {"color": peer, "ls": ":", "lw": 1.4, "marker": _LIB_MARKER.get(home, "."), "ms": 4}


def plot(report: dict[str, Any], path: str, max_panels: int = 12) -> None:
    """GFLOP/s against batch size per approach, one panel per (m, n, dtype) with A in C order
    (or the first layout measured), with the roofline: min(peak GEMM, AI x bandwidth) for the
    fastest engine of the dtype."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    rows = [r for r in measured(report) if r.get("section") != "skinny"]
    if not rows:  # --only skinny
        plot_skinny(report, path)
        return
    layouts = report["config"]["layouts"]
    layout = "C" if "C" in layouts else layouts[0]
    rows = [r for r in rows if r["layout"] == layout]
    # square shapes first, then by size; every dtype in turn
    panels = sorted({(r["m"], r["n"], r["dtype"]) for r in rows}, key=lambda k: (DTYPES.index(k[2]), k[0] != k[1], k[0] * k[1], k[0]))
    if len(panels) > max_panels:  # every float32 panel, then the other dtypes at the largest square shapes
        first = [p for p in panels if p[2] == "float32"]
        rest = [p for p in panels if p[2] != "float32" and p[0] == p[1]]
        per_dtype = max(1, (max_panels - len(first)) // max(1, len({p[2] for p in rest})))
        rest = [p for p in rest if sum(q[2] == p[2] and q[0] > p[0] for q in rest) < per_dtype]  # the largest per dtype
        panels = (first + rest)[:max_panels]
    kinds = {a["name"]: (a["kind"], a["home"]) for a in report["approaches"]}
    order: list[str] = []
    for a in report["approaches"]:
        label = _plot_label(a)
        if label is not None and label not in order:
            order.append(label)
            kinds.setdefault(label, (a["kind"], a["home"]))
    tiny = [o for o in report.get("overhead", []) if o["overhead_s"] is not None and not o["call"].startswith("native")]
    cols = min(3, max(1, len(panels) + bool(tiny)))
    nrows = max(1, math.ceil((len(panels) + bool(tiny)) / cols))
    fig = Figure(figsize=(5.6 * cols, 4.0 * nrows + 2.4), layout="constrained")
    FigureCanvasAgg(fig)
    roof = report["roofline"]
    bw = roof["bandwidth_gbs"]
    handles: dict[str, Any] = {}
    for i, (m, n, dtype) in enumerate(panels):
        ax = fig.add_subplot(nrows, cols, i + 1)
        series: dict[str, dict[int, float]] = {}
        for r in rows:
            label = _plot_label(r) if (r["m"], r["n"], r["dtype"]) == (m, n, dtype) else None
            if label is not None:
                s = series.setdefault(label, {})
                s[r["batch"]] = max(s.get(r["batch"], 0.0), r["gflops"])
        for label in order:
            if label in series:
                s = series[label]
                xs = sorted(s)
                (line,) = ax.plot(xs, [s[b] for b in xs], label=label, **_plot_style(label, *kinds[label]))
                handles.setdefault(label, line)
        batches = sorted({b for s in series.values() for b in s})
        peaks = {lib: per[dtype] for lib, per in roof["peak_gflops"].items() if dtype in per}
        if batches and peaks:
            lo, hi = batches[0], max(batches[-1], batches[0] * 2)
            grid = [lo * (hi / lo) ** (k / 80) for k in range(81)]
            lib, peak = max(peaks.items(), key=lambda kv: kv[1])
            (line,) = ax.plot(grid, [roofline.roof(peak, bw, m, n, b, dtype)[1] for b in grid], "-", color="black", lw=1.2, alpha=0.6)
            handles.setdefault("roofline: min(peak GEMM of the fastest engine, AI x bandwidth)", line)
            others = ", ".join(f"{k} {v:.0f}" for k, v in sorted(peaks.items(), key=lambda kv: -kv[1]))
            ax.text(0.02, 0.98, f"peak GEMM GFLOP/s: {others}", transform=ax.transAxes, fontsize=7, va="top", alpha=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"m={m}, n={n}, {dtype}, A {'C order' if layout == 'C' else 'transposed'}", fontsize=10)
        ax.set_xlabel("batch size")
        ax.set_ylabel("GFLOP/s (median)")
        ax.grid(True, which="major", alpha=0.3)
        ax.yaxis.set_minor_formatter(NullFormatter())
    if tiny:
        _tiny_panel(fig.add_subplot(nrows, cols, len(panels) + 1), tiny)
    mach = report["machine"]
    load = [mach.get("load_average_start", [float("nan")])[0], (mach.get("load_average_end") or [float("nan")])[0]]
    fig.suptitle(
        f"batchmv bench on {mach['cpu_model']} ({mach['cpus_usable']} CPUs, {report['config']['threads']} threads, "
        f"load average {load[0]:.1f} -> {load[1]:.1f}); memory bandwidth {bw:.1f} GB/s",
        fontsize=11,
    )
    labels = [h for h in order if h in handles] + [h for h in handles if h not in order]
    fig.legend([handles[h] for h in labels], labels, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    fig.savefig(path, dpi=100)


def _tiny_panel(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Target (2): each batchmv call's overhead over the best native call of its library at
    m = n = 16, one bar per (library, shape of x, call), with the two limits."""
    labels = [f"{r['home']} {r['x_shape']} {'prepare' if 'prepare' in r['call'] else 'matvec'}" for r in rows]
    values = [r["overhead_s"] * 1e6 for r in rows]
    colors = ["tab:blue" if "prepare" in r["call"] else "tab:orange" for r in rows]
    ax.barh(range(len(rows)), values, color=colors)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    for limit, color in ((2.0, "tab:orange"), (1.0, "tab:blue")):
        ax.axvline(limit, color=color, ls="--", lw=1)
    ax.set_xlabel("overhead over the best native call, us (median)")
    ax.set_title("tiny calls, m = n = 16, float32 (limits: matvec 2 us, prepare 1 us)", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)


def plot_skinny(report: dict[str, Any], path: str) -> None:
    """The skinny section: GB/s of A read against batch size per approach, one panel per A
    and dtype, with the memory roof (the fastest GEMV of the dtype)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in measured(report) if r.get("section") == "skinny"]
    panels = sorted({(r["m"], r["n"], r["dtype"]) for r in rows}, key=lambda k: (DTYPES.index(k[2]), k[0] * k[1]))
    cols = min(2, max(1, len(panels)))
    fig = Figure(figsize=(6.4 * cols, 4.2 * math.ceil(len(panels) / cols) + 2.0), layout="constrained")
    FigureCanvasAgg(fig)
    handles: dict[str, Any] = {}
    bw = report["roofline"].get("bandwidth_by_dtype", {})
    for i, (m, n, dtype) in enumerate(panels):
        ax = fig.add_subplot(math.ceil(len(panels) / cols), cols, i + 1)
        series: dict[str, dict[int, float]] = {}
        kinds: dict[str, tuple[str, str]] = {}
        for r in rows:
            if (r["m"], r["n"], r["dtype"]) == (m, n, dtype) and (r["kind"] == "roof" or r["engine"] == r["home"]):
                series.setdefault(r["approach"], {})[r["batch"]] = r["a_gbs"]
                kinds[r["approach"]] = (r["kind"], r["home"])
        for label, s in series.items():
            kind, home = kinds[label]
            style = {"color": "black", "ls": ":", "lw": 1.2} if kind == "roof" else _plot_style(label, kind, home)
            if kind == "before":
                style = {"color": _LIB_COLOR.get(home, "black"), "ls": (0, (1, 1)), "lw": 1.0, "marker": "s", "ms": 3, "alpha": 0.7}
            xs = sorted(s)
            (line,) = ax.plot(xs, [s[b] for b in xs], label=label, **style)
            handles.setdefault(label, line)
        if dtype in bw:
            line = ax.axhline(bw[dtype], color="black", lw=1.0, alpha=0.5)
            handles.setdefault("memory roof: the fastest GEMV of the dtype (roofline)", line)
        ax.set_xscale("log", base=2)
        ax.set_title(f"A {m}x{n} {dtype} ({m * n * (4 if dtype == 'float32' else 8) / 2**20:.0f} MiB)", fontsize=10)
        ax.set_xlabel("batch size")
        ax.set_ylabel("GB/s of A read (median)")
        ax.grid(True, alpha=0.3)
    mach = report["machine"]
    fig.suptitle(f"Skinny batches on {mach['cpu_model']}, {report['config']['threads']} thread(s)", fontsize=11)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=cols + 1, fontsize=8, frameon=False)
    fig.savefig(path, dpi=100)
