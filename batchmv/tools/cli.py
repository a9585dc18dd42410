"""The ``batchmv`` command (also ``python -m batchmv``): one subcommand per module.

``batchmv info`` (:mod:`.info`), ``batchmv demo`` (:mod:`.demo`), ``batchmv apply``
(:mod:`.apply`) and ``batchmv bench`` (:mod:`.bench`).  Each module adds its own parser
and runs its own job.
"""

from __future__ import annotations

import argparse

from . import demo, info
from .apply import command as apply_command
from .bench import command as bench_command


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = argparse.ArgumentParser(
        prog="batchmv", description="Batched matrix-vector products with one shared matrix, as one GEMM."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for subcommand in (info, demo, apply_command, bench_command):
        subcommand.add_parser(commands)
    args = parser.parse_args(argv)
    return args.run(args)
