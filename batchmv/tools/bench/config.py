"""The grid and the settings of a ``batchmv bench`` run."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

HOMES = ("numpy", "torch", "jax")
DTYPES = ("float32", "float64", "bfloat16")
LAYOUTS = ("C", "T")

#: The full grid: square and non-square (m, n) pairs from {64, 512, 1024, 4096}.
FULL_SHAPES = ((64, 64), (512, 512), (1024, 1024), (4096, 4096), (64, 4096), (4096, 64))
FULL_BATCHES = (1, 16, 256, 4096, 100_000)
QUICK_SHAPES = ((64, 64), (1024, 1024))
QUICK_BATCHES = (1, 256, 4096)
#: The skinny section: A of these MiB (n = 4096 for float32, 2048 for float64), these batches.
SKINNY_MIB = (32, 128)
SKINNY_BATCHES = (1, 2, 4, 8, 16, 32, 64)
SKINNY_DTYPES = ("float32", "float64")
QUICK_SKINNY = ((128,), (2,), ("float32",))


@dataclass
class Config:
    shapes: list[tuple[int, int]]
    batches: list[int]
    dtypes: list[str]
    layouts: list[str]
    threads: int
    min_time: float
    max_call: float
    max_memory_gb: float
    loop_rows: int
    quick: bool
    cross: bool = True
    all_peers: bool = False
    only: list[str] | None = None
    progress: bool = True
    peak_size: int = 2048
    copy_mb: int = 256
    main: bool = True  #: the main grid runs (not with --only skinny alone)
    skinny: list[tuple[int, int, int, str, str]] | None = None  #: the skinny section's points, or None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Config:
        quick = args.quick
        if args.m or args.n:
            ms, ns = args.m or args.n, args.n or args.m
            shapes = [(m, n) for m in ms for n in ns]
        else:
            shapes = list(QUICK_SHAPES if quick else FULL_SHAPES)
        return cls(
            shapes=shapes,
            batches=sorted(set(args.batch or (QUICK_BATCHES if quick else FULL_BATCHES))),
            dtypes=list(args.dtype or (["float32"] if quick else DTYPES)),
            layouts=list(args.layout or LAYOUTS),
            threads=args.threads or cpu_count(),
            min_time=args.min_time or (0.03 if quick else 0.05),
            max_call=args.max_call or (0.5 if quick else 1.0),
            max_memory_gb=args.max_memory,
            loop_rows=args.loop_rows or (64 if quick else 256),
            quick=quick,
            cross=not (args.no_cross or (quick and not args.cross)),
            all_peers=args.all_peers,
            only=[text.lower() for text in args.only] if args.only else None,
            progress=not args.no_progress,
            peak_size=1024 if quick else 2048,
            copy_mb=64 if quick else 256,
            main=not (args.only and [text.lower() for text in args.only] == ["skinny"]),
            skinny=skinny_points(args),
        )


def skinny_points(args: argparse.Namespace) -> list[tuple[int, int, int, str, str]] | None:
    """(m, n, batch, dtype, "C") of the skinny section: with the full grid, ``--quick`` (a
    smaller one) or ``--only skinny``; None with a grid of one's own (--m, --n, --batch)
    or ``--only`` without "skinny"."""
    only = [text.lower() for text in args.only] if args.only else None
    if (only is not None and "skinny" not in only) or (only is None and (args.m or args.n or args.batch)):
        return None
    mibs, batches, dtypes = QUICK_SKINNY if args.quick else (SKINNY_MIB, SKINNY_BATCHES, SKINNY_DTYPES)
    dtypes = [d for d in dtypes if d in (args.dtype or dtypes)]
    points = []
    for mib in mibs:
        for dtype in dtypes:  # (every batch of one A in turn: the grid keeps A between them)
            n = 4096 if dtype == "float32" else 2048
            for b in sorted(set(args.batch or batches)):
                points.append((mib * 2**20 // (n * (4 if dtype == "float32" else 8)), n, b, dtype, "C"))
    return points


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
