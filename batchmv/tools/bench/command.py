"""``batchmv bench``: batchmv against the native calls and the usual alternatives, on a
grid of shapes, batch sizes, dtypes and layouts of A, with the machine's roofline.

The arguments, and the run: the report printed, and written as JSON and a plot on request.
Importing this module imports no array library; the run imports what it uses.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..arguments import positive, positive_float
from .config import DTYPES, LAYOUTS, Config
from .plot import plot, plot_skinny
from .report import print_report, to_json
from .suite import run, run_sparse


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    grid = parser.add_argument_group("grid (default: the full grid; --quick: a small one)")
    add = grid.add_argument
    add("--quick", action="store_true", help="small grid, short timings: under a minute on 2 cores")
    add("--m", type=positive, nargs="+", metavar="M", help="rows of A (with --n: every (m, n) pair)")
    add("--n", type=positive, nargs="+", metavar="N", help="columns of A (default: the values of --m)")
    add("--batch", type=positive, nargs="+", metavar="B", help="batch sizes")
    add("--dtype", choices=DTYPES, nargs="+", help="dtypes (bfloat16: torch only; default: all; --quick: float32)")
    add("--layout", choices=LAYOUTS, nargs="+", help="A in C order, or T: the transposed view of a C-order (n, m) buffer")
    add("--only", nargs="+", metavar="TEXT",
        help="only approaches whose name contains one of these (case-insensitive); 'skinny': only the skinny section "
             "(A of 32 and 128 MiB, batch 1 to 64)")
    add("--no-cross", action="store_true",
        help="skip batchmv calls whose engine is not the arrays' own library (otherwise run in float32)")
    add("--cross", action="store_true", help="with --quick: include them (--quick skips them otherwise)")
    add("--sparse", action="store_true",
        help="only the sparse section: a sparse A against each library's own sparse product, densities 1e-4 to "
             "1e-1, batch 1 to 4096 (--quick: a small one)")
    add("--all-peers", action="store_true",
        help="every peer at every dtype and layout (default: beyond float32 with A in C order, only the "
             "broadcast matmul and numpy.matvec)")
    timing = parser.add_argument_group("timing")
    add = timing.add_argument
    add("--threads", type=positive, help="threads of every BLAS/OpenMP pool and of torch (default: all CPUs)")
    add("--min-time", type=positive_float, help="seconds of timed calls per measurement (default 0.05; --quick 0.03)")
    add("--max-call", type=positive_float, help="skip calls estimated above this many seconds (default 1; --quick 0.5)")
    add("--max-memory", type=positive_float, default=2.0, help="skip points whose A, x and y exceed this many GB (default 2)")
    add("--loop-rows", type=positive, help="vectors the Python loops run on, scaled to the batch (default 256; --quick 64)")
    output = parser.add_argument_group("output")
    add = output.add_argument
    add("--json", metavar="FILE", help="write machine info, roofline, every result and the targets")
    add("--plot", metavar="FILE.png", help="GFLOP/s against batch per approach, with the roofline (needs matplotlib)")
    add("--no-progress", action="store_true", help="no progress bar on stderr")
    add("--force", action="store_true", help="overwrite existing output files (never through a symbolic link)")
    return parser


def skinny_plot(args: argparse.Namespace, config: Config) -> str | None:
    """The skinny section's plot, written beside --plot when the run has both sections."""
    if not (args.plot and config.main and config.skinny):
        return None
    root, ext = os.path.splitext(args.plot)
    return f"{root}-skinny{ext}"


def output_problem(path: str, force: bool) -> str | None:
    """Why the run may not write ``path`` (checked before it starts, so that no result is
    lost at the end), or None: its folder must exist; an existing file is replaced only with
    --force, and never a symbolic link or anything but a regular file."""
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        return f"the folder of {path} does not exist"
    if os.path.islink(path):
        return f"{path} is a symbolic link; bench never writes through one"
    if os.path.lexists(path):
        if not os.path.isfile(path):
            return f"{path} exists and is not a regular file"
        if not force:
            return f"{path} exists; use --force to overwrite it"
    return None


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to ``batchmv``'s subparsers."""
    parser = commands.add_parser(
        "bench", help="time batchmv against native calls and the usual alternatives, with the roofline",
        description=__doc__.split("\n\n")[0].replace("``", ""),
    )  # fmt: skip
    add_arguments(parser)
    parser.set_defaults(run=main)
    return parser


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog="batchmv bench", description=__doc__.split("\n\n")[0]))


def main(args: argparse.Namespace | list[str] | None = None) -> int:
    """Run ``batchmv bench`` (``args``: parsed arguments, or a command line)."""
    if not isinstance(args, argparse.Namespace):
        args = build_parser().parse_args(args)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("error: --plot needs matplotlib: pip install 'batchmv[bench]'", file=sys.stderr)
            return 2
    config = Config.from_args(args)
    skinny_png = skinny_plot(args, config)
    for path in (p for p in (args.json, args.plot, skinny_png) if p):
        problem = output_problem(path, args.force)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    report = run_sparse(config) if args.sparse else run(config)
    print_report(report)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(to_json(report))
        print(f"\nwrote {args.json}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
        if skinny_png:
            plot_skinny(report, skinny_png)
            print(f"wrote {skinny_png}")
    return 0
