"""Property test: random shapes and strided views of A, x and out against the reference.

Views are made the way users make them — slicing with steps and offsets, transposes
(a buffer allocated in a permuted axis order), negative steps (numpy only) and broadcasts
(stride 0) — never with ``as_strided``, so every layout is one a program can produce.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import batchmv
import support

DTYPES = ("float64", "float32", "complex128", "int64")
SETTINGS = settings(
    max_examples=int(os.environ.get("BATCHMV_HYPOTHESIS_EXAMPLES", "150")),  # raise it for a deeper search
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@st.composite
def layouts(draw, shape, *, negative: bool, broadcast: tuple[int, ...] = ()):
    """How to cut a view of ``shape`` out of a fresh buffer: per axis a step, an offset, a
    direction and whether it is broadcast; and the axis order of the buffer."""
    ndim = len(shape)
    return {
        "steps": [draw(st.integers(1, 3)) for _ in range(ndim)],
        "offsets": [draw(st.integers(0, 2)) for _ in range(ndim)],
        "extra": [draw(st.integers(0, 1)) for _ in range(ndim)],
        "reverse": [negative and draw(st.booleans()) for _ in range(ndim)],
        "broadcast": [i in broadcast and shape[i] > 1 and draw(st.booleans()) for i in range(ndim)],
        "order": draw(st.permutations(range(ndim))),
    }


def cut(rng: np.random.Generator, shape: tuple[int, ...], spec: dict, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(root buffer, view of ``shape``) following ``spec``."""
    extents, index = [], []
    for size, step, offset, extra, reverse, bcast in zip(
        shape, spec["steps"], spec["offsets"], spec["extra"], spec["reverse"], spec["broadcast"]
    ):
        if bcast:
            extents.append(1 + extra)
            index.append(slice(extra, extra + 1))
        elif size == 0:
            extents.append(offset + extra)
            index.append(slice(offset, offset))
        else:
            last = offset + (size - 1) * step
            extents.append(last + 1 + extra)
            stop = offset - 1 if offset > 0 else None
            index.append(slice(last, stop, -step) if reverse else slice(offset, last + 1, step))
    order = spec["order"]
    root = support.random_values(rng, tuple(extents[i] for i in order), dtype)
    logical = root.transpose(tuple(np.argsort(order)))
    view = logical[tuple(index)]
    view = np.broadcast_to(view, shape) if any(spec["broadcast"]) else view
    assert view.shape == tuple(shape)
    return root, view


@st.composite
def problems(draw, home: str):
    numpy_home = home == "numpy"
    m = draw(st.integers(0, 6) | st.integers(1, 3))
    n = draw(st.integers(0, 6) | st.integers(1, 3))
    ndim = draw(st.integers(1, 4))
    batch = [draw(st.integers(0, 5) if draw(st.integers(0, 9)) == 0 else st.integers(1, 5)) for _ in range(ndim - 1)]
    axis = draw(st.integers(0, ndim - 1))
    x_shape = tuple(batch[:axis] + [n] + batch[axis:])
    y_shape = tuple(batch[:axis] + [m] + batch[axis:])
    a_dtype = draw(st.sampled_from(DTYPES))
    x_dtype = a_dtype if draw(st.integers(0, 3)) else draw(st.sampled_from(DTYPES))
    engines = [name for name in support.testable() if not support.cross_device_reason(home, name)]
    return {
        "m": m,
        "n": n,
        "x_shape": x_shape,
        "y_shape": y_shape,
        "axis": axis - ndim if draw(st.booleans()) else axis,
        "a_dtype": a_dtype,
        "x_dtype": x_dtype,
        "a": draw(layouts((m, n), negative=numpy_home, broadcast=(0, 1))),
        "x": draw(layouts(x_shape, negative=numpy_home, broadcast=tuple(i for i in range(ndim) if i != axis))),
        "out": draw(st.none() | layouts(y_shape, negative=numpy_home)) if home != "jax" else None,
        "engine": draw(st.sampled_from(engines)),
        "seed": draw(st.integers(0, 2**16)),
    }


@pytest.mark.parametrize("xp_name", support.lib_params())
@SETTINGS
@given(data=st.data())
def test_random_views_match_reference(xp_name, data):
    case = data.draw(problems(xp_name))
    home, engine = xp_name, case["engine"]
    rng = np.random.default_rng(case["seed"])
    a_root, a_view = cut(rng, (case["m"], case["n"]), case["a"], case["a_dtype"])
    x_root, x_view = cut(rng, case["x_shape"], case["x"], case["x_dtype"])
    (A,) = support.in_lib(a_root, [a_view], home)
    (x,) = support.in_lib(x_root, [x_view], home)
    y_dtype = support.promoted(home, case["a_dtype"], case["x_dtype"])
    out = None
    if case["out"] is not None:
        out_root, out_view = cut(rng, case["y_shape"], case["out"], "float64")
        (out,) = support.in_lib(out_root, [out_view], home, y_dtype)
    axis = case["axis"]

    ref = support.reference(A, x, axis)
    scale = support.magnitude(A, x, axis)
    if home == "jax" and out is not None:  # jax arrays are immutable
        with pytest.raises(TypeError):
            batchmv.matvec(A, x, axis=axis, out=out, backend=engine)
        return
    plan = batchmv.plan(A, x, axis=axis, out=out, backend=engine)
    y = batchmv.matvec(A, x, axis=axis, out=out, backend=engine)

    assert support.library_of_array(y) == home
    assert tuple(y.shape) == case["y_shape"]
    assert support.dtype_name(y.dtype) == y_dtype
    if out is not None:
        assert y is out
    support.assert_matvec_close(y, ref, scale, case["n"], y_dtype)

    # the plan describes this call: never a loop of GEMMs over a few vectors each
    assert plan.backend == engine
    if plan.views and plan.gemm_calls > 1:
        rows = plan.views[1].shape[0]
        assert rows >= 32, f"{plan.gemm_calls} GEMMs of {rows} vectors each"
