"""The :class:`Plan`: what ``matvec`` will run, reported before anything is computed, and
:func:`describe`, which makes one from a checked call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import _layout, _skinny


@dataclass(frozen=True)
class OperandView:
    """One view that reaches the kernel."""

    name: str  #: "A.T", "X2" or "Y2" (a GEMM's); "A", "x" or "y" (a GEMV's)
    shape: tuple[int, ...]
    strides: tuple[int | None, ...]  #: in elements
    order: str | None  #: "row-major", "col-major" (BLAS reads it as is) or None
    offset: int | None  #: byte offset of the first element in its buffer (None: not allocated yet)
    source: str  #: what the view points into
    conj: bool = False  #: read with BLAS's conjugate flag (op C: conjugate transpose)

    def describe(self) -> str:
        where = f"new buffer ({self.source})" if self.offset is None else f"offset {self.offset} B in {self.source}"
        flag = {"row-major": "N (row-major)", "col-major": "T (col-major)", None: "any strides"}[self.order]
        flag = f"C ({self.order}, conj)" if self.conj else flag
        flag = f"vector, inc {self.strides[0]}" if len(self.shape) == 1 else flag
        return f"  {self.name:<4} shape={self.shape!s:<14} strides={self.strides!s:<12} blas={flag:<15} {where}"


@dataclass(frozen=True)
class Plan:
    """What :func:`batchmv.matvec` does with these arguments (nothing is computed).

    >>> import numpy as np, batchmv
    >>> p = batchmv.plan(np.ones((3, 4)), np.ones((10, 4)), backend="numpy")
    >>> p.backend, p.kernel, p.copies, p.flops
    ('numpy', 'gemm', (), 240)
    """

    backend: str  #: engine that runs the call
    #: "gemm", "gemm loop" when batch axes cannot be viewed as one, "gemv" for one vector
    #: (x 1-D), "gemm row blocks" for a few vectors and a large A (:mod:`batchmv._skinny`)
    kernel: str
    copies: tuple[str, ...]  #: one entry per copy that matvec makes; empty when none
    flops: int  #: 2·m·n·batch
    bytes: int  #: minimum memory traffic: A, the distinct vectors of x, and y, once each
    home: str = ""  #: library of the result
    dtype: str = ""  #: dtype of the result
    gemm_calls: int = 1  #: how many GEMM calls the kernel makes
    views: tuple[OperandView, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())
    blocks: int = 1  #: separately computed blocks (dask: one matvec call per block, views of the first)
    op: str = "N"  #: y = op(A) @ x: "N" (A), "T" (A^T), "H" (A^H, conjugate transpose), "C" (conj(A))
    #: buffers the call allocates besides y and the copies (the conjugated vectors of an
    #: adjoint where the GEMM has no conjugate flag), each with its reason; copy=False
    #: refuses a new one (CopyRequiredError), as it refuses copies
    temporaries: tuple[str, ...] = field(default=())
    gemm: str = "Y2 = X2 @ A.T"  #: what the GEMM computes on the views
    block_rows: int | None = None  #: rows of A per GEMM call, when the kernel is "gemm row blocks"
    threads: int | None = None  #: threads that run the row blocks (block j on thread j % threads)
    format: str = "dense"  #: the format A is computed in ("csr", "csc (A^T: a view of A's csr arrays)", ...)
    nnz: int | None = None  #: stored entries of a sparse A (explicit zeros and duplicates included)
    index_dtype: str | None = None  #: dtype of a sparse A's index arrays

    def __str__(self) -> str:
        lines = [
            f"batchmv plan: {self.home} result, {self.backend} engine, dtype {self.dtype}"
            + (f", y = {_OP_TEXT[self.op]}" if self.op != "N" else ""),
            f"  kernel: {self.kernel} ({self.gemm_calls} call{'s' if self.gemm_calls != 1 else ''}"
            + (f" in {self.blocks} blocks" if self.blocks != 1 else "") + "), "
            f"{self.flops:,} flops, {self.bytes:,} bytes minimum traffic",
            *([f"  views ({self.gemm}):"] if self.views else []),
            *("  " + v.describe() for v in self.views),
            "  copies: " + ("none" if not self.copies else ""),
            *(f"    - {c}" for c in self.copies),
            *([f"  sparse A: {self.format}, nnz {self.nnz:,}, {self.index_dtype} indices"] if self.nnz is not None else []),
            *(["  temporaries:"] if self.temporaries else []),
            *(f"    - {t}" for t in self.temporaries),
            *(f"  note: {n}" for n in self.notes),
        ]
        return "\n".join(lines)


_OP_TEXT = {"N": "A x", "T": "A^T x", "H": "A^H x", "C": "conj(A) x"}


def _gemm_text(op: str, conj: Any) -> str:
    """The GEMM on the views, in terms of the caller's A (see :attr:`batchmv._call.Call.conj`)."""
    b = "A" if op in ("T", "H") else "A.T"
    if conj in ("flag", "copy"):
        return f"Y2 = X2 @ conj({b})"
    return f"Y2 = conj(conj(X2) @ {b})" if conj == "xy" else f"Y2 = X2 @ {b}"


def describe(call: Any) -> Plan:
    """The public report of a checked call (:class:`batchmv._call.Call`; a call that
    reports itself, :class:`batchmv._sparse.SparseCall`, gives its own)."""
    report = getattr(call, "report", None)
    if report is not None:
        return report()
    eng, sched = call.engine, call.schedule
    a_shape, x_shape = eng.shape(call.a), eng.shape(call.x)
    m, n = a_shape
    batch = 1
    for i, size in enumerate(x_shape):
        batch *= size if i != call.axis else 1
    flops = 2 * m * n * batch
    itemsize = max(eng.itemsize(call.a), eng.itemsize(call.x))
    rows = _skinny.plan_for(call)
    threads = _skinny.threads_of(eng) if rows else None
    blocked = {"kernel": _skinny.KERNEL, "gemm_calls": rows.calls, "block_rows": rows.rows, "threads": threads} if rows else {}
    notes = (rows.describe(threads, m * n * eng.itemsize(call.a)),) if rows else ()
    if sched is None:
        return Plan(**{
            "backend": eng.name, "kernel": eng.expression_kernel, "copies": call.copies, "flops": flops,
            "bytes": itemsize * (m * n + batch * (n + m)), "home": call.home.name, "dtype": str(call.dtype),
            "notes": tuple(t for t in call.notes if not rows or t != eng.expression_note) + notes,
            "op": call.op, "gemm": _gemm_text(call.op, None), **blocked,
        })  # fmt: skip
    a_op, _ = eng.operand(call.a, call.op) if call.op != "N" or call.conj else (call.a, False)
    m, n = eng.shape(a_op)
    if call.kernel == "gemv":
        return _gemv_plan(call, a_op, flops, itemsize * (m * n + n + m))
    distinct = sched.rows * sched.gemm_calls
    a_strides = eng.strides(a_op)
    conj_x = call.conj == "xy" and not sched.x_copy
    views = (
        OperandView(
            "A" if call.op in ("T", "H") else "A.T", (n, m),
            (a_strides[1], a_strides[0]) if not sched.a_copy else (1, n), sched.a_order,
            None if sched.a_copy else eng.address(a_op)[1], "copy of A" if sched.a_copy else "A",
            call.conj == "flag",
        ),
        OperandView(
            "X2", (sched.rows, n), sched.x2_strides if not (sched.x_copy or conj_x) else (n, 1), sched.x_order,
            None if sched.x_copy or conj_x else eng.address(call.x)[1],
            "conj(x)" if conj_x else "copy of x" if sched.x_copy else "x",
        ),
        OperandView(
            "Y2", (sched.rows, m), sched.y2_strides, "row-major" if not sched.out_direct else _layout.blas_order(
                sched.rows, m, *sched.y2_strides),
            eng.address(call.out_e)[1] if sched.out_direct else None, "out" if sched.out_direct else "y",
        ),
    )  # fmt: skip
    return Plan(**{
        "backend": eng.name,
        "kernel": "gemm" if sched.gemm_calls == 1 else "gemm loop",
        "copies": call.copies,
        "flops": flops,
        "bytes": itemsize * (m * n + distinct * n + batch * m),
        "home": call.home.name,
        "dtype": str(call.dtype),
        "gemm_calls": sched.gemm_calls,
        "views": views,
        "notes": call.notes + notes,
        "op": call.op,
        "temporaries": call.temporaries,
        "gemm": _gemm_text(call.op, call.conj),
        **blocked,
    })


def _gemv_plan(call: Any, a_op: Any, flops: int, traffic: int) -> Plan:
    """The report of a call on one vector that runs the library's matrix-vector product
    (``kernel == "gemv"``): op(A) and x as they are, y new."""
    eng = call.engine
    (m, n), strides = eng.shape(a_op), eng.strides(a_op)
    name = "A.T" if call.op in ("T", "H") else "A"
    views = (
        OperandView(name, (m, n), strides, _layout.blas_order(m, n, *strides), eng.address(a_op)[1], "A"),
        OperandView("x", (n,), eng.strides(call.x), None, eng.address(call.x)[1], "x"),
        OperandView("y", (m,), (1,), None, None, "y"),
    )
    return Plan(
        backend=eng.name, kernel="gemv", copies=call.copies, flops=flops, bytes=traffic, home=call.home.name,
        dtype=str(call.dtype), views=views, notes=call.notes, op=call.op, gemm=f"y = {name} @ x",
    )  # fmt: skip
