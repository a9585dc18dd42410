"""The sparse section of ``batchmv bench`` (``--sparse``, issue 14): ``batchmv.matvec`` with a
sparse A against each library's own sparse product on the same data, and the dense path.

A is (n, n) float64 CSR, uniform random, for each density; x is (batch, n), the vectors
in rows.  Per library: scipy.sparse ``A @ X.T`` (csr_array), ``torch.sparse.mm(A, X.T)``
(sparse_csr tensor on the same arrays), and jax's BCOO ``A @ X.T`` in ``jax.jit``, each
against ``batchmv.matvec(A, X)`` on the same A and X, timed alternating block by block
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


def _pairs(libs: dict[str, Any], batchmv: Any, a: Any, x: Any) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    """Per library: (its own sparse product, batchmv's call) on the same A and X."""
    out = {"scipy": (lambda: a @ x.T, lambda: batchmv.matvec(a, x))}
    torch = libs.get("torch")
    if torch is not None:
        at = torch.sparse_csr_tensor(*(torch.from_numpy(v) for v in (a.indptr, a.indices, a.data)), a.shape,
                                     check_invariants=False)  # fmt: skip
        xt = torch.from_numpy(x)
        out["torch"] = (lambda: torch.sparse.mm(at, xt.T), lambda: batchmv.matvec(at, xt))
    jax = libs.get("jax")
    if jax is not None:
        from jax.experimental import sparse as jsparse

        aj, xj = jsparse.BCOO.from_scipy_sparse(a), jax.numpy.asarray(x)
        native = jax.jit(lambda m, v: m @ v.T)
        out["jax"] = (lambda: native(aj, xj), lambda: batchmv.matvec(aj, xj))
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
            for lib, (native, ours) in _pairs(libs, batchmv, a, x).items():
                tick(f"sparse {lib} density {density:g} batch {batch}")
                row = {"section": "sparse", "library": lib, "density": density, "nnz": int(a.nnz), "n": n,
                       "batch": batch, "dense_s": dense_s}  # fmt: skip
                got = np.asarray(ours())
                row["max_rel_error"] = float(np.abs(got.T - reference).max() / max(np.abs(reference).max(), 1e-300))
                native_s, ours_s = _time(native, min_time, max_call), _time(ours, min_time, max_call)
                row.update(native_s=native_s, batchmv_s=ours_s, plan_copies=list(batchmv.plan(*_operands(lib, a, x, libs)).copies))
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
        return torch.sparse_csr_tensor(*(torch.from_numpy(v) for v in (a.indptr, a.indices, a.data)), a.shape), torch.from_numpy(x)
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
        "(paired, < 1: faster), then the native median; D: the dense path (batchmv on A as a dense array) is "
        "faster than both; skip: a call above --max-call",
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
