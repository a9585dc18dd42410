"""The sparse section of ``batchmv bench`` (``--sparse``, issue 14): ``batchmv.matvec`` with a
sparse A against each library's own sparse product on the same data, and the dense path.

A is (n, n) float64 CSR, uniform random, for each density; x is (batch, n), the vectors
in rows.  Per library, the library's own sparse product giving the same result, y of shape
(batch, n): scipy.sparse ``(A @ X.T).T`` (csr_array; ``.T`` is a view),
``torch.sparse.mm(A, X.T).T`` (sparse_csr tensor on the same arrays), and for jax, whose
arrays have no transposed views, the faster of ``jit(X @ A.T)`` and ``jit((A @ X.T).T)`` on
a BCOO A (``jit(A @ X.T)`` alone gives y transposed, (n, batch), and skips the transpose
that a row-major (batch, n) result costs: it is timed and recorded, not compared).  Each is
timed against ``batchmv.matvec(A, X)`` on the same A and X, alternating block by block
(:func:`.timing.paired`: the machine's load hits both alike).  The dense path
(``batchmv.matvec`` on A as a dense numpy array) is timed beside them: where it is faster
than every sparse product, the table marks the point ``D``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from .timing import measure, paired

DENSITIES = (1e-4, 1e-3, 1e-2, 1e-1)
BATCHES = (1, 16, 256, 4096)
N = 2048
QUICK = ((1e-3, 1e-1), (1, 64), 256)
#: the issue's target: batchmv at most this many times the library's own product
TARGET = 1.05


def points(quick: bool) -> tuple[tuple[float, ...], tuple[int, ...], int]:
    """(densities, batches, n) of a run."""
    return QUICK if quick else (DENSITIES, BATCHES, N)


Natives = dict[str, Callable[[], Any]]


def _pairs(libs: dict[str, Any], batchmv: Any, a: Any, x: Any) -> dict[str, tuple[Natives, Callable[[], Any]]]:
    """Per library: ({name: its own sparse product}, batchmv's call) on the same A and X."""
    out = {"scipy": ({"(A @ X.T).T": lambda: (a @ x.T).T}, lambda: batchmv.matvec(a, x))}
    torch = libs.get("torch")
    if torch is not None:
        at, xt = _operands("torch", a, x, libs)
        out["torch"] = ({"torch.sparse.mm(A, X.T).T": lambda: torch.sparse.mm(at, xt.T).T}, lambda: batchmv.matvec(at, xt))
    jax = libs.get("jax")
    if jax is not None:
        aj, xj = _operands("jax", a, x, libs)
        rmatmul, transposed = jax.jit(lambda m, v: v @ m.T), jax.jit(lambda m, v: (m @ v.T).T)
        natives = {"jit(X @ A.T)": lambda: rmatmul(aj, xj), "jit((A @ X.T).T)": lambda: transposed(aj, xj)}
        out["jax"] = (natives, lambda: batchmv.matvec(aj, xj))
    return out


def run(libs: dict[str, Any], batchmv: Any, quick: bool, min_time: float, max_call: float, tick: Callable[[str], None]) -> list[dict[str, Any]]:
    """The section's rows: one per (library, density, batch)."""
    import numpy as np
    import scipy.sparse as sp

    densities, batches, n = points(quick)
    rng = np.random.default_rng(0)
    rows = []
    for density in densities:
        a = sp.random_array((n, n), density=density, format="csr", rng=rng, dtype=np.float64)
        dense = a.toarray()
        for batch in batches:
            x = rng.standard_normal((batch, n))
            reference = dense @ x.T
            dense_s = _time(lambda: batchmv.matvec(dense, x), min_time, max_call)
            for lib, (natives, ours) in _pairs(libs, batchmv, a, x).items():
                tick(f"sparse {lib} density {density:g} batch {batch}")
                row = {"section": "sparse", "library": lib, "density": density, "nnz": int(a.nnz), "n": n,
                       "batch": batch, "dense_s": dense_s}  # fmt: skip
                got = np.asarray(ours())
                row["max_rel_error"] = float(np.abs(got.T - reference).max() / max(np.abs(reference).max(), 1e-300))
                times = {name: _time(fn, min_time, max_call) for name, fn in natives.items()}
                row["natives_s"] = times
                timed = {name: t for name, t in times.items() if t is not None}
                best = min(timed, key=timed.__getitem__) if timed else next(iter(natives))
                native, native_s, ours_s = natives[best], timed.get(best), _time(ours, min_time, max_call)
                row.update(native=best, native_s=native_s, batchmv_s=ours_s,
                           plan_copies=list(batchmv.plan(*_operands(lib, a, x, libs)).copies))  # fmt: skip
                if native_s is not None and ours_s is not None:
                    ratio, pairs = paired(ours, native, ours_s, native_s, min_time)
                    row.update(ratio=ratio, pairs=pairs)
                fastest_sparse = min(t for t in (native_s, ours_s) if t is not None) if native_s or ours_s else None
                row["dense_faster"] = bool(dense_s is not None and fastest_sparse is not None and dense_s < fastest_sparse)
                rows.append(row)
    return rows


def _operands(lib: str, a: Any, x: Any, libs: dict[str, Any]) -> tuple[Any, Any]:
    """A and X of ``lib``, for ``plan`` (the same data as the timed call)."""
    if lib == "torch":
        torch = libs["torch"]
        arrays = (torch.from_numpy(v) for v in (a.indptr, a.indices, a.data))
        return torch.sparse_csr_tensor(*arrays, a.shape, check_invariants=False), torch.from_numpy(x)
    if lib == "jax":
        from jax.experimental import sparse as jsparse

        return jsparse.BCOO.from_scipy_sparse(a), libs["jax"].numpy.asarray(x)
    return a, x


def _time(fn: Callable[[], Any], min_time: float, max_call: float) -> float | None:
    """Median seconds per call, or None when one call takes longer than ``max_call``."""
    from .timing import timed_call

    _, first = timed_call(fn)
    if first > max_call:
        return None
    return measure(fn, min_time, first).median


def check(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The section's target: batchmv within :data:`TARGET` x the library's own product."""
    timed = [r for r in rows if "ratio" in r]
    failures = [
        f"{r['library']} density {r['density']:g} batch {r['batch']}: {r['ratio']:.2f}x ({r['native_s'] * 1e6:.1f} us native)"
        for r in timed if r["ratio"] > TARGET
    ]  # fmt: skip
    return {
        "id": "SP1", "target": f"sparse section: batchmv.matvec <= {TARGET} x the library's own sparse product (paired ratio)",
        "status": "n/a" if not timed else "FAIL" if failures else "PASS",
        "measured": f"{len(timed) - len(failures)} of {len(timed)} points within {TARGET}x", "failures": failures,
    }  # fmt: skip


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The section as text: per library and density, each batch's paired ratio and native time."""
    if not rows:
        return []
    batches = sorted({r["batch"] for r in rows})
    lines = [
        "",
        "Sparse A (float64 CSR, n x n, vectors in rows): r = batchmv time / the library's own sparse product "
        "giving the same (batch, n) result (paired, < 1: faster), then that product's median; D: the dense path "
        "(batchmv on A as a dense array) is faster than both; skip: a call above --max-call",
    ]
    width = 24
    for lib in dict.fromkeys(r["library"] for r in rows):
        lines.append(f"\n{lib}" + "".join(f"{'batch ' + str(b):>{width}}" for b in batches))
        for density in dict.fromkeys(r["density"] for r in rows):
            cells = {r["batch"]: r for r in rows if r["library"] == lib and r["density"] == density}
            nnz = next(iter(cells.values()))["nnz"]
            lines.append(f"{f'density {density:g} (nnz {nnz:,})':<28}"[:28] + "".join(f"{_cell(cells.get(b)):>{width}}" for b in batches))
    return lines


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return ""
    if "ratio" not in r:
        return "skip"
    native = r["native_s"]
    text = f"{native * 1e6:.1f}us" if native < 1e-3 else f"{native * 1e3:.2f}ms"
    return f"r{r['ratio']:.2f} {text}{' D' if r['dense_faster'] else ''}" + ("" if math.isfinite(r["ratio"]) else "?")
