"""The job: every input checked and the blocks decided before anything is written.

``make_job`` opens MATRIX and VECTORS (read-only, checked regular files, kept open), checks
their headers, OUT and the side files, reads A and takes its digest, and decides the
engine and the blocks.  It creates no file.

Blocks are sized so that the block buffers of VECTORS and of the result, the engine's
working copy of a block (BLAS packs its operands into buffers of its own), any temporary
the engine's plan reports and a small reserve fit ``--memory-budget``; A itself is held in
memory on top of the budget.  Every block has the same shape (a short last block is padded
by the runner), so the engine's working memory does not creep.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Any

from batchmv import _checks
from batchmv._memory import aligned_empty

from . import npy
from .blockio import bytes_view, read_exact
from .content import ALGORITHM
from .errors import BadInput, RunFailed
from .files import check_side
from .journal import JOURNAL_FORMAT
from .npy import NpyFile, read_header
from .output import check_out

RESERVE = 2 * 2**20  #: of the budget, for the engine's fixed buffers and small objects (at most 1/8)


@dataclass
class Job:
    matrix: NpyFile
    vectors: NpyFile
    out: str
    a: Any  #: A, in memory, in the result dtype
    axis: int  #: the vector axis of VECTORS (as given, normalised)
    engine: str  #: the engine every block runs on (the block report's choice)
    block_report: Any  #: batchmv.plan of a full block: what matvec does with each block
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
    def result_bytes(self) -> int:
        return math.prod(self.y_shape3) * self.result_dtype.itemsize

    def close(self) -> None:
        self.matrix.close()
        self.vectors.close()

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


def _versions(engine_name: str) -> dict:
    import importlib.metadata

    import numpy as np

    import batchmv

    from batchmv import _registry

    versions = {"batchmv": batchmv.__version__, "numpy": np.__version__}
    if engine_name in _registry.ENGINES and engine_name != "numpy":
        package = _registry.ENGINES[engine_name].package
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "?"
    return versions


def _executor(scheduler: str | None) -> dict:
    """Where the blocks run, for the fingerprint: a resumed run must compute like the first
    one to give the same bytes (BLAS kernels can depend on the number of threads).  (Not
    "runner": the library's name for its fast path of repeated calls.)"""
    if scheduler is not None:
        return {"executor": "dask"}
    from threadpoolctl import threadpool_info

    pools = sorted((p.get("internal_api", "?"), p.get("version") or "?", p.get("num_threads", 0)) for p in threadpool_info())
    return {"executor": "local", "threads": [list(p) for p in pools]}


def make_job(args: argparse.Namespace, budget: int) -> Job:
    """Check everything and decide the blocks (``budget``: bytes, from --memory-budget);
    nothing is written.  BadInput on any problem.  MATRIX and VECTORS stay open in the job
    (``job.close()``)."""
    out = os.path.abspath(args.output)
    if not os.path.isdir(os.path.dirname(out)):
        raise BadInput(f"the directory of OUT {args.output} does not exist")
    check_out(out, args.output, (), args.force)
    opened: list[NpyFile] = []
    try:
        opened.append(read_header(args.matrix, "MATRIX"))
        opened.append(read_header(args.vectors, "VECTORS"))
        for name in (out, out + ".partial", out + ".journal", out + ".lock"):  # none of them an input
            check_side(name, "OUT" if name == out else "side file", opened)
        return _decide(args, out, budget, *opened)
    except BaseException:
        for f in opened:
            f.close()
        raise


def _decide(args: argparse.Namespace, out: str, budget: int, matrix: NpyFile, vectors: NpyFile) -> Job:
    """The engine, the blocks, A, OUT's header and the fingerprint of a checked job."""
    import numpy as np

    from batchmv import _select

    axis, y_shape = _check_shapes(matrix, vectors, args.axis)
    m, n = matrix.shape
    ndim = len(vectors.shape)
    try:
        engine = _select.normalize(args.backend, "--backend") if args.backend is not None else _select.requested(None)
    except (ValueError, TypeError) as err:
        raise BadInput(str(err)) from None

    result_dtype = np.result_type(matrix.dtype, vectors.dtype)
    if result_dtype.kind not in npy.NUMERIC_KINDS:  # pragma: no cover - numeric inputs give numeric results
        raise BadInput(f"the result dtype {result_dtype} is not numeric")
    result_dtype = result_dtype.newbyteorder("=")
    # Storage order: a Fortran-order file is the C-order array of the reversed shape.
    shape_s = vectors.shape[::-1] if vectors.fortran else vectors.shape
    axis_s = ndim - 1 - axis if vectors.fortran else axis
    shape3 = (math.prod(shape_s[:axis_s]), n, math.prod(shape_s[axis_s + 1 :]))

    # The budget covers, per vector, its block of VECTORS, its result and the engine's working
    # copy of it (BLAS packs its operands into buffers of its own: one more block, measured with
    # OpenBLAS), plus a reserve for the engine's fixed buffers and small objects.
    budget -= min(budget // 8, RESERVE)
    x_item, r_item = vectors.dtype.itemsize, result_dtype.itemsize
    per_vector = n * x_item + m * r_item + n * r_item
    a, a_digest = _load_matrix(matrix, result_dtype)
    outer, _, inner = shape3
    # Nothing to compute when a block would read nothing (n = 0: every result is zeros) or
    # write nothing: no blocks at all, however many the header implies (finish() sizes OUT).
    work = outer * inner * n * m > 0
    block, report = None, None
    for extra in (0, n * r_item + m * r_item):  # second pass: the engine reported temporaries
        cost = max(per_vector + extra, 1)
        block = _blocking(shape3, cost, budget, m, n, x_item, r_item)
        report = _report_block(a, vectors.dtype, result_dtype, n, m, block, engine, measure=work)
        if not report.copies or extra:
            break
    assert block is not None and report is not None
    grid = (-(-outer // block[0]), -(-inner // block[1])) if work else (0, 0)
    header = npy.header(y_shape, result_dtype, vectors.fortran)
    # every block runs on the engine the block report chose ("auto": numpy; "fastest":
    # measured once, here, on a block of the real shape)
    job = Job(
        matrix, vectors, out, a, axis, report.backend, report, shape3, (outer, m, inner), result_dtype, header, block, grid
    )  # fmt: skip
    job.fingerprint = {
        "format": JOURNAL_FORMAT,
        "matrix": {**matrix.fingerprint(), ALGORITHM: a_digest},
        "vectors": vectors.fingerprint(),  # its content: a digest per finished block in the journal
        "options": {"axis": axis, "engine": report.backend, "block_vectors": list(block)},
        "output": {"shape": list(y_shape), "dtype": result_dtype.str, "fortran_order": vectors.fortran},
        "versions": _versions(report.backend),
        "executor": _executor(args.scheduler),
    }
    return job


def _check_shapes(matrix: NpyFile, vectors: NpyFile, axis: int) -> tuple[int, tuple[int, ...]]:
    """(axis, shape of OUT) by batchmv's rule for A and x; BadInput, saying which file is A
    and which is x, when the files break it."""
    try:
        return _checks.check_shapes(matrix.shape, vectors.shape, axis)
    except (ValueError, TypeError) as err:
        columns = f" with n = {matrix.shape[1]} columns" if len(matrix.shape) == 2 else ""
        raise BadInput(f"{err} (A is MATRIX {matrix.path}{columns}; x is VECTORS {vectors.path}; axis is --axis)") from None


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


def _report_block(a: Any, x_dtype: Any, r_dtype: Any, n: int, m: int, block: tuple[int, int], engine: str,
                  measure: bool) -> Any:  # fmt: skip
    """batchmv.plan for a full block, on template blocks of the real shape and layout.

    ``plan`` never measures: with "fastest" it reports the home engine until a ``matvec`` of
    this kind has measured.  So one ``matvec(backend="fastest")`` on the template comes first
    (when there is work), and the engine is decided here, once, before any block runs."""
    import batchmv

    ob, ib = block
    # aligned like the run's block buffers, in case alignment decides the kind of call; the
    # pages are touched (zeros) only to measure: plan reads no data
    xb, yb = aligned_empty((ob, n, ib), x_dtype), aligned_empty((ob, m, ib), r_dtype)
    try:
        if engine == "fastest" and measure:
            xb.fill(0)
            yb.fill(0)
            batchmv.matvec(a, xb, axis=1, out=yb, backend="fastest")
        return batchmv.plan(a, xb, axis=1, out=yb, backend=engine)
    except (ValueError, TypeError, ImportError, RuntimeError) as err:
        raise BadInput(f"the engine cannot run this job: {err}") from None


def _load_matrix(matrix: NpyFile, r_dtype: Any) -> tuple[Any, str]:
    """A, read whole, in the result dtype (cast once here rather than in every block), and
    the digest of its data as stored."""
    storage = matrix.shape[::-1] if matrix.fortran else matrix.shape
    buf = aligned_empty(storage, matrix.dtype)
    try:
        read_exact(matrix.fd, bytes_view(buf), matrix.offset)
    except RunFailed:
        raise BadInput(f"MATRIX {matrix.path}: truncated while reading") from None
    except OSError as err:
        raise BadInput(f"MATRIX {matrix.path}: cannot read it: {err.strerror or err}") from None
    a_digest = hashlib.new(ALGORITHM, bytes_view(buf)).hexdigest()
    a = buf.T if matrix.fortran else buf
    if a.dtype != r_dtype:
        a = a.astype(r_dtype, order="K")
    return a, a_digest
