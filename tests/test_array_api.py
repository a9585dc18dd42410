"""A library batchmv does not name, through the array-API engine (issue 13): array-api-strict,
the standard's reference implementation, with matvec, plan, prepare and fastest; honest plans
(no layout claims), the copies batchmv itself would make refused by copy=False, the
documented errors, and crossings to the named engines through DLPack without a copy."""

from __future__ import annotations

import numpy as np
import pytest

import batchmv
import support

pytestmark = support.needs("array_api_strict")


@pytest.fixture
def xp():
    import array_api_strict

    return array_api_strict


def _pair(xp, m=3, n=4, batch=(5,), dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    a, x = support.random_values(rng, (m, n), dtype), support.random_values(rng, (*batch, n), dtype)
    return xp.asarray(a), xp.asarray(x)


def test_its_own_engine_computes_it_and_the_plan_claims_no_layout(xp):
    A, x = _pair(xp)
    p = batchmv.plan(A, x)
    assert (p.backend, p.home, p.kernel, p.copies, p.views) == (
        "array_api_strict", "array_api_strict", "matmul (array API)", (), ()
    )
    assert "layout not observable" in p.notes[0] and "the library's own kernel may copy" in p.notes[0]
    y = batchmv.matvec(A, x)
    assert support.library_of_array(y) == "array_api_strict" and y.device == x.device
    support.assert_matvec_close(y, support.reference(A, x, -1), support.magnitude(A, x, -1), 4, "float64")
    assert batchmv.matvec(A, x, copy=False) is not None  # batchmv itself copies nothing here


def test_the_copies_batchmv_would_make_are_reported_and_refused(xp):
    A, x = _pair(xp)
    x32 = xp.astype(x, xp.float32)
    assert any("cast from float32" in c for c in batchmv.plan(A, x32).copies)
    with pytest.raises(batchmv.CopyRequiredError, match="cast"):
        batchmv.matvec(A, x32, copy=False)
    out = xp.zeros((5, 3), dtype=xp.float64)
    assert any("copied into out" in c for c in batchmv.plan(A, x, out=out).copies)
    assert batchmv.matvec(A, x, out=out) is out
    support.assert_matvec_close(out, support.reference(A, x, -1), support.magnitude(A, x, -1), 4, "float64")
    with pytest.raises(batchmv.CopyRequiredError, match="out"):
        batchmv.matvec(A, x, out=out, copy=False)


@pytest.mark.parametrize("engine", ["numpy", "torch", "jax"])
def test_named_engines_share_its_arrays_through_dlpack(xp, engine):
    support.need(engine)
    from batchmv import _call

    A, x = _pair(xp, dtype="float32", batch=(16,))  # (jax wraps 64-byte-aligned memory only)
    call = _call.build(A, x, -1, None, engine, None)
    y = batchmv.matvec(A, x, backend=engine)
    assert support.library_of_array(y) == "array_api_strict"
    support.assert_matvec_close(y, support.reference(A, x, -1), support.magnitude(A, x, -1), 4, "float32")
    if engine == "jax":
        return  # (whether jax wraps the buffer depends on its alignment; plan says which)
    assert call.copies == ()
    pointer = {"numpy": lambda v: v.ctypes.data, "torch": lambda v: v.data_ptr()}[engine]
    assert pointer(call.x) == np.from_dlpack(x).ctypes.data  # the engine reads x's own memory
    copied = np.from_dlpack(x).copy()  # positive control: a copy has another address
    assert pointer(support.to_lib(copied, engine)) != np.from_dlpack(x).ctypes.data


def test_mixed_with_named_libraries(xp):
    A, x = _pair(xp)
    a_np, x_np = np.from_dlpack(A), np.from_dlpack(x)
    y = batchmv.matvec(a_np, x)  # x's library is the home
    assert support.library_of_array(y) == "array_api_strict"
    y = batchmv.matvec(A, x_np)
    assert isinstance(y, np.ndarray)
    np.testing.assert_allclose(y, x_np @ a_np.T)
    y = batchmv.matvec(a_np.tolist(), x)  # a Python sequence becomes an array of x's library
    assert support.library_of_array(y) == "array_api_strict"


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_prepare_and_every_axis(xp, axis):
    rng = np.random.default_rng(axis + 5)
    A = xp.asarray(support.random_values(rng, (3, 4), "complex128"))
    shape = [2, 6, 7]
    shape[axis] = 4
    x = xp.asarray(support.random_values(rng, tuple(shape), "complex128"))
    op = batchmv.prepare(A)
    assert op.backend == "array_api_strict" and op.plan(x, axis=axis).backend == "array_api_strict"
    for y in (op(x, axis=axis), op(x, axis=axis), batchmv.matvec(A, x, axis=axis)):
        support.assert_matvec_close(y, support.reference(A, x, axis), support.magnitude(A, x, axis), 4, "complex128")


def test_fastest_compares_its_own_engine_with_the_named_ones(xp, monkeypatch):
    monkeypatch.delenv("BATCHMV_TUNE_CACHE", raising=False)
    monkeypatch.setattr(batchmv._tune, "_choices", {})
    monkeypatch.setattr(batchmv._tune, "_disk_loaded", True)
    A, x = _pair(xp, batch=(64,))
    y = batchmv.matvec(A, x, backend="fastest")
    assert support.library_of_array(y) == "array_api_strict"
    note = batchmv.plan(A, x, backend="fastest").notes[0]
    assert "array_api_strict" in note.split("measured")[1]  # its own engine was timed too


def test_errors(xp):
    A, x = _pair(xp)
    with pytest.raises(ValueError, match="2-D"):
        batchmv.matvec(xp.reshape(A, (1, 3, 4)), x)
    with pytest.raises(ValueError, match=r"x.shape\[axis\]"):
        batchmv.matvec(A, x, axis=0)
    with pytest.raises(TypeError):
        batchmv.matvec(xp.astype(A, xp.bool), xp.astype(x, xp.bool))
    elsewhere = xp.asarray(np.from_dlpack(x), device=xp.Device("device1"))
    with pytest.raises(TypeError, match="never moves data between devices"):
        batchmv.matvec(A, elsewhere)
    with pytest.raises(ValueError, match="unknown backend"):
        batchmv.matvec(A, x, backend="array_api_strict")  # backend= names the named engines only
    with pytest.raises(ValueError, match="out has shape"):
        batchmv.matvec(A, x, out=xp.zeros((3, 3), dtype=xp.float64))


def test_importing_batchmv_imports_no_array_api_library():
    proc = support.run_python(
        "import sys, batchmv; bad = [m for m in ('array_api_strict', 'array_api_compat') if m in sys.modules]; "
        "assert not bad, bad"
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("engine", ["numpy", "torch", "jax", "fastest"])
def test_arrays_off_the_default_device_stay_with_their_engine(xp, engine, monkeypatch):
    """Another engine would compute them on the default device (DLPack does not tell array-api-
    strict's devices apart): named engines refuse with a TypeError; "fastest" keeps its own."""
    if engine != "fastest":
        support.need(engine)
    monkeypatch.setattr(batchmv._tune, "_choices", {})
    monkeypatch.setattr(batchmv._tune, "_disk_loaded", True)
    d1 = xp.Device("device1")
    A, x = (xp.asarray(np.from_dlpack(v), device=d1) for v in _pair(xp))
    if engine == "fastest":
        y = batchmv.matvec(A, x, backend="fastest")
        assert y.device == d1 and batchmv.plan(A, x, backend="fastest").backend == "array_api_strict"
        return
    with pytest.raises(TypeError, match="default device"):
        batchmv.matvec(A, x, backend=engine)
    A0, x0 = _pair(xp)  # positive control: on the default device the named engine takes them
    assert batchmv.matvec(A0, x0, backend=engine).device == x0.device
