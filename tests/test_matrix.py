"""The layout × dtype × batch × axis × out matrix, against a float64 reference.

A covering, not the full Cartesian product:

* ``test_layouts``: every A layout × x layout × batch shape × axis × out kind, in
  float64, for every (home library, engine) pair;
* ``test_dtypes``: every dtype on a smaller set of layouts, for every pair;
* ``test_mixed_dtypes``: operands of different dtypes follow the home library's promotion.

Every case checks the result's library (the home library: x's), shape, dtype, that
``out`` is returned as itself, the values against float64 (exact for integers), and that
the inputs were not written to.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import batchmv
import support

M, N = 3, 5

A_LAYOUTS = ("C", "F", "transposed", "sliced", "reversed", "broadcast")
X_LAYOUTS = ("contiguous", "strided", "permuted")
BATCHES = {"none": (), "empty": (2, 0), "one": (7,), "several": (3, 4, 2)}
AXES = ("last", "first", "middle")
OUTS = ("none", "contiguous", "strided", "alias")
DTYPES = ("float32", "float64", "complex64", "complex128", "int32", "int64", "float16", "bfloat16")


def make_a(layout: str, rng: np.random.Generator, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(root buffer, A view of shape (M, N)) with the named layout."""
    if layout == "C":
        root = support.random_values(rng, (M, N), dtype)
        return root, root[...]
    if layout == "F":  # column-major storage of A itself
        root = support.random_values(rng, (N, M), dtype)
        return root, root.T
    if layout == "transposed":  # transposed view of a padded buffer, at an offset
        root = support.random_values(rng, (N, M + 2), dtype)
        return root, root[:, 1 : M + 1].T
    if layout == "sliced":  # submatrix of a larger matrix
        root = support.random_values(rng, (M + 3, N + 4), dtype)
        return root, root[2 : 2 + M, 1 : 1 + N]
    if layout == "reversed":  # negative strides (numpy only)
        root = support.random_values(rng, (M, N), dtype)
        return root, root[::-1, ::-1]
    if layout == "broadcast":  # one row repeated: stride 0
        root = support.random_values(rng, (1, N), dtype)
        return root, np.broadcast_to(root, (M, N))
    raise ValueError(layout)


def x_shape(batch: str, axis_kind: str) -> tuple[tuple[int, ...], int]:
    """(shape of x, axis argument) for a batch kind and where the vectors lie."""
    dims = BATCHES[batch]
    pos = {"last": len(dims), "first": 0, "middle": 1}[axis_kind]
    shape = dims[:pos] + (N,) + dims[pos:]
    axis = {"last": -1, "first": 0, "middle": pos - len(shape)}[axis_kind]  # middle: a negative axis
    return shape, axis


def make_x(layout: str, shape: tuple[int, ...], axis: int, rng: np.random.Generator, dtype: str):
    """(root buffer, x view of ``shape``) with the named layout."""
    ax = axis % len(shape)
    if layout == "contiguous":
        root = support.random_values(rng, shape, dtype)
        return root, root[...]
    if layout == "strided":  # every other element along the batch axes (the vector axis for 1-D x)
        if len(shape) == 1:
            root = support.random_values(rng, (2 * shape[0] + 1,), dtype)
            return root, root[1::2]
        big = tuple(s if i == ax else 2 * s + 1 for i, s in enumerate(shape))
        root = support.random_values(rng, big, dtype)
        return root, root[tuple(slice(None) if i == ax else slice(1, None, 2) for i in range(len(shape)))]
    if layout == "permuted":  # axes stored in reverse order (Fortran order)
        root = support.random_values(rng, shape[::-1], dtype)
        return root, root.transpose(tuple(reversed(range(len(shape)))))
    raise ValueError(layout)


def valid(home: str, a_layout: str, x_layout: str, batch: str, axis_kind: str, out_kind: str = "none") -> bool:
    if home != "numpy" and a_layout == "reversed":
        return False  # negative strides exist in numpy only
    if home in support.ARRAY_API_ONLY and ((a_layout, x_layout) != ("C", "contiguous") or out_kind in ("strided", "alias")):
        return False  # the array API has no strides to choose and no views of each other
    if home == "jax" and (a_layout, x_layout) != ("C", "contiguous") or home == "jax" and out_kind in ("strided", "alias"):
        return False  # jax arrays have no strides to choose and cannot be views of each other
    if batch == "none":
        return axis_kind == "last" and x_layout != "permuted"  # 1-D x: one axis, one order
    if batch == "one":
        return axis_kind != "middle"
    return True


def run_case(home, engine, a_dtype, x_dtype, a_layout, x_layout, batch, axis_kind, out_kind, seed=0):
    rng = np.random.default_rng(seed)
    a_root, a_view = make_a(a_layout, rng, a_dtype)
    (A,) = support.in_lib(a_root, [a_view], home, a_dtype)
    shape, axis = x_shape(batch, axis_kind)
    x_root, x_view = make_x(x_layout, shape, axis, rng, x_dtype)
    y_shape = tuple(M if i == axis % len(shape) else s for i, s in enumerate(shape))
    y_dtype = support.promoted(home, a_dtype, x_dtype)
    size = int(np.prod(y_shape))

    views = [x_view]
    if out_kind == "alias":
        # out is a view of x's own buffer, starting where x starts: they overlap
        assert y_dtype == x_dtype
        start = support.element_geometry(x_view, x_root)[2]
        views.append(x_root.reshape(-1)[start : start + size].reshape(y_shape))
    x, *alias = support.in_lib(x_root, views, home, x_dtype)

    ref = support.reference(A, x, axis)
    scale = support.magnitude(A, x, axis)
    a_before = support.to_numpy(A)
    x_before = support.to_numpy(x)

    out = None
    if out_kind == "contiguous":
        out = support.to_lib(np.zeros(y_shape), home, y_dtype)
    elif out_kind == "strided":
        out_root = np.zeros(tuple(2 * s for s in y_shape))
        out = support.in_lib(out_root, [out_root[tuple(slice(None, None, 2) for _ in y_shape)]], home, y_dtype)[0]
    elif out_kind == "alias":
        out = alias[0]

    if engine == "numpy" and "bfloat16" in (a_dtype, x_dtype):
        with pytest.raises(TypeError, match="bfloat16"):
            batchmv.matvec(A, x, axis=axis, out=out, backend=engine)
        return
    if out is not None and home == "jax":
        # jax arrays are immutable: a jax out= is refused rather than ignored (another
        # library's out= computed by the jax engine is filled by a reported copy)
        with pytest.raises(TypeError, match="immutable"):
            batchmv.matvec(A, x, axis=axis, out=out, backend=engine)
        return

    y = batchmv.matvec(A, x, axis=axis, out=out, backend=engine)

    assert support.library_of_array(y) == home, f"result is a {type(y)}, not a {home} array"
    assert tuple(y.shape) == y_shape
    assert support.dtype_name(y.dtype) == y_dtype, f"result dtype {y.dtype}, expected {home}'s promotion {y_dtype}"
    if out is not None:
        assert y is out, "matvec must return the out array itself"
    support.assert_matvec_close(y, ref, scale, N, y_dtype)
    np.testing.assert_array_equal(support.to_numpy(A), a_before, err_msg="A was modified")
    if out_kind != "alias":
        np.testing.assert_array_equal(support.to_numpy(x), x_before, err_msg="x was modified")


def engines_for(home: str) -> tuple[str, ...]:
    """The engines a home library's arrays are tested on: every nameable engine, and "auto"
    for a library that only the array-API engine computes (backend= cannot name it)."""
    return (*support.engine_libraries(), *(("auto",) if home in support.ARRAY_API_ONLY else ()))


def _pair_cases(case_lists):
    """params for every (home, engine) pair; a pair that cannot run is one skipped param."""
    params = []
    for home in support.home_libraries():
        for engine in engines_for(home):
            marks = support.lib_marks(home) if engine == "auto" else support.lib_marks(home, engine)
            if marks:
                params.append(pytest.param(home, engine, *([None] * 7), id=f"{home}-on-{engine}", marks=marks))
                continue
            for values in case_lists(home, engine):
                params.append(pytest.param(home, engine, *values, id="-".join([f"{home}-on-{engine}", *values])))
    return params


ARGS = "home, engine, a_dtype, x_dtype, a_layout, x_layout, batch, axis_kind, out_kind"


def _layout_cases(home, engine):
    for a_layout, x_layout, batch, axis_kind, out_kind in itertools.product(A_LAYOUTS, X_LAYOUTS, BATCHES, AXES, OUTS):
        if valid(home, a_layout, x_layout, batch, axis_kind, out_kind):
            yield ("float64", "float64", a_layout, x_layout, batch, axis_kind, out_kind)


@pytest.mark.parametrize(ARGS, _pair_cases(_layout_cases))
def test_layouts(home, engine, a_dtype, x_dtype, a_layout, x_layout, batch, axis_kind, out_kind):
    run_case(home, engine, a_dtype, x_dtype, a_layout, x_layout, batch, axis_kind, out_kind)


def _dtype_cases(home, engine):
    for dtype in DTYPES:
        if dtype == "bfloat16" and home != "torch":
            continue  # numpy has no bfloat16
        if dtype == "float16" and home in support.ARRAY_API_ONLY:
            continue  # the array API standard has no float16
        cases = [
            (a_layout, x_layout, "several", axis_kind, out_kind)
            for a_layout, x_layout, axis_kind, out_kind in itertools.product(
                ("C", "transposed", "sliced", "broadcast"), ("contiguous", "permuted"), ("last", "middle"), ("none", "contiguous")
            )
        ]
        cases += [("F", "strided", "one", "first", "strided"), ("C", "contiguous", "none", "last", "alias")]
        cases += [("reversed", "strided", "several", "first", "none")]
        for case in cases:
            if valid(home, *case):
                yield (dtype, dtype, *case)


@pytest.mark.parametrize(ARGS, _pair_cases(_dtype_cases))
def test_dtypes(home, engine, a_dtype, x_dtype, a_layout, x_layout, batch, axis_kind, out_kind):
    run_case(home, engine, a_dtype, x_dtype, a_layout, x_layout, batch, axis_kind, out_kind, seed=1)


MIXED = (
    ("float32", "float64"),
    ("float64", "float32"),
    ("int32", "float32"),
    ("int64", "float64"),
    ("float32", "complex128"),
    ("complex64", "float64"),
    ("int32", "int64"),
    ("float16", "float32"),
)


def _mixed_cases(home, engine):
    for a_dtype, x_dtype in MIXED:
        if home in support.ARRAY_API_ONLY and (a_dtype[0] != x_dtype[0] and "int" in a_dtype + x_dtype or "float16" in (a_dtype, x_dtype)):
            continue  # the standard promotes within a kind (and real with complex) only
        for a_layout, out_kind in (("C", "none"), ("transposed", "contiguous")):
            yield (a_dtype, x_dtype, a_layout, "contiguous", "one", "last", out_kind)
    if home == "torch":
        yield ("bfloat16", "float32", "C", "contiguous", "one", "last", "none")


@pytest.mark.parametrize(ARGS, _pair_cases(_mixed_cases))
def test_mixed_dtypes(home, engine, a_dtype, x_dtype, a_layout, x_layout, batch, axis_kind, out_kind):
    run_case(home, engine, a_dtype, x_dtype, a_layout, x_layout, batch, axis_kind, out_kind, seed=2)


@pytest.mark.parametrize("m, n", [(1, 1), (1, 5), (5, 1), (0, 4), (4, 0), (40, 33)])
def test_edge_sizes(xp_name, engine_name, m, n, rng):
    """Degenerate and non-square matrices, a batch with several axes, the vector axis in the middle."""
    a_root = support.random_values(rng, (n, m), "float64")
    x_root = support.random_values(rng, (6, n, 7), "float64")
    (A,) = support.in_lib(a_root, [a_root.T], xp_name)
    (x,) = support.in_lib(x_root, [x_root], xp_name)
    y = batchmv.matvec(A, x, axis=1, backend=engine_name)
    assert support.library_of_array(y) == xp_name
    assert tuple(y.shape) == (6, m, 7)
    support.assert_matvec_close(y, support.reference(A, x, 1), support.magnitude(A, x, 1), n, "float64")


def test_matrix_covers_every_home_and_engine():
    """The matrix must not silently lose a testable pair (e.g. by a filtering mistake)."""
    ids = [p.id for p in _pair_cases(_layout_cases) if not p.marks]
    for home in support.testable_homes():
        engines = [e for e in engines_for(home) if e == "auto" or e in support.testable()]
        for engine in engines:
            if engine != "auto" and support.cross_device_reason(home, engine):
                continue  # (cupy with a CPU library: refused, see test_gpu.py)
            assert any(i.startswith(f"{home}-on-{engine}-") for i in ids), (home, engine)


def test_out_aliasing_a(xp_name, engine_name, rng):
    """out is A itself (square A): the result is computed from A before A is overwritten."""
    if "jax" in (xp_name, engine_name):
        pytest.skip("jax arrays cannot be written")
    root = support.random_values(rng, (6, 6), "float64")
    x_root = support.random_values(rng, (6, 6), "float64")
    A, out = support.in_lib(root, [root, root], xp_name)
    (x,) = support.in_lib(x_root, [x_root], xp_name)
    ref, scale = support.reference(A, x, -1), support.magnitude(A, x, -1)
    y = batchmv.matvec(A, x, out=out, backend=engine_name)
    assert y is out
    support.assert_matvec_close(y, ref, scale, 6, "float64")


@pytest.mark.parametrize("bit", ["conj", "neg"])
def test_torch_out_with_lazy_bits(bit, rng):
    """An out tensor that is a conjugate or negative view still receives A @ x."""
    support.need("torch")
    import torch

    dtype = "complex128" if bit == "conj" else "float64"
    A = support.to_lib(support.random_values(rng, (M, N), dtype), "torch")
    x = support.to_lib(support.random_values(rng, (7, N), dtype), "torch")
    base = torch.zeros(7, M, dtype=A.dtype)
    out = base.conj() if bit == "conj" else torch._neg_view(base)
    y = batchmv.matvec(A, x, out=out)
    assert y is out
    support.assert_matvec_close(out, support.reference(A, x, -1), support.magnitude(A, x, -1), N, dtype)
