"""``batchmv apply MATRIX.npy VECTORS.npy -o OUT.npy``: ``matvec`` on .npy files of any size.

VECTORS is streamed block by block: each block is read with ``pread`` into one reusable
buffer (no memory map, so no file-backed pages accumulate in the process; the pages read
are dropped from the page cache too), multiplied by A with :func:`batchmv.matvec` into a
second reusable buffer, and written with ``pwrite``.  Blocks are sized so that both
buffers, the engine's working copy of a block (BLAS packs its operands into buffers of its
own), any temporary the engine's plan reports and a small reserve fit ``--memory-budget``;
A itself is held in memory on top of the budget.  Every GEMM has the same shape (a short
last block is padded), so the engine's working memory does not creep.

Loss-free: the result is built in ``OUT.partial`` next to OUT, with a journal
``OUT.journal`` (JSON lines, fsynced) that starts with a fingerprint of the inputs and
options and gets one line per finished block, written only after the block's data is on
disk.  ``OUT.partial`` is renamed onto OUT (``os.replace``) only when complete, so a run
killed at any moment leaves OUT untouched or absent; ``--resume`` continues from the
journal and produces the same bytes as an uninterrupted run (same blocks, same kernels).

Exit status: 0 done; 2 bad input (one line on stderr, nothing written); 1 the run failed
(disk full, I/O error: the finished blocks are kept for ``--resume``); 130 interrupted.

With ``--scheduler ADDRESS`` the same blocks run on a Dask cluster through batchmv's Dask
path (A enters the graph once); the workers read VECTORS and write their blocks into
``OUT.partial`` themselves, so they must see the same files (same machine or a shared file
system), and the journal is kept by this process as blocks finish.  The memory budget then
sizes the blocks, so it holds per running task.  Workers' BLAS may run with another number
of threads than a local run, so the last bits of a result can differ between the two ways;
the journal's fingerprint records which way ran, and a resumed run must use the same one.

Importing this module imports no array library.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_BUDGET = 256 * 2**20
RESERVE = 2 * 2**20  #: of the budget, for the engine's fixed buffers and small objects (at most 1/8)
CONNECT_TIMEOUT = 10  #: seconds to reach the Dask scheduler of --scheduler
JOURNAL_FORMAT = "batchmv-apply-journal/1"
#: errno values that mean "the disk (or this process's file size limit) is full"
_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_ALIGN = 64  # block buffers start on a cache line, the same in every run and every process
_NUMERIC_KINDS = frozenset("biufc")


class BadInput(Exception):
    """A problem with the arguments or input files: exit status 2, nothing written."""


class RunFailed(Exception):
    """The run could not finish (disk full, I/O error): exit status 1, finished blocks kept."""


# -- command line -------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """A memory size: bytes, or a number with K, M, G or T (powers of 1024; "MB", "MiB" alike).

    >>> parse_size("32M"), parse_size("1.5GiB"), parse_size("4096")
    (33554432, 1610612736, 4096)
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(?:([kKmMgGtT])(?:i?[bB])?|[bB])?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use bytes or a number with K, M, G or T, e.g. 512M")
    scale = 1024 ** ("kmgt".index(match.group(2).lower()) + 1) if match.group(2) else 1
    size = int(float(match.group(1)) * scale)
    if size <= 0:
        raise argparse.ArgumentTypeError(f"the memory budget must be positive, got {text!r}")
    return size


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("matrix", metavar="MATRIX.npy", help="the shared matrix A, shape (m, n)")
    parser.add_argument("vectors", metavar="VECTORS.npy", help="the vectors: any shape with n along --axis")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.npy", help="the result, a standard .npy file")
    parser.add_argument("--axis", type=int, default=-1, help="the axis of VECTORS that holds the vectors (default -1)")
    parser.add_argument("--backend", help="engine: auto, numpy, torch, jax, cupy (default: BATCHMV_BACKEND, else auto)")
    parser.add_argument(
        "--memory-budget", type=parse_size, default=DEFAULT_BUDGET, metavar="SIZE",
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
        _say(f"error: {err}")
        return EXIT_BAD_INPUT
    except RunFailed as err:
        _say(f"error: {err}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _say("interrupted: the finished blocks are kept; rerun with --resume to continue")
        return EXIT_INTERRUPTED
    return EXIT_OK


def _say(message: str) -> None:
    print("batchmv apply: " + " ".join(str(message).split()), file=sys.stderr, flush=True)


# -- inputs -------------------------------------------------------------------------------


@dataclass
class NpyFile:
    label: str
    path: str
    shape: tuple[int, ...]
    dtype: Any
    fortran: bool
    offset: int  #: where the data starts
    size: int  #: of the file
    mtime_ns: int
    device_inode: tuple[int, int]

    def fingerprint(self) -> dict:
        return {
            "shape": list(self.shape), "dtype": self.dtype.str, "fortran_order": self.fortran,
            "data_offset": self.offset, "size": self.size, "mtime_ns": self.mtime_ns,
        }  # fmt: skip


def read_header(path: str, label: str) -> NpyFile:
    """The header of a .npy file, checked: BadInput for anything apply cannot stream."""
    import numpy as np

    where = f"{label} {path}"
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise BadInput(f"{where}: no such file") from None
    except OSError as err:
        raise BadInput(f"{where}: cannot read it: {err.strerror or err}") from None
    with f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(f"{where}: not a regular file")
        try:
            version = np.lib.format.read_magic(f)
        except (ValueError, OSError):
            raise BadInput(f"{where}: not a .npy file (it does not start with the NumPy magic string)") from None
        try:
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                shape, fortran, dtype = np.lib.format._read_array_header(f, version)
        except (ValueError, OSError, SyntaxError) as err:
            raise BadInput(f"{where}: damaged .npy header ({err})") from None
        offset = f.tell()
    if dtype.hasobject:
        raise BadInput(f"{where}: dtype {dtype} holds Python objects (pickled data); apply needs a numeric dtype")
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise BadInput(f"{where}: dtype {dtype.str} ({dtype}) is not numeric; apply needs bool, int, float or complex")
    expected = math.prod(shape) * dtype.itemsize
    if st.st_size - offset < expected:
        raise BadInput(
            f"{where}: truncated: its header announces {shape} {dtype} ({expected:,} bytes of data) but the file "
            f"holds {max(st.st_size - offset, 0):,}"
        )
    return NpyFile(label, path, tuple(shape), dtype, bool(fortran), offset, st.st_size, st.st_mtime_ns, (st.st_dev, st.st_ino))


def _read_exact(fd: int, buf: Any, offset: int) -> None:
    """Fill the writable bytes-like ``buf`` from ``fd`` at ``offset``."""
    view = memoryview(buf).cast("B")
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise RunFailed(f"unexpected end of file at byte {offset + done:,}: did the file change during the run?")
        done += got


def _write_exact(fd: int, buf: Any, offset: int) -> None:
    view = memoryview(buf).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _aligned_empty(count: int, dtype: Any) -> Any:
    """A 1-D uninitialised array of ``count`` elements starting on a 64-byte boundary."""
    import numpy as np

    dtype = np.dtype(dtype)
    raw = np.empty(count * dtype.itemsize + _ALIGN, np.uint8)
    start = (-raw.ctypes.data) % _ALIGN
    return raw[start : start + count * dtype.itemsize].view(dtype)


def _bytes_view(arr: Any) -> Any:
    import numpy as np

    return arr.reshape(-1, copy=False).view(np.uint8)  # never a copy: I/O goes straight to the array


def transfer_block(fd: int, base: int, shape3: tuple[int, int, int], loc: tuple[int, int, int, int], buf: Any, write: bool) -> None:
    """Read (or write) the block ``buf`` = arr3[o0:o1, :, i0:i1] of the C-order array ``arr3``
    (shape ``shape3``) stored at byte ``base`` of ``fd``: one contiguous range when the block
    spans the whole last axis, else one range per (o, j)."""
    outer, n, inner = shape3
    o0, o1, i0, i1 = loc
    size = buf.dtype.itemsize
    io = _write_exact if write else _read_exact
    if i0 == 0 and i1 == inner:
        io(fd, _bytes_view(buf), base + o0 * n * inner * size)
        return
    for o in range(o0, o1):
        for j in range(n):
            io(fd, _bytes_view(buf[o - o0, j]), base + ((o * n + j) * inner + i0) * size)


def _drop_pages(fd: int, start: int, length: int) -> None:
    """Tell the kernel we are done with these pages (they leave the page cache, not our RSS:
    apply never maps files)."""
    if hasattr(os, "posix_fadvise") and length > 0:
        try:
            os.posix_fadvise(fd, start, length, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass


# -- the job --------------------------------------------------------------------------------


@dataclass
class Job:
    matrix: NpyFile
    vectors: NpyFile
    out: str
    a: Any  #: A, in memory, in the result dtype
    axis: int  #: the vector axis of VECTORS (as given, normalised)
    engine: str  #: the engine every block runs on (the block plan's choice)
    plan: Any  #: batchmv.plan of a full block
    shape3: tuple[int, int, int]  #: VECTORS as (outer, n, inner) in storage order
    y_shape3: tuple[int, int, int]
    result_dtype: Any
    header: bytes  #: OUT's .npy header
    block: tuple[int, int]  #: (ob, ib): a block is arr3[o0:o0+ob, :, i0:i0+ib]
    grid: tuple[int, int]  #: number of blocks along outer and inner
    fingerprint: dict = field(default_factory=dict)

    @property
    def blocks(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def vectors_total(self) -> int:
        return self.shape3[0] * self.shape3[2]

    def location(self, k: int) -> tuple[int, int, int, int]:
        bo, bi = divmod(k, self.grid[1])
        (ob, ib), (outer, _, inner) = self.block, self.shape3
        return bo * ob, min(bo * ob + ob, outer), bi * ib, min(bi * ib + ib, inner)

    def vectors_in(self, k: int) -> int:
        o0, o1, i0, i1 = self.location(k)
        return (o1 - o0) * (i1 - i0)


def _npy_header(shape: tuple[int, ...], dtype: Any, fortran: bool) -> bytes:
    """The header numpy.save writes for an array of this shape, dtype and order."""
    import io

    import numpy as np

    d = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran, "shape": tuple(shape)}
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, d)
    except ValueError:  # more than 65535 bytes of header: format 2.0, as numpy.save does
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, d)
    return buf.getvalue()


def _same_file(a: str, b: NpyFile) -> bool:
    try:
        st = os.stat(a)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == b.device_inode


def _versions(engine_name: str) -> dict:
    import importlib.metadata

    import numpy as np

    import batchmv

    from . import _registry

    versions = {"batchmv": batchmv.__version__, "numpy": np.__version__}
    if engine_name in _registry.ENGINES and engine_name != "numpy":
        package = _registry.ENGINES[engine_name].package
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "?"
    return versions


def _runner(scheduler: str | None) -> dict:
    """Where the blocks run, for the fingerprint: a resumed run must compute like the first
    one to give the same bytes (BLAS kernels can depend on the number of threads)."""
    if scheduler:
        return {"runner": "dask"}
    from threadpoolctl import threadpool_info

    pools = sorted((p.get("internal_api", "?"), p.get("version") or "?", p.get("num_threads", 0)) for p in threadpool_info())
    return {"runner": "local", "threads": [list(p) for p in pools]}


def prepare(args: argparse.Namespace) -> Job:
    """Check everything and decide the blocks; nothing is written.  BadInput on any problem."""
    import numpy as np

    import batchmv

    from . import _select

    out = os.path.abspath(args.output)
    out_dir = os.path.dirname(out)
    if not os.path.isdir(out_dir):
        raise BadInput(f"the directory of OUT {args.output} does not exist")
    if os.path.isdir(out):
        raise BadInput(f"OUT {args.output} is a directory")
    if os.path.lexists(out) and not args.force:
        raise BadInput(f"OUT {args.output} exists; use --force to overwrite it")
    matrix = read_header(args.matrix, "MATRIX")
    vectors = read_header(args.vectors, "VECTORS")
    for f in (matrix, vectors):
        if _same_file(out, f):
            raise BadInput(f"OUT {args.output} is the same file as {f.label} {f.path}")
    if len(matrix.shape) != 2:
        raise BadInput(f"MATRIX {matrix.path}: A must be 2-D, shape (m, n); got shape {matrix.shape}")
    m, n = matrix.shape
    ndim = len(vectors.shape)
    if ndim == 0:
        raise BadInput(f"VECTORS {vectors.path}: a 0-d array holds no vectors; it must be at least 1-D")
    if not -ndim <= args.axis < ndim:
        raise BadInput(f"--axis {args.axis} is out of range for VECTORS with shape {vectors.shape} ({ndim}-D)")
    axis = args.axis % ndim
    if vectors.shape[axis] != n:
        raise BadInput(
            f"VECTORS has length {vectors.shape[axis]} along axis {axis} (shape {vectors.shape}) but A has "
            f"n = {n} columns (shape {matrix.shape})"
        )
    try:
        engine = _select.normalize(args.backend, "--backend") if args.backend is not None else _select.requested(None)
    except (ValueError, TypeError) as err:
        raise BadInput(str(err)) from None

    result_dtype = np.result_type(matrix.dtype, vectors.dtype)
    if result_dtype.kind not in _NUMERIC_KINDS:  # pragma: no cover - numeric inputs give numeric results
        raise BadInput(f"the result dtype {result_dtype} is not numeric")
    result_dtype = result_dtype.newbyteorder("=")
    # Storage order: a Fortran-order file is the C-order array of the reversed shape.
    shape_s = vectors.shape[::-1] if vectors.fortran else vectors.shape
    axis_s = ndim - 1 - axis if vectors.fortran else axis
    shape3 = (math.prod(shape_s[:axis_s]), n, math.prod(shape_s[axis_s + 1 :]))
    y_shape = vectors.shape[:axis] + (m,) + vectors.shape[axis + 1 :]

    # The budget covers, per vector, its block of VECTORS, its result and the engine's working
    # copy of it (BLAS packs its operands into buffers of its own: one more block, measured with
    # OpenBLAS), plus a reserve for the engine's fixed buffers and small objects.
    budget = args.memory_budget - min(args.memory_budget // 8, RESERVE)
    x_item, r_item = vectors.dtype.itemsize, result_dtype.itemsize
    per_vector = n * x_item + m * r_item + n * r_item
    block, plan = None, None
    for extra in (0, n * r_item + m * r_item):  # second pass: the engine reported temporaries
        cost = max(per_vector + extra, 1)
        block = _blocking(shape3, cost, budget, m, n, x_item, r_item)
        plan = _plan_block(batchmv, np, matrix, vectors.dtype, result_dtype, shape3, m, block, engine)
        if not plan.copies or extra:
            break
    a = _load_matrix(matrix, result_dtype)
    assert block is not None
    outer, _, inner = shape3
    grid = (-(-outer // block[0]) if outer else 0, -(-inner // block[1]) if inner else 0)
    if outer == 0 or inner == 0:
        grid = (0, 0)
    header = _npy_header(y_shape, result_dtype, vectors.fortran)
    # every block runs on the engine the plan chose ("auto": numpy; "fastest": measured once, here)
    job = Job(
        matrix, vectors, out, a, axis, plan.backend, plan, shape3, (outer, m, inner), result_dtype, header, block, grid
    )  # fmt: skip
    job.fingerprint = {
        "format": JOURNAL_FORMAT,
        "matrix": matrix.fingerprint(),
        "vectors": vectors.fingerprint(),
        "options": {"axis": axis, "engine": plan.backend, "block_vectors": list(block)},
        "output": {"shape": list(y_shape), "dtype": result_dtype.str, "fortran_order": vectors.fortran},
        "versions": _versions(plan.backend),
        "runner": _runner(args.scheduler),
    }
    return job


def _blocking(shape3: tuple[int, int, int], cost: int, budget: int, m: int, n: int, x_item: int, r_item: int) -> tuple[int, int]:
    """(ob, ib): the largest blocks within ``budget`` at ``cost`` bytes per vector."""
    outer, _, inner = shape3
    fits = budget // cost
    if fits < 1:
        raise BadInput(
            f"--memory-budget is too small: it leaves {budget:,} bytes for blocks, and one vector of {n} "
            f"{x_item}-byte elements with its result of {m} {r_item}-byte elements needs {cost:,}"
        )
    if fits >= max(inner, 1):
        return max(1, min(outer, fits // max(inner, 1))), max(inner, 1)
    return 1, fits


def _plan_block(batchmv: Any, np: Any, matrix: NpyFile, x_dtype: Any, r_dtype: Any, shape3: tuple, m: int,
                block: tuple[int, int], engine: str) -> Any:  # fmt: skip
    """batchmv.plan for a full block (zeros from calloc: pages nobody reads are never touched)."""
    ob, ib = block
    n = shape3[1]
    a = np.zeros(matrix.shape[::-1] if matrix.fortran else matrix.shape, r_dtype)
    a = a.T if matrix.fortran else a
    xb = np.zeros((ob, n, ib), x_dtype)
    yb = np.zeros((ob, m, ib), r_dtype)
    try:
        return batchmv.plan(a, xb, axis=1, out=yb, backend=engine)
    except (ValueError, TypeError, ImportError) as err:
        raise BadInput(f"the engine cannot run this job: {err}") from None


def _load_matrix(matrix: NpyFile, r_dtype: Any) -> Any:
    """A, read whole, in the result dtype (cast once here rather than in every block)."""
    import numpy as np

    storage = matrix.shape[::-1] if matrix.fortran else matrix.shape
    buf = _aligned_empty(math.prod(storage), matrix.dtype)
    try:
        with open(matrix.path, "rb") as f:
            _read_exact(f.fileno(), _bytes_view(buf), matrix.offset)
    except RunFailed:
        raise BadInput(f"MATRIX {matrix.path}: truncated while reading") from None
    except OSError as err:
        raise BadInput(f"MATRIX {matrix.path}: cannot read it: {err.strerror or err}") from None
    a = buf.reshape(storage)
    a = a.T if matrix.fortran else a
    if a.dtype != r_dtype:
        a = a.astype(r_dtype, order="K")
    return a


# -- output, journal, resume --------------------------------------------------------------


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """``OUT.journal``: the fingerprint, then one JSON line per finished block, each fsynced."""

    def __init__(self, path: str):
        self.path = path
        self.fd = -1

    def create(self, fingerprint: dict) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        self._append({"journal": JOURNAL_FORMAT, "fingerprint": fingerprint})

    def reopen(self, length: int) -> None:
        """Continue the journal after its last complete line (a torn one is cut off)."""
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        os.ftruncate(self.fd, length)
        os.fsync(self.fd)

    def block_done(self, k: int, loc: tuple[int, int, int, int]) -> None:
        self._append({"block": k, "outer": loc[:2], "inner": loc[2:]})

    def _append(self, record: dict) -> None:
        line = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
        _write_exact_append(self.fd, line)
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _write_exact_append(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_journal(path: str) -> tuple[dict | None, set[int], int]:
    """(fingerprint, finished blocks, length of the complete lines).  A torn last line (a run
    killed while appending) is ignored; a journal without a complete first line is treated
    as absent (fingerprint None)."""
    with open(path, "rb") as f:
        data = f.read()
    complete = data[: data.rfind(b"\n") + 1]  # everything up to the last newline
    records = []
    for number, raw in enumerate(complete.splitlines(), 1):
        try:
            records.append(json.loads(raw))
        except ValueError:
            raise BadInput(f"journal {path} is damaged (line {number}); use --force to start over") from None
    if not records or not isinstance(records[0], dict) or records[0].get("journal") != JOURNAL_FORMAT:
        return None, set(), 0
    try:
        done = {int(r["block"]) for r in records[1:]}
    except (KeyError, TypeError, ValueError):
        raise BadInput(f"journal {path} is damaged; use --force to start over") from None
    return records[0].get("fingerprint"), done, len(complete)


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new)):
            found += _differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
        return found
    return [] if old == new else [f"{prefix} was {old!r}, now {new!r}"]


@dataclass
class Output:
    partial: str
    journal: Journal
    fd: int
    done: set[int]


def open_output(job: Job, args: argparse.Namespace) -> Output:
    """Create ``OUT.partial`` and its journal, or reopen them with --resume.  An unfinished
    run is never discarded without --force."""
    partial, journal_path = job.out + ".partial", job.out + ".journal"
    journal = Journal(journal_path)
    if os.path.exists(journal_path):
        try:
            fingerprint, done, length = read_journal(journal_path)
        except BadInput:
            if not args.force:
                raise
            fingerprint, done, length = None, set(), 0
        if fingerprint is not None and args.resume:
            resumed, problem = _reopen(job, journal, partial, fingerprint, done, length)
            if resumed is not None:
                return resumed
            if not args.force:
                raise BadInput(f"{problem}; rerun with the same inputs and options, or use --force to start over")
            _say(f"note: {problem}; starting over (--force)")
        elif fingerprint is not None and not args.force:
            raise BadInput(
                f"an unfinished run of this output exists ({journal_path}); add --resume to continue it "
                "or --force to start over"
            )
    # a fresh start: the partial file first (header fsynced), then the journal
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_exact(fd, job.header, 0)
        os.fsync(fd)
        journal.create(job.fingerprint)
        _fsync_dir(os.path.dirname(job.out))
    except BaseException:
        os.close(fd)
        journal.close()
        raise
    return Output(partial, journal, fd, set())


def _reopen(job: Job, journal: Journal, partial: str, fingerprint: dict, done: set[int], length: int
            ) -> tuple[Output | None, str]:  # fmt: skip
    """The unfinished run, reopened, or None and why it cannot be continued."""
    diff = _differences(fingerprint, job.fingerprint)
    if diff:
        return None, f"journal {journal.path} does not match its inputs and options ({'; '.join(diff[:3])})"
    try:
        fd = os.open(partial, os.O_RDWR)
    except FileNotFoundError:
        return None, f"journal {journal.path} exists but {partial} is gone"
    with os.fdopen(os.dup(fd), "rb") as f:
        head = f.read(len(job.header))
    needed = max((_block_end(job, k) for k in done), default=len(job.header))
    if head != job.header or os.fstat(fd).st_size < needed:
        os.close(fd)
        return None, f"{partial} does not hold what journal {journal.path} says"
    journal.reopen(length)
    return Output(partial, journal, fd, done & set(range(job.blocks))), ""


def _block_end(job: Job, k: int) -> int:
    """The byte after block k's last byte in OUT (its data is at or before this)."""
    o0, o1, i0, i1 = job.location(k)
    _, m, inner = job.y_shape3
    last = ((o1 - 1) * m + (m - 1)) * inner + i1 if m else 0
    return len(job.header) + last * job.result_dtype.itemsize


def finish(job: Job, output: Output) -> None:
    """All blocks are on disk: OUT.partial becomes OUT atomically, then the journal goes."""
    os.fsync(output.fd)
    os.close(output.fd)
    output.fd = -1
    os.replace(output.partial, job.out)
    _fsync_dir(os.path.dirname(job.out))
    output.journal.close()
    os.unlink(output.journal.path)
    _fsync_dir(os.path.dirname(job.out))


# -- running --------------------------------------------------------------------------------


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
    job = prepare(args)
    _warn_space(job)
    try:
        output = open_output(job, args)
    except OSError as err:
        raise _failure(err, job, None) from None
    pending = [k for k in range(job.blocks) if k not in output.done]
    bar = _progress(job, sum(job.vectors_in(k) for k in output.done), args.quiet)
    try:
        if args.scheduler:
            run_on_dask(job, output, pending, args.scheduler, bar)
        else:
            run_local(job, output, pending, bar)
        finish(job, output)
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
        _say(f"warning: OUT needs {needed:,} bytes and its file system has {free:,} free; the run may stop there")


def run_local(job: Job, output: Output, pending: list[int], bar: Any) -> None:
    import batchmv

    (ob, ib), (outer, n, inner), m = job.block, job.shape3, job.y_shape3[1]
    xbuf = _aligned_empty(ob * n * ib, job.vectors.dtype)
    ybuf = _aligned_empty(ob * m * ib, job.result_dtype)
    fd_x = os.open(job.vectors.path, os.O_RDONLY)
    try:
        _check_unchanged(fd_x, job.vectors)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd_x, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        # Every GEMM has the full block's shape: a short last block is padded with zeros.  The
        # engine's working memory then stays the same all run long (OpenBLAS touches other
        # pages of its buffers for another shape), and each block runs the same kernel.
        x_full = xbuf.reshape(ob, n, ib)
        y_full = ybuf.reshape(ob, m, ib)
        for k in pending:
            o0, o1, i0, i1 = loc = job.location(k)
            xb, yb = x_full[: o1 - o0, :, : i1 - i0], y_full[: o1 - o0, :, : i1 - i0]
            if (o1 - o0, i1 - i0) != (ob, ib):
                x_full[o1 - o0 :] = 0
                x_full[:, :, i1 - i0 :] = 0
            transfer_block(fd_x, job.vectors.offset, job.shape3, loc, xb, write=False)
            batchmv.matvec(job.a, x_full, axis=1, out=y_full, backend=job.engine)
            transfer_block(output.fd, len(job.header), job.y_shape3, loc, yb, write=True)
            os.fdatasync(output.fd)
            if i1 == inner:  # the pages of this stretch of both files will not be read again
                _drop_pages(fd_x, job.vectors.offset + o0 * n * inner * xb.itemsize, (o1 - o0) * n * inner * xb.itemsize)
                _drop_pages(output.fd, len(job.header) + o0 * m * inner * yb.itemsize, (o1 - o0) * m * inner * yb.itemsize)
            output.journal.block_done(k, loc)
            output.done.add(k)
            if bar is not None:
                bar.update(job.vectors_in(k))
    finally:
        os.close(fd_x)


def _check_unchanged(fd: int, f: NpyFile) -> None:
    st = os.fstat(fd)
    if (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns):
        raise RunFailed(f"{f.label} {f.path} changed while apply was starting; run it again")


# -- Dask ---------------------------------------------------------------------------------


def dask_read_block(block_info: Any = None, *, path: str, base: int, shape3: tuple, file_dtype: str) -> Any:
    """A block of VECTORS (as (outer, n, inner)), read on a Dask worker."""
    (o0, o1), _, (i0, i1) = block_info[None]["array-location"]
    buf = _aligned_empty((o1 - o0) * shape3[1] * (i1 - i0), file_dtype).reshape(o1 - o0, shape3[1], i1 - i0)
    fd = os.open(path, os.O_RDONLY)
    try:
        transfer_block(fd, base, tuple(shape3), (o0, o1, i0, i1), buf, write=False)
    finally:
        os.close(fd)
    return buf


def dask_write_block(y: Any, *, path: str, base: int, shape3: tuple, loc: tuple, index: int) -> int:
    """Write one result block into OUT.partial on a Dask worker, durably; returns its index.
    Idempotent: a retried task writes the same bytes to the same place."""
    import numpy as np

    y = np.ascontiguousarray(y)
    fd = os.open(path, os.O_WRONLY)
    try:
        transfer_block(fd, base, tuple(shape3), tuple(loc), y, write=True)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return index


def run_on_dask(job: Job, output: Output, pending: list[int], address: str, bar: Any) -> None:
    try:
        import dask.array as da
        from dask import delayed
        from dask.base import tokenize
        from distributed import Client, as_completed
    except ImportError as err:
        raise BadInput(f"--scheduler needs dask and distributed: pip install 'batchmv[dask]' ({err})") from None
    import numpy as np

    import batchmv

    try:
        client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as err:
        raise BadInput(f"cannot reach the Dask scheduler at {address}: {err}") from None
    with client:
        (ob, ib), (outer, n, inner) = job.block, job.shape3
        chunks = (_sizes(outer, ob), (n,), _sizes(inner, ib))
        x3 = da.map_blocks(
            dask_read_block, chunks=chunks, dtype=job.vectors.dtype, meta=np.empty((0, 0, 0), job.vectors.dtype),
            name="batchmv-read-" + tokenize(job.fingerprint["vectors"], job.vectors.path, job.block),
            path=os.path.abspath(job.vectors.path), base=job.vectors.offset, shape3=job.shape3,
            file_dtype=job.vectors.dtype.str,
        )  # fmt: skip
        y3 = batchmv.matvec(job.a, x3, axis=1, backend=job.engine)  # the Dask path: A enters the graph once
        parts = y3.to_delayed()
        writes = []
        for k in pending:
            bo, bi = divmod(k, job.grid[1])
            writes.append(
                delayed(dask_write_block, pure=False)(
                    parts[bo, 0, bi], path=output.partial, base=len(job.header), shape3=job.y_shape3,
                    loc=job.location(k), index=k,
                )  # fmt: skip
            )
        futures = client.compute(writes)
        try:
            for future in as_completed(futures, loop=client.loop):
                k = future.result()
                output.journal.block_done(k, job.location(k))
                output.done.add(k)
                if bar is not None:
                    bar.update(job.vectors_in(k))
        except (OSError, RunFailed, KeyboardInterrupt):
            raise
        except Exception as err:  # KilledWorker, a lost scheduler, ...: the finished blocks are kept
            raise RunFailed(
                f"the Dask computation failed ({type(err).__name__}: {err}); {len(output.done)} of {job.blocks} "
                f"blocks are done and kept in {output.partial}: rerun with --resume to continue"
            ) from None
        finally:
            client.cancel(futures)


def _sizes(total: int, step: int) -> tuple[int, ...]:
    return tuple(min(step, total - start) for start in range(0, total, step)) or (0,)


if __name__ == "__main__":
    sys.exit(main())
