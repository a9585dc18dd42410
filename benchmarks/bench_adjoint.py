"""The adjoint ``y = A^H x`` against the forward call and each library's native adjoints.

Run: ``.venv/bin/python benchmarks/bench_adjoint.py [--m 1024 --n 1024 --batch 1 16 4096
--dtype float32 complex64 --threads 1 --rounds 61 --rounds-large 11 --json out.json]``.

For each library (numpy, torch, jax), dtype and batch, on the same arrays (A (m, n), X
(batch, m) for the adjoint and (batch, n) for the forward call, vectors along the last
axis), one *round* runs every approach once, in turn, each round starting one approach
later than the one before (so that no approach always follows the same one); each
approach's time in a round is
the mean of a block of calls (blocks of about 5 ms for short calls, so that a round is
short and the approaches it compares meet the same load).  Times are the process's CPU
time (``time.process_time``: the process is pinned to ``--threads`` CPUs, so this is the
time it ran, without the time another process held its CPU, which on a shared machine is
most of the noise); wall times are stored beside them in the JSON.  Reported: the
median over rounds of each approach, and the median over rounds of the paired ratio
batchmv / best native adjoint, where the best native adjoint is the native approach with
the lowest median (its time in the same round divides batchmv's) among those whose result
has batchmv's layout (vectors contiguous); the ratio to the best native adjoint of any
layout is reported beside it.  Approaches:

* ``batchmv.rmatvec(A, X)`` and ``batchmv.prepare(A).H(X)``; the forward
  ``batchmv.matvec(A, X)`` of the same shape;
* native adjoints: ``X @ A.conj()`` (which copies A for complex dtypes), ``(A^H @ X.T).T``
  (numpy ``A.conj().T``, torch ``A.mH``), ``conj(conj(X) @ A)`` (the identity batchmv uses
  where the GEMM has no conjugate flag), and ``X @ A`` for real dtypes; jax's are jitted.

Thread pools are fixed before the libraries load: BLAS with threadpoolctl, torch with
``set_num_threads``, XLA by pinning the process to ``--threads`` CPUs (the only bound on
its pool).  The CPU model, thread counts and BLAS libraries are printed and stored.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def _pin(threads: int) -> None:
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + (
        " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" if threads == 1 else ""
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _block(fn, target_s: float = 0.005) -> int:
    """Calls per block so that a block takes about ``target_s`` (one call when slower)."""
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    return max(1, min(1000, int(target_s / max(one, 1e-7))))


def _approaches(lib: str, A, X_adj, X_fwd, batchmv):
    """(name, fn, kind) for one library; kind is "batchmv", "forward", "native" (a result
    laid out like batchmv's, vectors contiguous) or "native-T" (a transposed result: the
    GEMM writes the batch axis contiguous, which BLAS may do faster for small batches)."""
    op = batchmv.prepare(A)
    out = [
        ("batchmv.rmatvec(A, X)", lambda: batchmv.rmatvec(A, X_adj), "batchmv"),
        ("batchmv.prepare(A).H(X)", lambda: op.H(X_adj), "batchmv"),
        ("forward batchmv.matvec(A, X)", lambda: batchmv.matvec(A, X_fwd), "forward"),
    ]
    complex_ = "complex" in str(A.dtype)
    if lib == "numpy":
        import numpy as np

        out += [
            ("X @ A.conj()", lambda: X_adj @ A.conj(), "native"),
            ("(A.conj().T @ X.T).T", lambda: (A.conj().T @ X_adj.T).T, "native-T"),
        ]
        if complex_:
            out.append(("conj(conj(X) @ A)", lambda: np.conjugate(np.conjugate(X_adj) @ A), "native"))
        else:
            out.append(("X @ A", lambda: X_adj @ A, "native"))
    elif lib == "torch":
        import torch

        out += [
            ("X @ A.conj()", lambda: X_adj @ A.conj(), "native"),
            ("(A.mH @ X.T).T", lambda: (A.mH @ X_adj.T).T, "native-T"),
        ]
        if complex_:
            out.append(("conj(conj(X) @ A)", lambda: torch.conj_physical(torch.conj_physical(X_adj) @ A), "native"))
        else:
            out.append(("X @ A", lambda: X_adj @ A, "native"))
    else:
        import jax
        import jax.numpy as jnp

        def jitted(f):
            g = jax.jit(f)
            return lambda: g(A, X_adj).block_until_ready()

        out += [
            ("jit(X @ conj(A))", jitted(lambda a, x: x @ jnp.conj(a)), "native"),
            ("jit((A^H @ X.T).T)", jitted(lambda a, x: (jnp.conj(a).T @ x.T).T), "native"),
            ("jit(conj(conj(X) @ A))", jitted(lambda a, x: jnp.conj(jnp.conj(x) @ a)), "native"),
        ]
        out = [(n, (lambda f=f: _ready(f())) if not k.startswith("native") else f, k) for n, f, k in out]
    return out


def _ready(y):
    block = getattr(y, "block_until_ready", None)
    return block() if block is not None else y


def run_point(lib: str, dtype: str, m: int, n: int, batch: int, rounds: int, rounds_large: int, batchmv) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)

    def values(shape):
        v = rng.standard_normal(shape, dtype=np.float32)
        return v + 1j * rng.standard_normal(shape, dtype=np.float32) if dtype == "complex64" else v

    a_np, xa_np, xf_np = (values(s).astype(dtype) for s in ((m, n), (batch, m), (batch, n)))
    if lib == "numpy":
        A, X_adj, X_fwd = a_np, xa_np, xf_np
    elif lib == "torch":
        import torch

        A, X_adj, X_fwd = (torch.from_numpy(v) for v in (a_np, xa_np, xf_np))
    else:
        import jax.numpy as jnp

        A, X_adj, X_fwd = (jnp.asarray(v) for v in (a_np, xa_np, xf_np))
    approaches = _approaches(lib, A, X_adj, X_fwd, batchmv)
    reference = a_np.conj().T.astype(np.complex128) @ xa_np.T.astype(np.complex128)
    for name, fn, kind in approaches:  # every adjoint gives the same values
        if kind != "forward":
            got = np.asarray(fn()).T
            err = np.abs(got - reference).max() / (np.abs(reference).max() + 1e-30)
            assert err < 1e-4, f"{lib} {name}: relative error {err}"
    blocks = {name: _block(fn) for name, fn, _ in approaches}
    t0 = time.perf_counter()
    approaches[0][1]()
    rounds = rounds if time.perf_counter() - t0 < 0.05 else rounds_large
    times: dict[str, list[float]] = {name: [] for name, _, _ in approaches}  # CPU seconds per call
    walls: dict[str, list[float]] = {name: [] for name, _, _ in approaches}  # wall seconds per call
    for r in range(rounds):
        for name, fn, _ in approaches[r % len(approaches) :] + approaches[: r % len(approaches)]:
            k = blocks[name]
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(k):
                fn()
            times[name].append((time.process_time() - c0) / k)
            walls[name].append((time.perf_counter() - t0) / k)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    wall_medians = {name: statistics.median(ts) for name, ts in walls.items()}
    natives = [name for name, _, kind in approaches if kind == "native"]
    best = min(natives, key=medians.__getitem__)
    best_any = min([name for name, _, kind in approaches if kind.startswith("native")], key=medians.__getitem__)

    def paired(name: str, base: str) -> float:
        return statistics.median(t / b for t, b in zip(times[name], times[base]))

    ours = [name for name, _, kind in approaches if not kind.startswith("native")]
    fwd = "forward batchmv.matvec(A, X)"
    return {
        "lib": lib, "dtype": dtype, "m": m, "n": n, "batch": batch, "rounds": rounds, "block_calls": blocks,
        "median_s": medians, "wall_median_s": wall_medians, "best_native": best, "ratio_to_best_native": {k: paired(k, best) for k in ours},
        "best_native_any_layout": best_any, "ratio_to_best_any_layout": {k: paired(k, best_any) for k in ours},
        "adjoint_over_forward": statistics.median(t / f for t, f in zip(times["batchmv.rmatvec(A, X)"], times[fwd])),
    }  # fmt: skip


def markdown(results: list[dict]) -> str:
    """The table of benchmarks/README.md ("Adjoint"): medians in ms, paired ratios."""
    rows = [
        "| library | dtype | batch | `rmatvec` | `prepare(A).H` | forward `matvec` | best native adjoint (same layout) "
        "| rmatvec / it | prepare.H / it | rmatvec / forward | best native, any layout: rmatvec / it |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for p in results:
        med, r, ra = p["median_s"], p["ratio_to_best_native"], p["ratio_to_best_any_layout"]
        any_layout = "same" if p["best_native_any_layout"] == p["best_native"] else (
            f"`{p['best_native_any_layout']}` {med[p['best_native_any_layout']] * 1e3:.3g} ms: "
            f"{ra['batchmv.rmatvec(A, X)']:.3f}"
        )  # fmt: skip
        rows.append(
            f"| {p['lib']} | {p['dtype']} | {p['batch']} | {med['batchmv.rmatvec(A, X)'] * 1e3:.3g} "
            f"| {med['batchmv.prepare(A).H(X)'] * 1e3:.3g} | {med['forward batchmv.matvec(A, X)'] * 1e3:.3g} "
            f"| `{p['best_native']}` {med[p['best_native']] * 1e3:.3g} | {r['batchmv.rmatvec(A, X)']:.3f} "
            f"| {r['batchmv.prepare(A).H(X)']:.3f} | {p['adjoint_over_forward']:.3f} | {any_layout} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=1024)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 4096])
    parser.add_argument("--dtype", nargs="+", default=["float32", "complex64"])
    parser.add_argument("--libs", nargs="+", default=["numpy", "torch", "jax"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=61, help="rounds for calls under 50 ms")
    parser.add_argument("--rounds-large", type=int, default=11, help="rounds for calls of 50 ms and more")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--markdown", nargs="+", metavar="JSON", help="print the table of these result files, run nothing")
    args = parser.parse_args()
    if args.markdown:
        results = []
        for path in args.markdown:
            with open(path, encoding="utf-8") as fh:
                results += json.load(fh)["results"]
        key = {"numpy": 0, "torch": 1, "jax": 2}
        print(markdown(sorted(results, key=lambda p: (p["dtype"] != "float32", p["dtype"], p["batch"], key.get(p["lib"], 3)))))
        return
    _pin(args.threads)

    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    import batchmv

    threadpool_limits(args.threads)
    versions = {"numpy": np.__version__, "batchmv": batchmv.__version__, "python": sys.version.split()[0]}
    if "torch" in args.libs:
        import torch

        torch.set_num_threads(args.threads)
        versions["torch"] = torch.__version__
    if "jax" in args.libs:
        import jax

        versions["jax"] = jax.__version__
    machine = {
        "cpu": _cpu_model(), "cpus_pinned": sorted(os.sched_getaffinity(0)), "threads": args.threads,
        "torch_threads": torch.get_num_threads() if "torch" in args.libs else None, "versions": versions,
        "blas": [
            {k: d.get(k) for k in ("internal_api", "version", "num_threads", "filepath")} for d in threadpool_info()
        ],
        "load_average": os.getloadavg(),
    }  # fmt: skip
    print(json.dumps(machine, indent=1))
    results = []
    for dtype in args.dtype:
        for batch in args.batch:
            for lib in args.libs:
                point = run_point(lib, dtype, args.m, args.n, batch, args.rounds, args.rounds_large, batchmv)
                results.append(point)
                med = point["median_s"]
                print(
                    f"{lib:6} {dtype:9} batch {batch:5}: rmatvec {med['batchmv.rmatvec(A, X)'] * 1e3:9.3f} ms, "
                    f"prepare.H {med['batchmv.prepare(A).H(X)'] * 1e3:9.3f} ms, "
                    f"forward {med['forward batchmv.matvec(A, X)'] * 1e3:9.3f} ms, best native "
                    f"{point['best_native']} {med[point['best_native']] * 1e3:9.3f} ms; rmatvec/native "
                    f"{point['ratio_to_best_native']['batchmv.rmatvec(A, X)']:.3f}, prepare.H/native "
                    f"{point['ratio_to_best_native']['batchmv.prepare(A).H(X)']:.3f}, "
                    f"rmatvec/forward {point['adjoint_over_forward']:.3f}; any layout: {point['best_native_any_layout']} "
                    f"{med[point['best_native_any_layout']] * 1e3:9.3f} ms, rmatvec/it "
                    f"{point['ratio_to_best_any_layout']['batchmv.rmatvec(A, X)']:.3f}",
                    flush=True,
                )
    machine["load_average_end"] = os.getloadavg()
    print(markdown(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"machine": machine, "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
