"""Out of core: ``batchmv apply`` on a VECTORS file several times larger than its memory budget.

Run: ``.venv/bin/python benchmarks/bench_out_of_core.py [--rows 1000000 --n 256 --m 256 --budget 64M]``.

Writes A (m, n) and VECTORS (rows, n) as .npy files in a temporary directory, then runs
``python -m batchmv apply`` in child processes and reports, for each run, the wall time,
rows/s, input MB/s and the peak resident set (VmHWM of the child: anonymous and
file-backed pages alike):

* a 10-vector run: the baseline (interpreter, numpy, batchmv, A);
* the full file with ``--memory-budget``;
* optionally (``--dask-workers N``) the same job on a ``distributed.LocalCluster`` through
  ``--scheduler`` (peak of the client process only).

For scale it also times the same GEMM in memory (``batchmv.matvec`` on one block that is
already in RAM), the ceiling for a streaming run.  The page cache is warm (the file was
just written) unless ``--drop-caches`` (root only) empties it first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

import batchmv
from batchmv.tools.apply import command

_HWM = (
    "import sys\n"
    "from batchmv.tools.apply import command\n"
    "rc = command.main(sys.argv[1:])\n"
    "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
    "print(int(hwm) * 1024)\n"
    "sys.exit(rc)\n"
)


def run_apply(*args: str) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one ``batchmv apply`` in a child process."""
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", _HWM, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"batchmv apply failed ({r.returncode}): {r.stderr.strip()}")
    return seconds, int(r.stdout)


def write_inputs(d: str, rows: int, n: int, m: int, dtype: np.dtype) -> tuple[str, str, str]:
    rng = np.random.default_rng(0)
    a_path, x_path, tiny = (os.path.join(d, name) for name in ("A.npy", "X.npy", "Xtiny.npy"))
    np.save(a_path, rng.standard_normal((m, n)).astype(dtype))
    X = np.lib.format.open_memmap(x_path, mode="w+", dtype=dtype, shape=(rows, n))
    step = max(1, (64 << 20) // (n * dtype.itemsize))
    for i in range(0, rows, step):
        X[i : i + step] = rng.standard_normal((min(step, rows - i), n)).astype(dtype)
    X.flush()
    del X
    np.save(tiny, np.ones((10, n), dtype))
    return a_path, x_path, tiny


def in_memory_rate(a_path: str, n: int, budget: int, dtype: np.dtype) -> float:
    """Rows/s of batchmv.matvec on one budget-sized block already in memory (best of 5)."""
    A = np.load(a_path)
    rows = max(1, budget // (2 * n * dtype.itemsize + A.shape[0] * dtype.itemsize))
    X = np.random.default_rng(1).standard_normal((rows, n)).astype(dtype)
    Y = np.empty((rows, A.shape[0]), dtype)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        batchmv.matvec(A, X, out=Y)
        best = min(best, time.perf_counter() - start)
    return rows / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--m", type=int, default=256)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--budget", default="64M", help="--memory-budget of the run (default 64M)")
    parser.add_argument("--dir", help="where to write the files (default: a temporary directory)")
    parser.add_argument("--drop-caches", action="store_true", help="empty the page cache before the run (root)")
    parser.add_argument("--dask-workers", type=int, default=0, help="also run on a LocalCluster of this many workers")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()

    dtype = np.dtype(args.dtype)
    budget = command.parse_size(args.budget)
    results: dict = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "numpy": np.__version__},
        "job": {"rows": args.rows, "n": args.n, "m": args.m, "dtype": args.dtype, "budget": budget},
    }
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        t0 = time.perf_counter()
        a_path, x_path, tiny = write_inputs(d, args.rows, args.n, args.m, dtype)
        size = os.path.getsize(x_path)
        print(
            f"VECTORS: {args.rows:,} x {args.n} {args.dtype} = {size / 2**20:,.0f} MiB "
            f"({size / budget:.1f}x the {budget / 2**20:,.0f} MiB budget), A: {args.m} x {args.n}; "
            f"written in {time.perf_counter() - t0:.1f} s"
        )
        common = ["--memory-budget", str(budget), "--quiet", "--force"]
        _, baseline = run_apply(a_path, tiny, "-o", os.path.join(d, "Ytiny.npy"), *common)
        if args.drop_caches:
            os.sync()
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        out = os.path.join(d, "Y.npy")
        seconds, peak = run_apply(a_path, x_path, "-o", out, *common)
        Y, X, A = np.load(out, mmap_mode="r"), np.load(x_path, mmap_mode="r"), np.load(a_path)
        check = np.allclose(Y[-1000:], X[-1000:] @ A.T, rtol=1e-4, atol=1e-4)
        rows = {
            "baseline (10 vectors)": {"peak_rss": baseline},
            "apply": {
                "seconds": seconds, "rows_per_s": args.rows / seconds, "input_mb_per_s": size / seconds / 1e6,
                "peak_rss": peak, "peak_minus_baseline": peak - baseline, "correct": bool(check),
            },
        }  # fmt: skip
        if args.dask_workers:
            import distributed

            with distributed.LocalCluster(
                n_workers=args.dask_workers, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
            ) as cluster:
                dseconds, dpeak = run_apply(a_path, x_path, "-o", out, *common, "--scheduler", cluster.scheduler_address)
            rows[f"apply --scheduler ({args.dask_workers} workers)"] = {
                "seconds": dseconds, "rows_per_s": args.rows / dseconds, "input_mb_per_s": size / dseconds / 1e6,
                "peak_rss": dpeak, "peak_minus_baseline": dpeak - baseline,
            }  # fmt: skip
        rows["in-memory matvec (one block, ceiling)"] = {"rows_per_s": in_memory_rate(a_path, args.n, budget, dtype)}
    results["runs"] = rows

    print(f"\n{'run':<40} {'s':>7} {'rows/s':>12} {'MB/s in':>8} {'peak RSS':>10} {'- baseline':>11}")
    for name, r in rows.items():
        cells = [
            f"{r['seconds']:7.2f}" if "seconds" in r else f"{'':>7}",
            f"{r['rows_per_s']:12,.0f}" if "rows_per_s" in r else f"{'':>12}",
            f"{r['input_mb_per_s']:8.0f}" if "input_mb_per_s" in r else f"{'':>8}",
            f"{r['peak_rss'] / 2**20:8.1f} M" if "peak_rss" in r else f"{'':>10}",
            f"{r['peak_minus_baseline'] / 2**20:9.1f} M" if "peak_minus_baseline" in r else f"{'':>11}",
        ]
        print(f"{name:<40} " + " ".join(cells))
    apply = rows["apply"]
    print(
        f"\npeak RSS - baseline = {apply['peak_minus_baseline'] / 2**20:.1f} MiB for a {budget / 2**20:.0f} MiB budget "
        f"and a {size / 2**20:,.0f} MiB file; result {'correct' if apply['correct'] else 'WRONG'} (last 1000 rows checked)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
