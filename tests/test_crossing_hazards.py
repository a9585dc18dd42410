"""Crossings between libraries that crash, lose a value's meaning or copy unreported when
taken naively, found by a review that tried to break the library as a new user would;
kept as tests of their kinds:

* memory reaching torch through DLPack from objects other than numpy arrays (negative
  strides abort ``torch.from_dlpack``): imported by numpy, which reads the layout first;
* complex128 memory that is only 8-byte aligned (numpy's complex128 views can be): torch's
  own kernels crash on it, so torch tensors of that kind are refused and numpy arrays are
  copied by numpy before torch computes;
* torch's lazy negative bit, which DLPack does not carry (the value's sign would be lost);
* masked arrays inside Python sequences, and ``out`` arrays whose meaning another engine's
  write would lose (masks, autograd, ``__torch_function__``);
* misaligned numpy arrays of any dtype, which numpy's matmul buffers (a copy).

Whatever can crash runs in a fresh interpreter, and the crash itself is shown as the
positive control.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import batchmv
import support


def _child(code: str) -> str:
    """Run ``code`` in a fresh interpreter; its stdout, after checking that it exited cleanly."""
    done = support.run_python(code)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
    return done.stdout


def test_negative_strides_reach_torch_through_numpy_s_import():
    support.need("torch")
    out = _child("""
        import numpy as np, batchmv
        class OnlyDLPack:  # (an object that speaks DLPack and nothing else: its home is torch)
            def __init__(self, base): self.base = base
            def __dlpack__(self, **kw): return self.base.__dlpack__(**kw)
            def __dlpack_device__(self): return self.base.__dlpack_device__()
        A, xn = np.arange(6.0).reshape(3, 2), np.arange(8.0).reshape(4, 2)[::-1]
        y = batchmv.matvec(A, OnlyDLPack(xn))
        assert type(y).__name__ == "Tensor" and np.allclose(y.numpy(), xn @ A.T)
        print(batchmv.plan(A, OnlyDLPack(xn)).copies)
        for view in (xn, xn[:, ::-1]):
            y = batchmv.matvec(OnlyDLPack(np.ascontiguousarray(A)[::-1]), OnlyDLPack(view))
            assert np.allclose(y.numpy(), view @ A[::-1].T)
        print("ok")
    """)
    assert "negative strides" in out and out.strip().endswith("ok")


def test_complex128_memory_torch_would_crash_on_is_refused_or_copied():
    support.need("torch")
    control = support.run_python("""
        import numpy as np, torch
        buf = np.zeros(64, np.uint8)
        start = (8 - buf.ctypes.data % 16) % 16 or 16
        torch.from_numpy(buf[start:start + 16].view(np.complex128)).clone()
    """)
    if control.returncode == 0:  # (the hazard depends on torch's build and the CPU: the behaviour below still holds)
        pytest.skip("torch's own clone of an 8-byte-aligned complex128 tensor does not crash here")
    out = _child("""
        import numpy as np, torch, batchmv
        buf = np.zeros(512, np.uint8)
        start = (8 - buf.ctypes.data % 16) % 16 or 16
        xn = buf[start:start + 32].view(np.complex128)
        xn[:] = [1, 2j]
        x, A = torch.from_numpy(xn), torch.eye(2, dtype=torch.complex128)
        aligned = torch.ones(2, dtype=torch.complex128)
        batchmv.matvec(A, aligned, op="H"); batchmv.matvec(A, aligned, op="H")  # (remembered)
        values = torch.from_numpy(buf[start:start + 32].view(np.complex128))  # a sparse A's values
        S = torch.sparse_csr_tensor(torch.tensor([0, 1, 2]), torch.tensor([0, 1]), values, size=(2, 2))
        for call in (lambda: batchmv.matvec(A, x), lambda: batchmv.matvec(A, x, op="H"), lambda: batchmv.prepare(A)(x),
                     lambda: batchmv.prepare(A).H(x), lambda: batchmv.matvec(x.view(1, 2).expand(2, 2), aligned),
                     lambda: batchmv.matvec(A, aligned.view(1, 2), out=x.view(1, 2)),
                     lambda: batchmv.matvec(S, aligned), lambda: batchmv.matvec(S, aligned, op="T"), lambda: batchmv.prepare(S)):
            try:
                call()
            except TypeError as err:
                assert "16-byte aligned" in str(err), err
            else:
                raise AssertionError("computed on it")
        An = buf[start:start + 64].view(np.complex128).reshape(2, 2)  # numpy's: copied by numpy
        An[:] = [[1, 2j], [3, 4]]
        assert "16-byte aligned" in batchmv.plan(An, np.ones(2, np.complex128), backend="torch").copies[0]
        y = batchmv.matvec(An, np.ones((3, 2), np.complex128), backend="torch", op="H")
        assert np.allclose(y, np.ones((3, 2)) @ An.conj())
        print("ok")
    """)
    assert out.strip() == "ok"


def test_a_negative_bit_is_resolved_before_dlpack():
    """DLPack carries a tensor's memory, not its lazy negative bit: the value would change
    sign in another library; it is resolved into a reported copy (copy=False refuses it)."""
    support.need("torch")
    xp = pytest.importorskip("array_api_strict")
    import torch

    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    A = torch._neg_view(values)
    x = xp.asarray(np.ones(2, np.float32))
    np.testing.assert_allclose(np.asarray(batchmv.matvec(A, x)), [-3.0, -7.0])
    np.testing.assert_allclose(np.asarray(batchmv.prepare(A).matvec(xp.ones(2, dtype=xp.float32))), [-3.0, -7.0])
    assert "negative bit" in batchmv.plan(A, x).copies[0]
    with pytest.raises(batchmv.CopyRequiredError, match="negative bit"):
        batchmv.matvec(A, x, copy=False)
    np.testing.assert_allclose(np.asarray(xp.from_dlpack(A) @ x), [3.0, 7.0])  # (DLPack of the raw memory: the control)


def test_masked_arrays_inside_sequences_are_refused():
    xm = np.ma.array(np.ones(3), mask=[0, 1, 0])
    A = np.arange(6.0).reshape(2, 3)
    for args in ((A, [xm, xm]), ((xm, xm), np.ones(3)), (A, [[xm.tolist()], [xm]])):
        with pytest.raises(TypeError, match="masked array"):
            batchmv.matvec(*args)
    np.testing.assert_allclose(batchmv.matvec(A, [np.ones(3), np.ones(3)]), [[3.0, 12.0]] * 2)  # (plain ones: fine)


def test_tensors_in_sequences_that_numpy_cannot_take_are_a_type_error():
    torch = pytest.importorskip("torch")
    for t in (torch.ones(3, requires_grad=True), torch.ones(3, dtype=torch.complex64).conj()):
        with pytest.raises(TypeError, match="cannot convert this sequence"):
            batchmv.matvec(np.ones((2, 3)), [t])


@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_a_masked_out_is_refused(engine):
    support.need(engine)
    A, x = np.arange(6.0).reshape(2, 3), np.ones((4, 3))
    with pytest.raises(TypeError, match="masked array"):
        batchmv.matvec(A, x, out=np.ma.array(np.zeros((4, 2)), mask=True), backend=engine)


@pytest.mark.parametrize("engine", ["numpy", "torch", "jax"])
def test_an_out_that_requires_grad_is_refused(engine):
    support.need(engine)
    torch = pytest.importorskip("torch")
    A, x = torch.randn(3, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    leaf = torch.zeros(5, 3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="requires grad"):
        batchmv.matvec(A, x, out=leaf, backend=engine)
    with torch.no_grad():  # (outside autograd the write is the caller's to make)
        batchmv.matvec(A, x, out=leaf, backend=engine)
    torch.testing.assert_close(leaf.detach(), x @ A.T)


def test_an_out_of_a_torch_function_subclass_is_written_by_torch():
    """Another engine's result reaches such an out through torch's own copy (reported),
    which the subclass sees, instead of a numpy view that would bypass it."""
    torch = pytest.importorskip("torch")
    seen: list[str] = []
    Logged = support.logged_tensor_class(seen)
    A, x = torch.randn(3, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    out = torch.zeros(5, 3, dtype=torch.float64).as_subclass(Logged)
    assert "overrides __torch_function__" in batchmv.plan(A, x, out=out, backend="numpy").copies[0]
    batchmv.matvec(A, x, out=out, backend="numpy")
    assert "copy_" in seen
    torch.testing.assert_close(out.as_subclass(torch.Tensor), x @ A.T)


@pytest.mark.parametrize("dtype", ["int32", "float16", "float64"])
def test_misaligned_numpy_arrays_of_every_dtype_are_reported_copies(dtype):
    itemsize = np.dtype(dtype).itemsize
    raw = np.zeros(300 * 300 * itemsize + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    misaligned = raw[start + 1 : start + 1 + 300 * 300 * itemsize].view(dtype).reshape(300, 300)
    aligned = raw[start : start + 300 * 300 * itemsize].view(dtype).reshape(300, 300)
    A = np.ones((4, 300), dtype)
    assert not misaligned.flags.aligned and aligned.flags.aligned
    assert batchmv.plan(A, aligned).copies == ()
    assert "not aligned" in batchmv.plan(A, misaligned).copies[0]
    with pytest.raises(batchmv.CopyRequiredError):
        batchmv.matvec(A, misaligned, copy=False)
    for x, copied in ((aligned, False), (misaligned, True)):  # (the copy is real: tracemalloc sees it)
        batchmv.matvec(A, x)
        tracemalloc.start()
        try:
            batchmv.matvec(A, x)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert (peak >= x.nbytes / 2) == copied, (peak, x.nbytes)


def test_a_sparse_product_s_result_reaches_jax_whatever_its_alignment():
    """scipy's product allocates the result (numpy's allocator: any 16-byte alignment); jax
    wraps only 64-byte-aligned memory, so a result it cannot wrap is copied, as the plan's
    notes say, with the default copy=None (it raised CopyRequiredError for most shapes)."""
    sparse = pytest.importorskip("scipy.sparse")
    support.need("jax")
    import jax.numpy as jnp

    values = np.arange(30, dtype=np.float32).reshape(6, 5)
    A = sparse.csr_array(values)
    for shape in ((5,), (300, 5), (64, 5), (7, 5)):
        xn = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        ref, mag = support.reference(values, xn, -1), support.magnitude(values, xn, -1)
        y = batchmv.matvec(A, jnp.asarray(xn), backend="numpy")
        assert type(y).__module__.startswith("jax")
        support.assert_matvec_close(np.asarray(y), ref, mag, 5, "float32")
        support.assert_matvec_close(np.asarray(batchmv.prepare(A)(jnp.asarray(xn))), ref, mag, 5, "float32")
    assert any("handed to jax" in n for n in batchmv.plan(A, jnp.asarray(xn), backend="numpy").notes)
