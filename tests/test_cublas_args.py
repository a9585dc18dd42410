"""The arithmetic of the cupy engine's cuBLAS call, checked without a GPU.

:func:`batchmv._cublas.cublas_args` turns three row-major views (``Y2 = X2 @ A.T``) into
the arguments of one column-major ``cublas<t>gemm``.  Here numpy *emulates cuBLAS's
addressing rules* on flat buffers: element (i, j) of a column-major operand with leading
dimension ``ld`` is ``buffer[offset + i + j * ld]``, ``op`` transposes it, and C is
written only at ``offset + i + j * ldc``.  That proves the parameters (transpose flags,
operand order, m/n/k, leading dimensions) compute ``Y2 = X2 @ A.T`` for C-ordered,
Fortran-ordered, transposed and sliced (padded) layouts, satisfy cuBLAS's argument rules
(``ld >= max(1, rows of the stored matrix)``), and write no element outside ``Y2``.

What this does *not* test: cuBLAS itself, CuPy's bindings, pointers, streams or anything
that runs on a GPU.  Those are in ``test_gpu.py`` (marked ``gpu``, skipped without a
CUDA device).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import batchmv
import support
from batchmv._cublas import CUBLAS_INT_MAX, CUBLAS_OP_C, CUBLAS_OP_N, CUBLAS_OP_T, CublasGemm, conj_readable, cublas_args


def _stored(buf: np.ndarray, offset: int, rows: int, cols: int, ld: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, flat indices) of the column-major (rows, cols) matrix cuBLAS reads."""
    i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    idx = offset + i + j * ld
    if idx.size:
        assert idx.min() >= 0 and idx.max() < buf.size, "cuBLAS would read outside the buffer"
    return buf[idx], idx


def emulate(call: CublasGemm, operands: dict[str, tuple[np.ndarray, int]], c_buf: np.ndarray, c_off: int) -> np.ndarray:
    """``C = op(A) @ op(B)`` as cuBLAS defines it (alpha 1, beta 0); returns C's indices."""
    assert call.transa in (CUBLAS_OP_N, CUBLAS_OP_T, CUBLAS_OP_C) and call.transb in (CUBLAS_OP_N, CUBLAS_OP_T, CUBLAS_OP_C)
    assert {call.first, call.second} == {"x2", "a_t"}
    a_rows, a_cols = (call.m, call.k) if call.transa == CUBLAS_OP_N else (call.k, call.m)
    b_rows, b_cols = (call.k, call.n) if call.transb == CUBLAS_OP_N else (call.n, call.k)
    # cuBLAS's argument rules (CUBLAS_STATUS_INVALID_VALUE otherwise)
    assert min(call.m, call.n, call.k) >= 0
    assert call.lda >= max(1, a_rows), call
    assert call.ldb >= max(1, b_rows), call
    assert call.ldc >= max(1, call.m), call
    a, _ = _stored(*operands[call.first], a_rows, a_cols, call.lda)
    b, _ = _stored(*operands[call.second], b_rows, b_cols, call.ldb)
    op_a = a if call.transa == CUBLAS_OP_N else a.T if call.transa == CUBLAS_OP_T else a.conj().T
    op_b = b if call.transb == CUBLAS_OP_N else b.T if call.transb == CUBLAS_OP_T else b.conj().T
    _, c_idx = _stored(c_buf, c_off, call.m, call.n, call.ldc)
    c_buf[c_idx] = op_a @ op_b
    return c_idx


#: (row stride, col stride) of a (rows, cols) view, by name; "odd" strides of axes of
#: length 1 are never used by a correct call, so any value must do
LAYOUTS = {
    "C": lambda r, c: (c, 1),
    "F": lambda r, c: (1, r),
    "C padded": lambda r, c: (c + 3, 1),  # a row slice X[:, :n] of a wider array
    "F padded": lambda r, c: (1, r + 2),  # a transposed view of a padded buffer
    "odd unit axes": lambda r, c: (7 if r == 1 else (c if c > 1 else 1), 0 if c == 1 else 1),
}


def _view(rng: np.random.Generator, shape: tuple[int, int], strides: tuple[int, int], fill: float | None):
    """(flat buffer, element offset, numpy view) with the view at a random offset."""
    offset = int(rng.integers(0, 5))
    extent = sum((s - 1) * abs(st) for s, st in zip(shape, strides)) + 1 if min(shape) > 0 else 0
    buf = rng.standard_normal(offset + extent + 4) if fill is None else np.full(offset + extent + 4, fill)
    size = buf.itemsize
    view = np.lib.stride_tricks.as_strided(buf[offset:], shape=shape, strides=tuple(st * size for st in strides))
    return buf, offset, view


SIZES = [(rows, n, m) for rows in (1, 2, 5) for n in (1, 3) for m in (1, 4)]


@pytest.mark.parametrize("rows, n, m", SIZES, ids=lambda v: str(v))
def test_parameters_compute_y2_on_every_readable_layout(rows, n, m):
    rng = np.random.default_rng(rows * 100 + n * 10 + m)
    for x_name, a_name, y_name in itertools.product(LAYOUTS, repeat=3):
        x_strides = LAYOUTS[x_name](rows, n)
        a_strides = LAYOUTS[a_name](n, m)  # of A.T, shape (n, m)
        y_strides = LAYOUTS[y_name](rows, m)
        x_buf, x_off, x2 = _view(rng, (rows, n), x_strides, None)
        a_buf, a_off, a_t = _view(rng, (n, m), a_strides, None)
        y_buf, y_off, y2 = _view(rng, (rows, m), y_strides, np.nan)  # NaN: never written
        expected = x2 @ a_t

        call = cublas_args(rows, n, m, x_strides, a_strides, y_strides)
        written = emulate(call, {"x2": (x_buf, x_off), "a_t": (a_buf, a_off)}, y_buf, y_off)

        label = f"X2 {x_name}, A.T {a_name}, Y2 {y_name}: {call}"
        np.testing.assert_allclose(y2, expected, rtol=1e-12, atol=1e-12, err_msg=label)
        # every element of Y2 written exactly once, and nothing else
        y_idx = y_off + np.add.outer(np.arange(rows) * y_strides[0], np.arange(m) * y_strides[1])
        assert sorted(written.ravel().tolist()) == sorted(y_idx.ravel().tolist()), label
        untouched = np.ones(y_buf.size, bool)
        untouched[y_idx.ravel()] = False
        assert np.isnan(y_buf[untouched]).all(), f"{label}: wrote outside Y2"


@pytest.mark.parametrize("rows, n, m", SIZES, ids=lambda v: str(v))
def test_conjugate_flag_reads_a_in_place_or_is_refused(rows, n, m):
    """With ``conj``, Y2 = X2 @ conj(A.T) through op C wherever cuBLAS reads A.T's memory
    transposed; elsewhere ValueError (the engine then conjugates x and y instead), and
    ``conj_readable`` says which in advance."""
    rng = np.random.default_rng(rows * 100 + n * 10 + m)
    readable = 0
    for x_name, a_name, y_name in itertools.product(LAYOUTS, repeat=3):
        x_strides, a_strides, y_strides = LAYOUTS[x_name](rows, n), LAYOUTS[a_name](n, m), LAYOUTS[y_name](rows, m)
        x_buf, x_off, x2 = _view(rng, (rows, n), x_strides, None)
        a_buf = rng.standard_normal(64) + 1j * rng.standard_normal(64)
        a_t = np.lib.stride_tricks.as_strided(a_buf[2:], (n, m), tuple(st * 16 for st in a_strides))
        y_buf = np.full(64, np.nan + 0j)
        y2 = np.lib.stride_tricks.as_strided(y_buf[1:], (rows, m), tuple(st * 16 for st in y_strides))
        if not conj_readable(rows, n, m, x_strides, a_strides, y_strides):
            with pytest.raises(ValueError, match="op N"):
                cublas_args(rows, n, m, x_strides, a_strides, y_strides, conj=True)
            continue
        readable += 1
        call = cublas_args(rows, n, m, x_strides, a_strides, y_strides, conj=True)
        assert CUBLAS_OP_C in (call.transa, call.transb)
        emulate(call, {"x2": (x_buf.astype(complex), x_off), "a_t": (a_buf, 2)}, y_buf, 1)
        np.testing.assert_allclose(y2, x2 @ a_t.conj(), rtol=1e-12, err_msg=f"{x_name}, {a_name}, {y_name}")
    assert readable


def test_conjugate_flag_needs_a_read_transposed():
    """The GEMM operand conj(B.T) of a C-ordered B (3, 4) (``matvec(B.conj(), x)``, or
    ``rmatvec`` of the Fortran-ordered A = B.T) is read with op C into a row-major Y2; that
    of a Fortran-ordered B (``rmatvec`` of a C-ordered A) cannot be: x and y are conjugated."""
    call = cublas_args(10, 4, 3, (4, 1), (1, 4), (3, 1), conj=True)  # B.T strides (1, 4)
    assert call == CublasGemm(CUBLAS_OP_C, CUBLAS_OP_N, 3, 10, 4, "a_t", 4, "x2", 4, 3)
    assert not conj_readable(10, 4, 3, (4, 1), (3, 1), (3, 1))


def test_row_major_views_become_the_transposed_column_major_problem():
    """C-ordered X2, A and Y2 (the common case): Y2.T = A @ X2.T, A passed first with T,
    as CuPy's own matmul does for contiguous operands."""
    call = cublas_args(10, 4, 3, (4, 1), (1, 4), (3, 1))
    assert call == CublasGemm(CUBLAS_OP_T, CUBLAS_OP_N, 3, 10, 4, "a_t", 4, "x2", 4, 3)
    # a padded row slice of X keeps its leading dimension: nothing to copy
    assert cublas_args(10, 4, 3, (9, 1), (1, 4), (3, 1)).ldb == 9
    # a column-major result: X2 (column-major) is cuBLAS's A as it is, A.T (row-major,
    # i.e. A in column-major) its B with T
    call = cublas_args(10, 4, 3, (1, 10), (3, 1), (1, 12))
    assert (call.first, call.transa, call.lda, call.second, call.transb, call.ldb, call.ldc) == ("x2", 0, 10, "a_t", 1, 3, 12)


@pytest.mark.parametrize(
    "x_strides, a_strides, y_strides, which",
    [
        ((8, 2), (1, 4), (3, 1), "X2"),  # no unit stride
        ((4, 1), (2, 8), (3, 1), "A.T"),
        ((4, 1), (1, 4), (6, 2), "Y2"),
        ((2, 1), (1, 4), (3, 1), "X2"),  # rows overlap: leading dimension shorter than a row
        ((4, 1), (1, 4), (0, 1), "Y2"),  # stride 0: several results in one element
        ((-4, 1), (1, 4), (3, 1), "X2"),  # negative stride
        ((4, None), (1, 4), (3, 1), "X2"),  # not a whole number of elements
    ],
)
def test_unreadable_views_are_refused_not_copied(x_strides, a_strides, y_strides, which):
    with pytest.raises(ValueError, match=which):
        cublas_args(10, 4, 3, x_strides, a_strides, y_strides)


def test_32_bit_limits():
    big = CUBLAS_INT_MAX + 1
    with pytest.raises(OverflowError, match="32-bit"):
        cublas_args(big, 4, 3, (4, 1), (1, 4), (3, 1))  # too many rows for one call
    with pytest.raises(OverflowError, match="ldb"):
        cublas_args(10, 4, 3, (big, 1), (1, 4), (3, 1))  # leading dimension beyond int32
    assert cublas_args(CUBLAS_INT_MAX, 4, 3, (4, 1), (1, 4), (3, 1)).n == CUBLAS_INT_MAX


LAYOUT_CASES = {
    "C, C": (lambda A: A, lambda X: X, -1),
    "F, C": (lambda A: np.asfortranarray(A), lambda X: X, -1),
    "sliced, sliced": (lambda A: np.pad(A, ((1, 2), (0, 3)))[1:-2, :-3], lambda X: np.pad(X, ((0, 0), (2, 1)))[:, 2:-1], -1),
    "transposed, columns": (lambda A: np.pad(A.T, ((0, 0), (1, 1)))[:, 1:-1].T, lambda X: np.ascontiguousarray(X.T), 0),
    "C, 3-D permuted": (lambda A: A, lambda X: X.reshape(4, 5, -1).transpose(1, 0, 2), -1),
}


@pytest.mark.parametrize("case", LAYOUT_CASES)
@pytest.mark.parametrize("out_kind", ["none", "padded"])
def test_every_copy_free_schedule_gives_valid_cublas_arguments(case, out_kind):
    """Whatever views the schedule hands to a BLAS engine without a copy, cublas_args turns
    them into a valid call (the views reported by plan for numpy's BLAS path)."""
    a_of, x_of, axis = LAYOUT_CASES[case]
    rng = np.random.default_rng(7)
    A = a_of(rng.standard_normal((6, 9)))
    X = x_of(rng.standard_normal((20, 9)))
    y_shape = tuple(6 if i == axis % X.ndim else s for i, s in enumerate(X.shape))
    out = None if out_kind == "none" else np.zeros(y_shape[:-1] + (y_shape[-1] + 2,))[..., 1:-1]
    plan = batchmv.plan(A, X, axis=axis, out=out, backend="numpy")
    assert not [c for c in plan.copies if not c.startswith("out:")], plan.copies  # (out: into a temporary)
    views = {v.name: v for v in plan.views}
    (rows, n), m = views["X2"].shape, views["A.T"].shape[1]
    call = cublas_args(rows, n, m, views["X2"].strides, views["A.T"].strides, views["Y2"].strides)
    assert (call.k, {call.m, call.n}) == (n, {rows, m})


def test_cublas_args_needs_no_gpu_library():
    proc = support.run_python(
        """
        import sys
        from batchmv._cublas import cublas_args
        cublas_args(10, 4, 3, (4, 1), (1, 4), (3, 1))
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("cupy", "cupy_backends", "torch", "jax")))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
