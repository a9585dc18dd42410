"""Dask: peak memory of ``batchmv.matvec(A, x)`` on an x chunked along the vector axis,
against dask's own ``x @ A.T`` on the same x.

Run: ``.venv/bin/python benchmarks/bench_dask_memory.py [--way auto|rechunk|per-chunk]``.

Each measurement runs in a fresh child process: x is a lazy ``dask.array.random`` array
(its chunks are made by tasks, as a file or a zarr store would be read), the graph is built
first, then ``compute(scheduler="synchronous")`` runs under ``tracemalloc`` and the peak of
traced memory above the level before ``compute`` is reported (numpy's buffers are traced;
BLAS's own work space is not).  The result, which ``compute`` returns in one array, is part
of the peak; its size is printed too.  ``--way`` forces the graph's shape for the batchmv
runs (default: the adapter's own choice).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CASES = {
    # name: (A shape, x shape, x chunks, array.chunk-size or None for dask's default)
    "issue 10 report": ((4, 64), (8192, 64), (8192, 4), "1MiB"),
    "16 column chunks, m=64": ((64, 512), (10000, 512), (10000, 32), None),
    "16 column chunks, m=256": ((256, 512), (10000, 512), (10000, 32), None),
    "16 column chunks, m=512": ((512, 512), (10000, 512), (10000, 32), None),
    "same, chunk-size 4MiB": ((512, 512), (10000, 512), (10000, 32), "4MiB"),
}

_CHILD = r"""
import json, sys, time, tracemalloc
import numpy as np, dask, dask.array as da
import batchmv
from batchmv.backends import _dask_graph as graphs

a_shape, x_shape, chunks, chunk_size, who, way = json.loads(sys.argv[1])
if way != "auto":
    graphs.choose_per_chunk = lambda *args, **kwargs: way == "per-chunk"
A = np.random.default_rng(1).standard_normal(a_shape)
x = da.random.default_rng(0).random(x_shape, chunks=chunks)
da.ones(2).sum().compute(scheduler="synchronous")  # dask's first compute imports distributed
config = {"array.chunk-size": chunk_size} if chunk_size else {}
with dask.config.set(config):
    y = batchmv.matvec(A, x) if who == "batchmv" else x @ A.T
    chosen = "" if who != "batchmv" else (
        "rechunk" if any("rechunked" in c for c in batchmv.plan(A, x).copies) else "per-chunk")
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    out = y.compute(scheduler="synchronous")
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    ref = x.compute(scheduler="synchronous") @ A.T
    assert np.allclose(out, ref, rtol=1e-10, atol=1e-10)
print(json.dumps({"peak": peak, "seconds": seconds, "y": out.nbytes, "x": x.nbytes,
                  "tasks": len(dict(y.__dask_graph__())), "way": chosen}))
"""


def measure(case: tuple, who: str, way: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps([*case, who, way])], capture_output=True, text=True
    )
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--way", choices=("auto", "rechunk", "per-chunk"), default="auto")
    args = parser.parse_args()
    mb = 1e6
    print(f"{'case':<26} {'who':<18} {'peak MB':>8} {'x MB':>6} {'y MB':>6} {'tasks':>6} {'s':>6}")
    for name, case in CASES.items():
        for who in ("batchmv", "dask"):
            r = measure(case, who, args.way)
            print(
                f"{name:<26} {(who + ' ' + r['way']).strip():<18} {r['peak'] / mb:8.1f} {r['x'] / mb:6.1f} {r['y'] / mb:6.1f} "
                f"{r['tasks']:6d} {r['seconds']:6.2f}"
            )


if __name__ == "__main__":
    main()
