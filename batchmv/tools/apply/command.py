"""``batchmv apply MATRIX.npy VECTORS.npy -o OUT.npy``: ``matvec`` on .npy files of any size.

The arguments, the exit status and the run in order: check everything and decide the
blocks (:mod:`.job`), reach the Dask scheduler if asked, take the OUT lock
(:mod:`.files`), then the first file is made: open ``OUT.partial`` and its journal
(:mod:`.output`), run the pending blocks (:mod:`.runners`), rename the result onto OUT.

Exit status: 0 done; 2 bad input (one line on stderr, nothing written: every check that can
fail comes before the first file); 1 the run failed
(disk full, I/O error: the finished blocks are kept for ``--resume``); 130 interrupted.

Importing this module imports no array library.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import re
import sys
from decimal import Decimal
from typing import Any

from .errors import BadInput, RunFailed, say
from .files import OutLock
from .job import Job, make_job
from .output import Output, finish, open_output
from .runners import block_buffers, connect, run_local, run_on_dask

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_BUDGET = 256 * 2**20
#: errno values that mean "the disk (or this process's file size limit) is full"
_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


MAX_BUDGET = 2**63 - 1  #: bytes: the largest size a file offset or an allocation can have


def parse_size(text: str) -> int:
    """A memory size: bytes, or a number with K, M, G or T (powers of 1024; "MB", "MiB" alike).
    ValueError, saying why, for anything else (decimal arithmetic: no float to overflow).

    >>> parse_size("32M"), parse_size("1.5GiB"), parse_size("4096")
    (33554432, 1610612736, 4096)
    """
    match = re.fullmatch(r"\s*(\d+)(\.\d*)?\s*(?:([kKmMgGtT])(?:i?[bB])?|[bB])?\s*", text)
    shown = text.strip() if len(text.strip()) <= 40 else text.strip()[:37] + "..."
    if not match:
        raise ValueError(f"invalid --memory-budget {shown!r}: use bytes or a number with K, M, G or T, e.g. 512M")
    whole, fraction, unit = match.groups()
    scale = 1024 ** ("kmgt".index(unit.lower()) + 1) if unit else 1
    # (more than 19 digits is more than MAX_BUDGET: no need to convert, or to print, them)
    size = Decimal(whole + (fraction or "")) * scale if len(whole.lstrip("0")) <= 19 else Decimal(MAX_BUDGET) + 1
    if size > MAX_BUDGET:
        raise ValueError(f"--memory-budget {shown} is larger than any memory (at most {MAX_BUDGET:,} bytes)")
    if int(size) <= 0:
        raise ValueError(f"the memory budget must be positive, got {shown!r}")
    return int(size)


def _one_line_error(message: str) -> None:
    """argparse's error, as every other bad input: one line and exit status 2 (argparse
    itself prints the whole usage first)."""
    say(f"error: {message} (see --help)")
    sys.exit(EXIT_BAD_INPUT)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.error = _one_line_error  # type: ignore[method-assign]  # (also as a subcommand of `batchmv`)
    parser.add_argument("matrix", metavar="MATRIX.npy", help="the shared matrix A, shape (m, n)")
    parser.add_argument("vectors", metavar="VECTORS.npy", help="the vectors: any shape with n along --axis")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.npy", help="the result, a standard .npy file")
    parser.add_argument("--axis", type=int, default=-1, help="the axis of VECTORS that holds the vectors (default -1)")
    parser.add_argument("--backend", help="engine: auto, numpy, torch, jax, cupy (default: BATCHMV_BACKEND, else auto)")
    parser.add_argument(
        "--memory-budget", default=DEFAULT_BUDGET, metavar="SIZE",  # checked by _run: one line, exit 2
        help="memory for blocks: VECTORS, results, the engine's working copy; A not included (default 256M; K, M, G, T)",
    )  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT.journal")
    parser.add_argument("--force", action="store_true", help="overwrite an existing OUT; discard an unfinished run")
    parser.add_argument(
        "--scheduler", metavar="ADDRESS",
        help="run the blocks on this Dask scheduler (e.g. tcp://127.0.0.1:8786); the workers must see the files",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress bar (there is none when stderr is not a terminal)")
    return parser


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add the ``apply`` subcommand to ``batchmv``'s subparsers."""
    parser = commands.add_parser(
        "apply", help="y = A @ x for every vector of a .npy file of any size, block by block",
        description=(
            "Multiply every vector of VECTORS.npy by MATRIX.npy, streaming VECTORS in blocks that fit "
            "--memory-budget, and write OUT.npy. An interrupted run leaves OUT untouched; --resume continues it. "
            "Exit status: 0 done, 2 bad input, 1 failed (finished blocks kept for --resume), 130 interrupted."
        ),
    )  # fmt: skip
    add_arguments(parser)
    parser.set_defaults(run=main)
    return parser


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog="batchmv apply", description=__doc__.split("\n\n")[0]))


def main(args: argparse.Namespace | list[str] | None = None) -> int:
    """Run ``batchmv apply`` (``args``: parsed arguments, or a command line; None: sys.argv[1:])."""
    if not isinstance(args, argparse.Namespace):
        args = build_parser().parse_args(args)
    try:
        _run(args)
    except BadInput as err:
        say(f"error: {err}")
        return EXIT_BAD_INPUT
    except RunFailed as err:
        say(f"error: {err}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        say("interrupted: the finished blocks are kept; rerun with --resume to continue")
        return EXIT_INTERRUPTED
    return EXIT_OK


def _progress(job: Job, done_vectors: int, quiet: bool) -> Any:
    show = not quiet and sys.stderr.isatty()
    if not show:
        return None
    from tqdm import tqdm

    try:  # a terminal that reports no size (0 x 0) would hide tqdm's bar: assume 80 x 24
        width, height = os.get_terminal_size(sys.stderr.fileno())
    except OSError:
        width = height = 0
    return tqdm(
        total=job.vectors_total, initial=done_vectors, unit=" rows", unit_scale=True, file=sys.stderr,
        desc="batchmv apply", ncols=width if width > 0 else 80, nrows=height if height > 0 else 24, smoothing=0.1,
    )  # fmt: skip


def _run(args: argparse.Namespace) -> None:
    try:
        budget = parse_size(args.memory_budget) if isinstance(args.memory_budget, str) else int(args.memory_budget)
    except ValueError as err:
        raise BadInput(str(err)) from None
    job = make_job(args, budget)
    try:
        client = connect(args.scheduler) if args.scheduler is not None else None
        try:
            _warn_space(job)
            with OutLock(job.out, (job.matrix, job.vectors)):
                _run_locked(job, args, client)
        finally:
            if client is not None:
                client.close()
    finally:
        job.close()


def _run_locked(job: Job, args: argparse.Namespace, client: Any) -> None:
    x_full, y_full = block_buffers(job)
    try:
        output = open_output(job, args, x_full, y_full)
    except OSError as err:
        raise _failure(err, job, None) from None
    # lazily: a job can have very many blocks
    pending = (k for k in range(job.blocks) if k not in output.done)
    bar = _progress(job, sum(job.vectors_in(k) for k in output.done), args.quiet)
    try:
        if client is not None:
            run_on_dask(job, output, pending, client, bar)
        else:
            run_local(job, output, pending, bar, x_full, y_full)
        finish(job, output, args.force)
    except OSError as err:
        raise _failure(err, job, output) from None
    finally:
        if bar is not None:
            bar.close()
        if output.fd >= 0:
            os.close(output.fd)
        output.journal.close()


def _failure(err: OSError, job: Job, output: Output | None) -> RunFailed:
    kept = ""
    if output is not None:
        done = len(output.done)
        kept = f"; {done} of {job.blocks} blocks are done and kept in {output.partial}: rerun with --resume to continue"
    if err.errno in _FULL:
        what = "no space left on the device" if err.errno != errno.EFBIG else "file size limit reached (EFBIG)"
        return RunFailed(f"{what} while writing {err.filename or job.out + '.partial'}{kept}")
    return RunFailed(f"{err.strerror or err} ({err.filename or 'I/O'}){kept}")


def _warn_space(job: Job) -> None:
    needed = len(job.header) + math.prod(job.y_shape3) * job.result_dtype.itemsize
    try:
        vfs = os.statvfs(os.path.dirname(job.out))
    except OSError:
        return
    free = vfs.f_bavail * vfs.f_frsize
    if free < needed:
        say(f"warning: OUT needs {needed:,} bytes and its file system has {free:,} free; the run may stop there")
