"""cuBLAS (column-major) arguments for the row-major views ``Y2 = X2 @ A.T`` of the schedule
(:mod:`batchmv._layout`): transpose/conjugate flags, operand order and leading dimensions,
as arithmetic on strides in elements, so that it is tested without a GPU or a GPU library.
"""

from __future__ import annotations

from typing import NamedTuple

from ._layout import Strides

#: Largest value cuBLAS's 32-bit GEMM API takes for a size or a leading dimension.
CUBLAS_INT_MAX = 2**31 - 1
#: cuBLAS's operation codes (``cublasOperation_t``): C is the conjugate transpose.
CUBLAS_OP_N, CUBLAS_OP_T, CUBLAS_OP_C = 0, 1, 2


class CublasGemm(NamedTuple):
    """Arguments of one column-major ``cublas<t>gemm``, ``C = op(A) @ op(B)``, that writes
    the row-major view ``Y2 = X2 @ A.T``.  ``first``/``second`` name the view whose first
    element's address is passed as cuBLAS's A/B (``"x2"`` or ``"a_t"``); C is always Y2."""

    transa: int
    transb: int
    m: int
    n: int
    k: int
    first: str
    lda: int
    second: str
    ldb: int
    ldc: int


def _column_major(rows: int, cols: int, row_stride: int | None, col_stride: int | None) -> tuple[int, int] | None:
    """How cuBLAS reads a (rows, cols) view with these element strides: (op, ld) where op
    N means the view is column-major with leading dimension ld, and op T means its
    transpose (cols, rows) is; None when it is neither.  The stride of an axis of length 1
    is never used, so it does not matter."""
    unit_rows = rows <= 1 or row_stride == 1
    unit_cols = cols <= 1 or col_stride == 1
    if unit_rows and (cols <= 1 or (col_stride is not None and col_stride >= max(1, rows))):
        return CUBLAS_OP_N, max(1, rows) if cols <= 1 else col_stride  # type: ignore[return-value]
    if unit_cols and (rows <= 1 or (row_stride is not None and row_stride >= max(1, cols))):
        return CUBLAS_OP_T, max(1, cols) if rows <= 1 else row_stride  # type: ignore[return-value]
    return None


def _transposed_ld(rows: int, cols: int, row_stride: int | None, col_stride: int | None) -> int | None:
    """The leading dimension under which cuBLAS reads a (rows, cols) view with op T (its
    transpose (cols, rows) column-major), or None."""
    if (cols <= 1 or col_stride == 1) and (rows <= 1 or (row_stride is not None and row_stride >= max(1, cols))):
        return max(1, cols) if rows <= 1 else row_stride
    return None


def cublas_args(
    rows: int, n: int, m: int, x2_strides: Strides, a_t_strides: Strides, y2_strides: Strides, conj: bool = False
) -> CublasGemm:
    """The column-major GEMM that computes ``Y2 = X2 @ A.T`` in place on the three views
    (``Y2 = X2 @ conj(A.T)`` with ``conj``).

    ``X2`` is (rows, n), ``A.T`` is (n, m), ``Y2`` is (rows, m); strides are in elements.
    cuBLAS sees memory column-major: a row-major (rows, m) ``Y2`` *is* the column-major
    (m, rows) matrix ``Y2.T = A @ X2.T``, so the operands swap places and each one takes
    the transpose flag and leading dimension under which its memory is column-major.
    Nothing is copied: a view that cuBLAS cannot read as it is (no unit stride, or a
    leading dimension shorter than the extent it jumps over) raises ValueError; a size or
    leading dimension beyond cuBLAS's 32-bit arguments raises OverflowError.  Pure
    arithmetic on tuples: importing or calling it needs no GPU library.

    ``conj``: BLAS conjugates an operand only together with transposing it (op C), so
    ``conj(A.T)`` is read with op C where the memory of ``A.T`` is read with op T;
    where it would be read with op N, ValueError (:func:`conj_readable` says which).

    >>> cublas_args(10, 4, 3, (4, 1), (1, 4), (3, 1))  # C-ordered x, A and y
    CublasGemm(transa=1, transb=0, m=3, n=10, k=4, first='a_t', lda=4, second='x2', ldb=4, ldc=3)
    """
    y_layout = _column_major(rows, m, *y2_strides)
    if y_layout is None:
        raise ValueError(f"Y2 {(rows, m)} with strides {tuple(y2_strides)} is not BLAS-writable")
    y_op, ldc = y_layout
    if y_op == CUBLAS_OP_N:  # C = Y2 (rows, m) = X2 @ A.T
        shapes = (("x2", rows, n, x2_strides[0], x2_strides[1]), ("a_t", n, m, a_t_strides[0], a_t_strides[1]))
        gm, gn = rows, m
    else:  # C = Y2.T (m, rows) = (A.T).T @ X2.T
        shapes = (("a_t", m, n, a_t_strides[1], a_t_strides[0]), ("x2", n, rows, x2_strides[1], x2_strides[0]))
        gm, gn = m, rows
    (first, r1, c1, rs1, cs1), (second, r2, c2, rs2, cs2) = shapes
    lay1, lay2 = _column_major(r1, c1, rs1, cs1), _column_major(r2, c2, rs2, cs2)
    for name, lay, shape, strides in ((first, lay1, (r1, c1), (rs1, cs1)), (second, lay2, (r2, c2), (rs2, cs2))):
        if lay is None:
            raise ValueError(f"{'X2' if name == 'x2' else 'A.T'} {shape} with strides {strides} is not BLAS-readable")
    assert lay1 is not None and lay2 is not None
    ops, lds = [lay1[0], lay2[0]], [lay1[1], lay2[1]]
    if conj:
        which = 0 if first == "a_t" else 1
        if ops[which] == CUBLAS_OP_N:  # a row or column of A reads either way: try op T
            r, c, rs, cs = shapes[which][1:]
            ld = _transposed_ld(r, c, rs, cs)
            if ld is None:
                raise ValueError("A.T is read with op N here, and BLAS conjugates only a transposed operand (op C)")
            lds[which] = ld
        ops[which] = CUBLAS_OP_C
    call = CublasGemm(ops[0], ops[1], gm, gn, n, first, lds[0], second, lds[1], ldc)
    big = [f"{k}={v}" for k, v in call._asdict().items() if isinstance(v, int) and v > CUBLAS_INT_MAX]
    if big:
        raise OverflowError(f"cuBLAS takes 32-bit sizes and leading dimensions; this GEMM needs {', '.join(big)}")
    return call


def conj_readable(rows: int, n: int, m: int, x2_strides: Strides, a_t_strides: Strides, y2_strides: Strides) -> bool:
    """Whether a column-major BLAS (cuBLAS) computes ``Y2 = X2 @ conj(A.T)`` on these
    views with its conjugate flag, reading A in place (see :func:`cublas_args`).

    >>> conj_readable(10, 4, 3, (4, 1), (1, 4), (3, 1)), conj_readable(10, 4, 3, (4, 1), (3, 1), (3, 1))
    (True, False)
    """
    try:
        cublas_args(rows, n, m, x2_strides, a_t_strides, y2_strides, conj=True)
    except (ValueError, OverflowError):
        return False
    return True
