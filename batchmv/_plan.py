"""The :class:`Plan`: what ``matvec`` will run, reported before anything is computed."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class OperandView:
    """One view that reaches the kernel."""

    name: str  #: "A.T", "X2" or "Y2"
    shape: tuple[int, ...]
    strides: tuple[int | None, ...]  #: in elements
    order: str | None  #: "row-major", "col-major" (BLAS reads it as is) or None
    offset: int | None  #: byte offset of the first element in its buffer (None: not allocated yet)
    source: str  #: what the view points into

    def describe(self) -> str:
        where = f"new buffer ({self.source})" if self.offset is None else f"offset {self.offset} B in {self.source}"
        flag = {"row-major": "N (row-major)", "col-major": "T (col-major)", None: "any strides"}[self.order]
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
    kernel: str  #: "gemm", or "gemm loop" when batch axes cannot be viewed as one
    copies: tuple[str, ...]  #: one entry per copy that matvec makes; empty when none
    flops: int  #: 2·m·n·batch
    bytes: int  #: minimum memory traffic: A, the distinct vectors of x, and y, once each
    home: str = ""  #: library of the result
    dtype: str = ""  #: dtype of the result
    gemm_calls: int = 1  #: how many GEMM calls the kernel makes
    views: tuple[OperandView, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())
    blocks: int = 1  #: separately computed blocks (dask: one matvec call per block, views of the first)

    def __str__(self) -> str:
        lines = [
            f"batchmv plan: {self.home} result, {self.backend} engine, dtype {self.dtype}",
            f"  kernel: {self.kernel} ({self.gemm_calls} call{'s' if self.gemm_calls != 1 else ''}"
            + (f" in {self.blocks} blocks" if self.blocks != 1 else "") + "), "
            f"{self.flops:,} flops, {self.bytes:,} bytes minimum traffic",
            *(["  views (Y2 = X2 @ A.T):"] if self.views else []),
            *("  " + v.describe() for v in self.views),
            "  copies: " + ("none" if not self.copies else ""),
            *(f"    - {c}" for c in self.copies),
            *(f"  note: {n}" for n in self.notes),
        ]
        return "\n".join(lines)
