"""Seed comparison: batchmv against the approaches people are usually told to use.

Run: ``.venv/bin/python benchmarks/bench_seed.py [--m 1024 --n 1024 --batch 4096]``.
Times are medians from ``torch.utils.benchmark`` (warm-up, adaptive repetitions), all
approaches on the same arrays in one process, float32, on the CPU.
"""

from __future__ import annotations

import argparse
import json
import platform

import numpy as np
import torch
import torch.utils.benchmark as tb
from threadpoolctl import threadpool_info

import batchmv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=1024)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--loop-rows", type=int, default=256, help="rows the Python loop is timed on (scaled)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    a_np = rng.standard_normal((args.m, args.n), dtype=np.float32)
    x_np = rng.standard_normal((args.batch, args.n), dtype=np.float32)
    a_t, x_t = torch.from_numpy(a_np), torch.from_numpy(x_np)
    x_loop = x_t[: args.loop_rows]
    scale = args.batch / args.loop_rows

    cases = {
        "batchmv.matvec torch": ("batchmv.matvec(a_t, x_t)", 1.0),
        "batchmv.matvec numpy": ("batchmv.matvec(a_np, x_np)", 1.0),
        "native torch X @ A.T": ("x_t @ a_t.T", 1.0),
        "native numpy X @ A.T": ("x_np @ a_np.T", 1.0),
        "torch.matmul(A, X[..., None])": ("torch.matmul(a_t, x_t[..., None])", 1.0),
        "numpy.matvec(A, X)": ("np.matvec(a_np, x_np)", 1.0),
        "Python loop A @ x[i]": ("torch.stack([a_t @ v for v in x_loop])", scale),
    }
    env = {"batchmv": batchmv, "torch": torch, "np": np, "a_t": a_t, "x_t": x_t, "a_np": a_np,
           "x_np": x_np, "x_loop": x_loop}  # fmt: skip
    flops = 2 * args.m * args.n * args.batch
    results = {}
    for label, (stmt, factor) in cases.items():
        measured = tb.Timer(stmt, globals=env, num_threads=torch.get_num_threads()).blocked_autorange(min_run_time=1.0)
        seconds = measured.median * factor
        results[label] = seconds
        print(f"{label:<32} {seconds * 1e3:10.2f} ms  {flops / seconds / 1e9:8.1f} GFLOP/s"
              + ("  (timed on %d rows, scaled)" % args.loop_rows if factor != 1.0 else ""))  # fmt: skip
    ours = results["batchmv.matvec torch"]
    for label in ("torch.matmul(A, X[..., None])", "numpy.matvec(A, X)", "Python loop A @ x[i]"):
        print(f"speed-up of batchmv.matvec (torch) over {label}: {results[label] / ours:.1f}x")
    if args.json:
        info = {"platform": platform.platform(), "torch": torch.__version__, "numpy": np.__version__,
                "threads": torch.get_num_threads(), "blas": threadpool_info(), "args": vars(args)}  # fmt: skip
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "seconds": results}, fh, indent=2)


if __name__ == "__main__":
    main()
