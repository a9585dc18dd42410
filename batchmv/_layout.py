"""Layout analysis: which views of A, x and y one GEMM can read, from shapes and strides alone.

Everything here is arithmetic on tuples (strides in elements, ``None`` for a stride that is
not a whole number of elements), so it is shared by every engine and runs unchanged while
torch.compile traces a call.  The kernel is always ``Y2 = X2 @ A.T`` where ``X2`` is a
(rows, n) view of the batch, ``A.T`` a transposed view of A and ``Y2`` a (rows, m) view of
the result; batch axes that cannot be viewed as one become a short loop of such GEMMs.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

Strides = tuple[Optional[int], ...]

#: A loop of GEMMs is used instead of copying x only when every GEMM gets at least this
#: many vectors (or the whole batch is smaller): never a loop over single vectors.
MIN_ROWS_PER_GEMM = 32


def blas_order(rows: int, cols: int, row_stride: int | None, col_stride: int | None) -> str | None:
    """``"row-major"`` or ``"col-major"`` when BLAS can read the (rows, cols) view as is
    (one unit stride, the other at least the extent it jumps over), else None.

    >>> blas_order(3, 4, 4, 1), blas_order(3, 4, 1, 3), blas_order(3, 4, 8, 2)
    ('row-major', 'col-major', None)
    """
    if col_stride == 1 and row_stride is not None and row_stride >= max(1, cols):
        return "row-major"
    if row_stride == 1 and col_stride is not None and col_stride >= max(1, rows):
        return "col-major"
    return None


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """C-order strides, in elements, of an array of ``shape``."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def vectors_last_strides(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    """Strides (in ``shape``'s axis order) of a C-order copy whose ``axis`` is innermost."""
    moved = shape[:axis] + shape[axis + 1 :] + (shape[axis],)
    strides = list(contiguous_strides(moved))
    return tuple(strides[:axis]) + (strides[-1],) + tuple(strides[axis:-1])


def _groups(axes: list[int], shape: tuple[int, ...], strides: Strides) -> list[list[int]]:
    """Split ``axes`` (sorted by decreasing stride) into runs that one stride can walk."""
    runs: list[list[int]] = []
    for axis in axes:
        if runs:
            last = runs[-1][-1]
            # (an empty axis: nothing is read, any strides can be viewed as one)
            if strides[last] == strides[axis] * max(shape[axis], 1):  # type: ignore[operator]
                runs[-1].append(axis)
                continue
        runs.append([axis])
    return runs


class Schedule(NamedTuple):
    """How one call runs: views, loop and GEMM shape.  Axis numbers refer to x."""

    a_copy: str | None  #: why A must be copied, or None
    x_copy: str | None  #: why x must be copied, or None
    zero_axes: tuple[int, ...]  #: broadcast (stride 0) batch axes, computed once
    perm: tuple[int, ...]  #: order of x's axes: unit axes, loop axes, GEMM axes, vector axis
    loop_shape: tuple[int, ...]  #: one entry per merged loop run
    rows: int  #: vectors per GEMM
    view_shape: tuple[int, ...]  #: permuted x viewed as (*loop_shape, rows, n)
    split_shape: tuple[int, ...]  #: permuted result shape before un-permuting
    out_direct: bool  #: ``out`` can take the GEMM's result directly
    x_order: str | None  #: BLAS order of the X2 view
    a_order: str | None  #: BLAS order of the A.T view
    x2_strides: tuple[int | None, int | None]  #: strides of the X2 (rows, n) view
    y2_strides: tuple[int | None, int | None]  #: strides of the Y2 (rows, m) view

    @property
    def gemm_calls(self) -> int:
        return math.prod(self.loop_shape)


def schedule(
    a_shape: tuple[int, int],
    a_strides: Strides,
    x_shape: tuple[int, ...],
    x_strides: Strides,
    axis: int,
    out_strides: Strides | None,
    needs_blas: bool,
    a_cast: str | None = None,
    x_cast: str | None = None,
) -> Schedule:
    """Plan ``y = A @ x`` along ``axis`` (normalised, non-negative).

    ``needs_blas``: the engine's GEMM copies operands BLAS cannot read, so such operands are
    reported as copies (made explicitly, before the kernel runs).  ``a_cast``/``x_cast``:
    the reason an operand must be converted to the result dtype (the converted copy of A
    is C-ordered, that of x has its vectors contiguous).

    >>> s = schedule((3, 4), (4, 1), (10, 4), (4, 1), 1, None, True)
    >>> s.gemm_calls, s.rows, s.a_copy, s.x_copy
    (1, 10, None, None)
    """
    m, n = a_shape
    # the strides of an array without elements mean nothing (numpy reports zeros): use C order
    if m * n == 0:
        a_strides = contiguous_strides(a_shape)
    if math.prod(x_shape) == 0:
        x_strides = vectors_last_strides(x_shape, axis)
    a_t_order = blas_order(n, m, a_strides[1], a_strides[0])
    a_copy = a_cast
    if a_cast:
        a_t_order = "col-major"
    elif needs_blas and a_t_order is None:
        a_copy = f"A: strides {tuple(a_strides)} are not BLAS-readable, copied to C order"
        a_t_order = "col-major"

    zero_axes = tuple(
        i for i, (size, stride) in enumerate(zip(x_shape, x_strides)) if i != axis and size != 1 and stride == 0
    )
    shape_r = tuple(1 if i in zero_axes else s for i, s in enumerate(x_shape))
    grouping = None if x_cast else _batch_grouping(shape_r, x_strides, axis, needs_blas, n)
    x_copy = x_cast
    if grouping is None:
        x_copy = x_copy or (
            f"x: strides {tuple(x_strides)} along axis {axis} give no GEMM view "
            f"with at least {MIN_ROWS_PER_GEMM} vectors per call, copied with vectors contiguous"
        )
        grouping = _batch_grouping(shape_r, vectors_last_strides(shape_r, axis), axis, needs_blas, n)
        assert grouping is not None
    perm, runs, gemm_run, x_order, x2_strides = grouping

    loop_shape = tuple(math.prod([shape_r[i] for i in run]) for run in runs)
    rows = math.prod([shape_r[i] for i in gemm_run])
    y_shape_r = shape_r[:axis] + (m,) + shape_r[axis + 1 :]
    split_shape = tuple(y_shape_r[i] for i in perm)

    out_direct = False
    y2_strides: tuple[int | None, int | None] = (m, 1)
    if out_strides is not None and not zero_axes:
        out_direct = _writable_view(out_strides, x_shape, axis, m, [*runs, gemm_run], rows, needs_blas)
        if out_direct:
            vec = out_strides[axis] if m != 1 else 1
            y2_strides = (out_strides[gemm_run[-1]] if gemm_run else m * vec, vec)  # type: ignore[operator]
    return Schedule(
        a_copy=a_copy,
        x_copy=x_copy,
        zero_axes=zero_axes,
        perm=perm,
        loop_shape=loop_shape,
        rows=rows,
        view_shape=(*loop_shape, rows, n),
        split_shape=split_shape,
        out_direct=out_direct,
        x_order=x_order,
        a_order=a_t_order,
        x2_strides=x2_strides,
        y2_strides=y2_strides,
    )


def _writable_view(
    strides: Strides, shape: tuple[int, ...], axis: int, m: int, runs: list[list[int]], rows: int, needs_blas: bool
) -> bool:
    """Whether ``out`` (strides ``strides``) can be viewed like x's runs and written by GEMM."""
    if m * math.prod(shape[:axis] + shape[axis + 1 :]) == 0:
        return True  # out has no elements: any view of it takes the (empty) result
    if any(strides[i] is None or strides[i] == 0 for i in range(len(shape)) if shape[i] != 1 or i == axis):
        return False if m != 1 else all(strides[i] for i in range(len(shape)) if shape[i] != 1 and i != axis)
    for run in runs:
        for outer, inner in zip(run, run[1:]):
            if strides[outer] != strides[inner] * shape[inner]:  # type: ignore[operator]
                return False
    gemm_run = runs[-1]
    vec = strides[axis] if m != 1 else 1
    row_stride = strides[gemm_run[-1]] if gemm_run else m * vec  # type: ignore[operator]
    return not needs_blas or blas_order(rows, m, row_stride, vec) is not None


def _batch_grouping(
    shape: tuple[int, ...], strides: Strides, axis: int, needs_blas: bool, n: int
) -> tuple[tuple[int, ...], list[list[int]], list[int], str | None, tuple[int | None, int | None]] | None:
    """Group x's batch axes; None when no acceptable GEMM view exists without a copy."""
    if any(s is None or s == 0 for i, s in enumerate(strides) if shape[i] != 1 and i != axis):
        return None
    if n != 1 and strides[axis] is None:
        return None
    batch = [i for i in range(len(shape)) if i != axis]
    unit = [i for i in batch if shape[i] == 1]
    live: list[int] = []
    for i in batch:  # insertion sort by decreasing |stride|, stable (traceable by dynamo)
        if shape[i] != 1:
            k = len(live)
            while k and abs(strides[live[k - 1]]) < abs(strides[i]):  # type: ignore[arg-type]
                k -= 1
            live.insert(k, i)
    runs = _groups(live, shape, strides)
    vec_stride = strides[axis] if n != 1 else 1

    def row_stride(run: list[int]) -> int | None:
        return strides[run[-1]] if run else max(n, 1) * (vec_stride or 1)

    def order(run: list[int]) -> str | None:
        return blas_order(math.prod([shape[i] for i in run]), n, row_stride(run), vec_stride)

    candidates = [k for k, r in enumerate(runs) if not needs_blas or order(r) is not None]
    best = -1  # (bound even without runs: dynamo reads the comprehension's cells below)
    if not runs:
        gemm_run: list[int] = []
        if needs_blas and order([]) is None:
            return None
    elif not candidates:
        return None
    else:
        best = candidates[0]
        for k in candidates[1:]:  # the candidate run with the most vectors
            if math.prod([shape[i] for i in runs[k]]) > math.prod([shape[i] for i in runs[best]]):
                best = k
        gemm_run = runs[best]
    loops = [r for k, r in enumerate(runs) if k != best]
    rows = math.prod([shape[i] for i in gemm_run])
    total = math.prod([shape[i] for i in live])
    if loops and rows < min(MIN_ROWS_PER_GEMM, total):
        return None
    perm = tuple(unit + [i for r in loops for i in r] + gemm_run + [axis])
    return perm, loops, gemm_run, order(gemm_run), (row_stride(gemm_run), vec_stride)


def extent(ptr: int, shape: tuple[int, ...], byte_strides: tuple[int, ...], itemsize: int) -> tuple[int, int]:
    """The byte range [lo, hi) that an array's elements can touch."""
    if any([s == 0 for s in shape]):
        return ptr, ptr
    lo = ptr + sum((s - 1) * st for s, st in zip(shape, byte_strides) if st < 0)
    hi = ptr + sum((s - 1) * st for s, st in zip(shape, byte_strides) if st > 0) + itemsize
    return lo, hi


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether two byte ranges share a byte."""
    return a[0] < b[1] and b[0] < a[1] and a[0] != a[1] and b[0] != b[1]
