"""The kernels a remembered call runs (batchmv._run.runner, Engine.gemm_kernel and
Engine.gemv_kernel) and what their keys leave to them (Engine.layout_key): one vector runs
the library's GEMV, numpy.dot only where it reads its operands in place, devices checked
by the kernel or by the full checks after it raises, autograd read as the run goes."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import batchmv
import support
from batchmv import _registry, _skinny

STRIDED = [p for p in support.lib_params() if p.values[0] in ("numpy", "torch")]


def _check(y, a, x, axis=-1, op="N", dtype="float64", matrix=None):
    """``y`` against the float64 reference of op(A) x (``matrix``: A's values, where
    ``a`` is a lazy view that support.to_numpy would not read as its values)."""
    m = support.to_numpy(a) if matrix is None else matrix
    m = {"N": m, "T": m.T, "H": m.conj().T, "C": m.conj()}[op]
    support.assert_matvec_close(y, support.reference(m, x, axis), support.magnitude(m, x, axis), m.shape[1], dtype)


def _peak(fn) -> int:
    """Bytes numpy allocated at the peak of ``fn()`` (tracemalloc sees numpy's buffers)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# -- one vector: the library's GEMV on A and x as they are --------------------------------
@pytest.mark.parametrize("lib", STRIDED)
@pytest.mark.parametrize("layout", ("C", "F", "row-strided"))
@pytest.mark.parametrize("op", ("N", "T"))
def test_one_vector_runs_the_librarys_gemv_on_a_and_x(rng, lib, layout, op, monkeypatch):
    base = support.random_values(rng, (30, 40), "float64")
    a_np = {"C": base[:, :20].copy(), "F": np.asfortranarray(base[:, :20]), "row-strided": base[:, :20]}[layout]
    a = support.to_lib(a_np, lib)
    x = support.to_lib(support.random_values(rng, ((30 if op == "T" else 20) * 2,), "float64"), lib)[::2]
    seen = []
    support.record_kernels(_registry.get_engine(lib), monkeypatch, lambda kind, v, m, out, conj: seen.append(
        (kind, support.byte_range(m), support.byte_range(v))))  # fmt: skip
    plan = batchmv.plan(a, x, op=op)
    assert plan.kernel == "gemv" and plan.copies == () and plan.temporaries == (), plan
    assert [v.name for v in plan.views] == ["A.T" if op == "T" else "A", "x", "y"]
    assert plan.views[0].source == "A" and plan.views[1].strides == (2,)
    for _ in range(2):  # built, then remembered
        y = batchmv.matvec(a, x, op=op)
        _check(y, a, x, op=op)
    a_range, x_range = support.byte_range(a), support.byte_range(x)
    assert [s[0] for s in seen] == ["gemv", "gemv"]
    assert all(a_range[0] <= r[0] and r[1] <= a_range[1] and v == x_range for _, r, v in seen)
    # positive control: the check sees a copy of A
    batchmv.matvec(support.to_lib(a_np.copy(), lib), x, op=op)
    assert not (a_range[0] <= seen[-1][1][0] and seen[-1][1][1] <= a_range[1])


@pytest.mark.parametrize("lib", STRIDED)
@pytest.mark.parametrize("dtype", ("float64", "complex128"))
@pytest.mark.parametrize("op", ("N", "T", "H", "C"))
@pytest.mark.parametrize("lazy", (False, True), ids=("plain", "lazy-conj"))
def test_one_vector_every_op_and_conjugate(rng, lib, dtype, op, lazy):
    """A review found op "C" run as a transpose and torch's lazy conjugate bit ignored on
    one vector: every op, with and without the bit, against the reference."""
    if lazy and (lib != "torch" or dtype != "complex128"):
        pytest.skip("torch's lazy conjugate bit (complex tensors)")
    values = support.random_values(rng, (5, 4), dtype)
    a = support.to_lib(values, lib)
    if lazy:
        a, values = a.conj(), values.conj()  # a view with the bit; its values
    x = support.to_lib(support.random_values(rng, (5 if op in ("T", "H") else 4,), dtype), lib)
    for _ in range(2 if op != "C" else 0):  # built, then remembered (op "C": operators only)
        _check(batchmv.matvec(a, x, op=op), a, x, op=op, dtype=dtype, matrix=values)
    op_a = batchmv.prepare(a)
    y = support.to_lib(support.random_values(rng, (4,), dtype), lib)
    for _ in range(2):
        _check(op_a.T.H(y), a, y, op="C", dtype=dtype, matrix=values)
        _check(op_a.T.rmatvec(y), a, y, op="C", dtype=dtype, matrix=values)
        _check(op_a.H.T(y), a, y, op="C", dtype=dtype, matrix=values)


@pytest.mark.parametrize("lib", STRIDED)
def test_one_vector_with_out_or_a_conjugate_runs_a_gemm(rng, lib):
    a = support.to_lib(support.random_values(rng, (6, 5), "complex64"), lib)
    x = support.to_lib(support.random_values(rng, (5,), "complex64"), lib)
    assert batchmv.plan(a, x).kernel == "gemv"
    out = support.to_lib(np.zeros(6, np.complex64), lib)
    assert batchmv.plan(a, x, out=out).kernel == "gemm"  # out= is written by the GEMM's views
    h = support.to_lib(support.random_values(rng, (6,), "complex64"), lib)
    assert batchmv.plan(a, h, op="H").kernel == "gemm"  # the conjugate: a flag or conj(x), conj(y)
    _check(batchmv.rmatvec(a, h), a, h, op="H", dtype="complex64")
    a2, x2 = (support.to_lib(support.random_values(rng, s, "complex128"), lib) for s in ((6, 5), (5,)))
    assert batchmv.plan(a2, x2).kernel == "gemv"  # (misaligned complex128, which torch.mv crashes on, never gets here)
    _check(batchmv.matvec(a2, x2), a2, x2, dtype="complex128")


# -- numpy.dot where it reads in place, matmul elsewhere ------------------------------------
def test_numpy_runs_dot_only_where_dot_reads_in_place(rng):
    base = np.ones((1024, 2048), np.float32)
    a = base[:, :1024]  # rows of stride 2048: BLAS reads them (lda), numpy.dot would copy A
    x = rng.standard_normal((8, 1024), dtype=np.float32)
    assert batchmv.plan(a, x).copies == ()
    batchmv.matvec(a, x)  # remembered
    assert _peak(lambda: batchmv.matvec(a, x)) < a.nbytes // 8
    assert _peak(lambda: np.dot(x, a.T)) >= a.nbytes  # positive control: dot copies this A
    c = np.ascontiguousarray(a)
    batchmv.matvec(c, x)
    assert _peak(lambda: batchmv.matvec(c, x)) < c.nbytes // 8
    _check(batchmv.matvec(a, x), a, x, dtype="float32")
    # one row whose (ignored) stride is negative: C-contiguous by numpy's flags, yet numpy.dot
    # copies it (a review finding); matmul reads it in place
    wide = rng.standard_normal((16, 200_000), dtype=np.float32)
    row = rng.standard_normal((4, 200_000), dtype=np.float32)[::-1][:1]
    assert row.flags.c_contiguous and row.strides[0] < 0
    assert _peak(lambda: np.dot(row, wide.T)) >= row.nbytes  # positive control
    batchmv.matvec(wide, row, copy=False)
    assert _peak(lambda: batchmv.matvec(wide, row, copy=False)) < row.nbytes // 8
    _check(batchmv.matvec(wide, row), wide, row, dtype="float32")


def _unaligned(shape, dtype="float64") -> np.ndarray:
    dtype = np.dtype(dtype)
    buf = np.zeros(int(np.prod(shape)) * dtype.itemsize + 1, np.uint8)
    arr = buf[1:].view(dtype).reshape(shape)
    assert not arr.flags.aligned
    return arr


def test_unaligned_numpy_operands_are_copies_the_plan_reports(rng):
    a = _unaligned((256, 512))
    a[...] = rng.standard_normal(a.shape)
    x = rng.standard_normal((16, 512))
    assert _peak(lambda: np.matmul(x, a.T)) >= a.nbytes  # positive control: matmul copies it
    plan = batchmv.plan(a, x)
    assert any(c.startswith("A is not aligned") for c in plan.copies), plan
    with pytest.raises(batchmv.CopyRequiredError, match="aligned"):
        batchmv.matvec(a, x, copy=False)
    _check(batchmv.matvec(a, x), a, x)
    aligned = a.copy()
    assert batchmv.plan(aligned, x).copies == ()  # the same values, aligned: no copy
    batchmv.matvec(aligned, x, copy=False)  # remembered: the same shape, strides and dtype
    with pytest.raises(batchmv.CopyRequiredError, match="aligned"):  # not the aligned call's run
        batchmv.matvec(a, x, copy=False)


def test_an_unaligned_out_is_written_from_a_reported_temporary(rng):
    a = rng.standard_normal((512, 256))
    x = rng.standard_normal((64, 256))
    out = _unaligned((64, 512))
    assert _peak(lambda: np.matmul(x, a.T, out=out)) >= out.nbytes  # positive control
    plan = batchmv.plan(a, x, out=out)
    assert any(c.startswith("out is not aligned") for c in plan.copies), plan
    with pytest.raises(batchmv.CopyRequiredError):
        batchmv.matvec(a, x, out=out, copy=False)
    assert batchmv.matvec(a, x, out=out) is out
    _check(out, a, x)


# -- what keys leave to the run -------------------------------------------------------------
def test_a_remembered_run_that_raises_is_repeated_through_the_checks(rng, builds):
    a = rng.standard_normal((24, 16))
    x = rng.standard_normal((7, 16))
    op = batchmv.prepare(a)
    op(x)
    op(x)
    assert builds[0] == 1
    a.shape = (16, 24)  # the prepared A's layout changed in place: its key is x's alone
    with pytest.raises(ValueError, match=r"x.shape\[axis\] must equal n"):  # batchmv's message, not numpy's
        op(x)
    assert builds[0] == 2


def test_torch_devices_are_checked_on_remembered_calls(rng):
    """torch's key holds the device, because F.linear takes a "meta" x with a CPU A (the
    control below): a remembered call never reaches a tensor of another device."""
    support.need("torch")
    import torch

    a = torch.randn(6, 4)
    x = torch.randn(3, 4)
    for call in (lambda v: batchmv.matvec(a, v), batchmv.prepare(a)):
        call(x)
        call(x)  # remembered
        meta = torch.empty(3, 4, device="meta")  # the same layout on another device
        with pytest.raises(TypeError, match="device|meta"):
            call(meta)
    # positive control: torch's own kernel takes this pair of devices
    assert torch.nn.functional.linear(torch.empty(3, 4, device="meta"), a).device.type == "meta"


def test_torch_a_prepared_a_transposed_in_place_is_read_as_it_is(rng):
    support.need("torch")
    import torch

    a = torch.randn(5, 5, dtype=torch.float64)
    x = torch.randn(3, 5, dtype=torch.float64)
    op = batchmv.prepare(a)
    op(x)
    a.t_()  # same shape, transposed strides: the remembered kernel reads A's current layout
    _check(op(x), a, x)


@pytest.fixture
def forced_blocks(monkeypatch):
    """Row blocks for a small A (the rule's limits scaled down, as in test_skinny)."""
    monkeypatch.setattr(_skinny, "A_BYTES_MIN", 0)
    monkeypatch.setattr(_skinny, "small_kernel", lambda: True)
    monkeypatch.setattr(_skinny, "SMALL_MNK", 8 * 17 * 64)


def test_torch_row_blocks_remembered_without_grad_keep_autograd_later(rng, forced_blocks, builds):
    support.need("torch")
    import torch

    a = torch.randn(203, 64, dtype=torch.float64)
    x = torch.randn(4, 64, dtype=torch.float64)
    assert batchmv.plan(a, x).kernel == _skinny.KERNEL
    batchmv.matvec(a, x)
    batchmv.matvec(a, x)
    assert builds[0] == 2  # (the plan, the first call)
    xg = x.clone().requires_grad_(True)  # the same layout; the run must now record autograd
    y = batchmv.matvec(a, xg)
    assert builds[0] == 2 and y.requires_grad  # the remembered run, on the engine's GEMM
    (y * y).sum().backward()
    torch.testing.assert_close(xg.grad, 2 * (x @ a.T) @ a)


def test_torch_adjoint_with_conjugated_vectors_keeps_autograd_later(rng, builds):
    support.need("torch")
    import torch

    a = torch.randn(6, 5, dtype=torch.complex128)
    x = torch.randn(3, 6, dtype=torch.complex128)
    plan = batchmv.plan(a, x, op="H")
    assert plan.temporaries and plan.temporaries[0].startswith("x: conjugated"), plan  # conj(A^T conj(x))
    batchmv.rmatvec(a, x)
    batchmv.rmatvec(a, x)
    assert builds[0] == 2  # (the plan, the first call)
    xg = x.clone().requires_grad_(True)
    y = batchmv.rmatvec(a, xg)
    assert builds[0] == 2 and y.requires_grad
    y.abs().sum().backward()
    xr = x.clone().requires_grad_(True)
    (xr @ a.conj()).abs().sum().backward()  # torch's own adjoint product
    torch.testing.assert_close(xg.grad, xr.grad)


def test_torch_calls_built_under_vmap_are_not_remembered(rng, builds):
    support.need("torch")
    import torch

    a = torch.randn(6, 4, dtype=torch.float64)
    xs = torch.randn(5, 3, 4, dtype=torch.float64)
    ys = torch.func.vmap(lambda v: batchmv.matvec(a, v))(xs)  # built under the transform
    _check(ys, a, xs)
    before = builds[0]
    batchmv.matvec(a, xs[0])
    batchmv.matvec(a, xs[0])
    assert builds[0] == before + 1  # the plain call was built: nothing remembered from vmap
    assert batchmv.plan(a, xs[0]).kernel == "gemm"
    after = builds[0]
    _check(torch.func.vmap(lambda v: batchmv.matvec(a, v))(xs), a, xs)  # the remembered run, under vmap
    assert builds[0] == after


@pytest.mark.parametrize("stride", ["negative", "zero", "3"])
def test_numpy_one_vector_of_any_stride_is_read_in_place(stride):
    n = 200_000
    a = np.arange(4 * n, dtype=np.float64).reshape(4, n) % 7
    x = {"negative": np.arange(n, dtype=np.float64)[::-1], "zero": np.broadcast_to(np.float64(2.0), (n,)),
         "3": np.arange(3 * n, dtype=np.float64)[::3]}[stride]  # fmt: skip
    plan = batchmv.plan(a, x)
    assert plan.kernel == "gemv" and plan.copies == (), plan  # (a GEMM would need x copied)
    batchmv.matvec(a, x)
    assert _peak(lambda: batchmv.matvec(a, x)) < n  # nothing of x's size (1.6 MB) allocated
    assert _peak(lambda: np.ascontiguousarray(x)) >= 8 * n  # positive control: a copy of x is seen
    _check(batchmv.matvec(a, x), a, x)
