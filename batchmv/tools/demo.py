"""``batchmv demo``: the project's job on realistic data from every home library on every
engine, for A in three memory layouts; every result is checked against a float64 reference
and that A was never copied, and the speed is compared with the usual alternatives.

Exit status 0 when every result agrees and A was never copied, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import statistics
import sys
from typing import Any, Callable, NamedTuple

from batchmv import _timing
from batchmv._memory import aligned_empty  # 64-byte aligned, as JAX needs to share memory

from .arguments import positive


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add the ``demo`` subcommand to ``batchmv``'s subparsers."""
    demo = commands.add_parser(
        "demo", help="y = P @ x on a batch, every home library and engine, three layouts of P",
        description="Exit status 0 when every result agrees with a float64 reference and A was never copied.",
    )  # fmt: skip
    demo.add_argument("--m", type=positive, help="rows of A (default 1024; 256 with --quick)")
    demo.add_argument("--n", type=positive, help="columns of A (default 1024; 256 with --quick)")
    demo.add_argument("--batch", type=positive, help="number of vectors (default 4096; 512 with --quick)")
    demo.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    demo.add_argument("--repeat", type=positive, help="timed runs per measurement, after one warm-up (default 5; 3 with --quick)")
    demo.add_argument("--threads", type=positive, help="threads of every BLAS/OpenMP pool and of torch (default: theirs)")
    demo.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    demo.set_defaults(run=run)
    return demo


#: Libraries whose arrays can be strided views of the demo's buffers: the demo's homes and engines.
_HOMES = ("numpy", "torch", "jax")
#: Libraries whose arrays are dense and row-major only: they take part with A in C order.
_DENSE_ONLY = ("jax",)
#: Padding of the buffer that holds the transposed view, in elements on each side.
_PAD = 16
#: Vectors the baselines are timed on (their cost is linear in the batch).
_BASELINE_ROWS = 512


def _share(home: str, arr: Any) -> Any:
    """The numpy array ``arr`` as an array of library ``home``, sharing its memory."""
    if home == "numpy":
        return arr
    if home == "jax":
        import jax

        return jax.dlpack.from_dlpack(arr)  # zero-copy where JAX can wrap it (64-byte aligned)
    import torch

    return torch.from_numpy(arr)


def _time(fn: Callable[[], Any], repeat: int, warmup: bool = True) -> float:
    """Median seconds of ``repeat`` calls of ``fn`` (each waited for), after one untimed call
    when ``warmup``."""
    return statistics.median(_timing.run_times(fn, min_runs=repeat, max_runs=repeat, warmup=int(warmup)))


def _layouts(P: Any) -> list[tuple[str, Any, Callable[[Any], Any], int]]:
    """The layouts of P: (label, buffer, view of the buffer that is A, byte offset of A in it).

    The view functions work on numpy arrays and torch tensors alike.
    """
    m, _ = P.shape
    W = aligned_empty((P.shape[1], m + 2 * _PAD), P.dtype)
    W[...] = 0
    F = aligned_empty(P.shape[::-1], P.dtype).T
    F[...] = P
    W[:, _PAD : _PAD + m] = P.T
    return [
        ("C", P, lambda buf: buf, 0),
        ("F", F, lambda buf: buf, 0),
        ("T view", W, lambda buf: buf[:, _PAD : _PAD + m].T, _PAD * P.itemsize),
    ]


def _baselines(view: Callable[[Any], Any], buf: Any, X: Any, homes: list[str], scale: float) -> dict[str, float]:
    """Times (s, scaled to the whole batch) of the usual alternatives on the first rows of X."""
    import numpy as np

    times = {}
    for home in (h for h in homes if h not in _DENSE_ONLY):  # (a loop cannot write jax arrays)
        A, Xh = view(_share(home, buf)), _share(home, X)
        y = _share(home, np.empty((len(X), A.shape[0]), X.dtype))

        def loop() -> None:
            for i in range(len(X)):
                y[i] = A @ Xh[i]

        times[f"loop {home}"] = _time(loop, 3) * scale
    if "torch" in homes:
        import torch

        A, Xt = view(torch.from_numpy(buf)), torch.from_numpy(X)
        times["bcast"] = _time(lambda: torch.matmul(A, Xt[..., None]), 1, warmup=False) * scale
    if hasattr(np, "matvec"):  # numpy >= 2.2
        A = view(buf)
        times["np.matvec"] = _time(lambda: np.matvec(A, X), 3) * scale
    return times


class _Row(NamedTuple):
    """One measured call: home library, engine, layout of A, and what was found."""

    home: str
    engine: str
    layout: str
    seconds: float
    copies: int
    in_a: bool  #: the plan's A.T view points into A
    error: float  #: max relative error against the float64 reference
    baselines: tuple[float | None, ...]  #: seconds of: Python loop, torch broadcast, numpy.matvec


def run(args: argparse.Namespace) -> int:
    """Run the demo; the exit status."""
    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    m = args.m or (256 if args.quick else 1024)
    n = args.n or (256 if args.quick else 1024)
    batch = args.batch or (512 if args.quick else 4096)
    repeat = args.repeat or (3 if args.quick else 5)
    dtype = np.dtype(args.dtype)
    homes = [name for name in _HOMES if importlib.util.find_spec(name) is not None]
    for home in homes:  # import them now, so that threadpoolctl sees their thread pools
        importlib.import_module(home)
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch is not None else None

    # A row-stochastic transition matrix P (skewed positive weights, rows sum to 1) and a
    # batch of value vectors v: y = P @ v is the expected value one step ahead.
    rng = np.random.default_rng(0)
    P, X = aligned_empty((m, n), dtype), aligned_empty((batch, n), dtype)
    weights = rng.random((m, n)) ** 4
    P[...] = weights / weights.sum(axis=1, keepdims=True)
    X[...] = rng.random((batch, n))
    tol = n * np.finfo(dtype).eps  # rigorous bound for sums of n non-negative terms
    print(
        f"batchmv demo: y = P @ v for {batch} value vectors of length {n} ({dtype}), "
        f"P a {m}x{n} row-stochastic transition matrix"
    )
    with threadpool_limits(limits=args.threads):
        if args.threads and torch is not None:
            torch.set_num_threads(args.threads)
        pools = [f"{p['internal_api']} {p.get('version') or ''}".strip() + f": {p['num_threads']}" for p in threadpool_info()]
        torch_pool = f"; torch intra-op: {torch.get_num_threads()}" if torch is not None else ""
        print(f"threads ({'--threads' if args.threads else 'defaults'}): {', '.join(pools)}{torch_pool}")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        if load >= 0.5 and args.threads != 1:
            print(
                f"warning: the machine is busy (load average {load:.2f} on {os.cpu_count()} CPUs); "
                "multi-threaded timings will be slow and erratic (try --threads 1)"
            )
        try:
            rows, failures = _measure(P, X, homes, repeat, tol)
        finally:
            if torch is not None:
                torch.set_num_threads(torch_threads)
    _report(rows, m, n, batch, repeat, dtype, tol)
    if failures:
        print(f"\nFAIL: {len(failures)} of {len(rows)} results copied A or disagree:", *failures, sep="\n")
        return 1
    print(f"\nOK: all {len(rows)} results agree with the float64 reference; A was never copied.")
    return 0


def _measure(P: Any, X: Any, homes: list[str], repeat: int, tol: float) -> tuple[list[_Row], list[str]]:
    """Run and time every home, engine and layout; the rows and the failures found."""
    import numpy as np

    import batchmv

    engines = [name for name in _HOMES if name in batchmv.available_backends()]
    ref = X.astype(np.float64) @ P.astype(np.float64).T
    k = min(len(X), _BASELINE_ROWS)
    rows, failures = [], []
    for label, buf, view, offset in _layouts(P):
        base = _baselines(view, buf, X[:k], homes, len(X) / k)
        a_strides = tuple(s // P.itemsize for s in view(buf).strides)
        for home in homes:
            if home in _DENSE_ONLY and label != "C":
                continue
            A, Xh = view(_share(home, buf)), _share(home, X)
            for engine in engines:
                if engine in _DENSE_ONLY and label != "C":
                    continue
                plan = batchmv.plan(A, Xh, backend=engine)
                if plan.views:
                    a_t = plan.views[0]
                    # A.T must start where A starts in the engine's buffer: the demo's buffer
                    # for the home engine; across libraries A is shared from its first element.
                    in_a = (
                        a_t.source == "A"
                        and a_t.strides == a_strides[::-1]
                        and a_t.offset == (offset if engine == home or home in _DENSE_ONLY else 0)
                    )
                else:  # jax: one dot_general; XLA picks the layouts (the tests read its HLO)
                    in_a = not plan.copies
                seconds = _time(lambda: batchmv.matvec(A, Xh, backend=engine), repeat)
                y = np.asarray(batchmv.matvec(A, Xh, backend=engine), dtype=np.float64)
                err = float(np.max(np.abs(y - ref) / np.abs(ref)))
                if err > tol or plan.copies or not in_a:
                    failures.append(f"{home} -> {engine}, A {label}: max rel error {err:.1e} (tolerance {tol:.1e})\n{plan}")
                baselines = (base.get(f"loop {home}"), base.get("bcast"), base.get("np.matvec"))
                rows.append(_Row(home, engine, label, seconds, len(plan.copies), in_a, err, baselines))
    return rows, failures


def _report(rows: list[_Row], m: int, n: int, batch: int, repeat: int, dtype: Any, tol: float) -> None:
    """Print the table, its footnotes and one summary line per baseline."""
    import batchmv

    print(
        f"\n{'home':<6} {'engine':<6} {'A':<6} {'ms':>8} {'GFLOP/s':>8} {'copies':>6} {'A.T in A':>8} "
        f"{'rel err':>8} {'x loop':>8} {'x bcast':>8} {'x np.mv':>8}"
    )
    for r in rows:
        print(
            f"{r.home:<6} {r.engine:<6} {r.layout:<6} {r.seconds * 1e3:8.2f} {2 * m * n * batch / r.seconds / 1e9:8.1f} "
            f"{r.copies:>6} {'yes' if r.in_a else 'NO':>8} {r.error:8.1e} "
            + " ".join(f"{b / r.seconds:8.1f}" if b else f"{'n/a':>8}" for b in r.baselines)
        )
    k = min(batch, _BASELINE_ROWS)
    scaled = f"timed on the first {k} vectors and scaled linearly to {batch}" if k < batch else "timed on the whole batch"
    print(
        f"\nms: median of {repeat} runs after a warm-up; GFLOP/s = 2*m*n*batch / time.\n"
        f"A: C = C order (m, n); F = Fortran order; T view = W[:, {_PAD}:{_PAD}+m].T of a C-order buffer W\n"
        f"   of shape (n, m+{2 * _PAD}) (strides (1, m+{2 * _PAD}), {_PAD * dtype.itemsize} bytes into W). "
        "Home arrays share the demo's buffers.\n"
        "copies: len(plan.copies); A.T in A: the plan's A.T view has A's strides transposed and starts\n"
        "   where A starts in the engine's buffer.\n"
        f"rel err: max |y - y64| / |y64| against a float64 reference (tolerance n*eps = {tol:.1e}).\n"
        f"Speed-up over each baseline, all {scaled}:\n"
        "   loop = Python loop `for i: y[i] = A @ x[i]` in the home library;\n"
        "   bcast = torch.matmul(A, X[..., None]) (expands A into a batched matmul), timed once;\n"
        "   np.mv = numpy.matvec(A, X).\n"
        "jax: its arrays are dense and row-major, so jax takes part with A in C order only; its engine\n"
        "   is one dot_general whose layouts XLA chooses: 'A.T in A' there means plan reports no copy\n"
        "   (the tests read the compiled program: no copy, transpose or broadcast of A)."
    )
    for column, name in enumerate(("the Python loop", "torch.matmul broadcast", "numpy.matvec")):
        measured = [(r.baselines[column], r.seconds) for r in rows if r.baselines[column]]
        if measured:
            times = [b for b, _ in measured]
            speedups = [b / s for b, s in measured]
            print(
                f"speed-up over {name} ({min(times):.3g} s to {max(times):.3g} s for the batch): "
                f"{min(speedups):.1f}x to {max(speedups):.1f}x (median {statistics.median(speedups):.1f}x)"
            )
    others = [name for name in batchmv.available_backends() if name not in _HOMES]
    if others:
        print(f"not in this demo: {', '.join(others)} (its arrays cannot be strided views of shared buffers)")
