"""torch sparse A (COO, CSR, CSC, BSR, BSC) with torch x against a float64 reference,
autograd against torch's dense gradient, and A crossing between scipy.sparse and torch
without copies (pointer equality, with the positive control of a crossing that copies)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import batchmv
import support
from test_sparse import LAYOUTS, M, N, check, dense, make, op_of

pytestmark = [support.needs("torch"), pytest.mark.filterwarnings("ignore::UserWarning")]  # (torch: "beta" sparse CSR)
sp = pytest.importorskip("scipy.sparse")

FORMATS = ("coo", "csr", "csc", "bsr", "bsc")
DTYPES = ("float32", "float64", "complex64", "complex128")


def to_torch(values: np.ndarray, fmt: str, index: str = "int64"):
    import torch

    t = torch.from_numpy(values)
    built = {
        "coo": lambda: t.to_sparse(), "csr": lambda: t.to_sparse_csr(), "csc": lambda: t.to_sparse_csc(),
        "bsr": lambda: t.to_sparse_bsr((2, 2)), "bsc": lambda: t.to_sparse_bsc((2, 2)),
    }[fmt]()  # fmt: skip
    if index == "int32" and fmt != "coo":  # (torch's COO indices are int64 only)
        compressed = fmt in ("csr", "bsr")
        first = built.crow_indices() if compressed else built.ccol_indices()
        second = built.col_indices() if compressed else built.row_indices()
        maker = {"csr": torch.sparse_csr_tensor, "csc": torch.sparse_csc_tensor, "bsr": torch.sparse_bsr_tensor,
                 "bsc": torch.sparse_bsc_tensor}[fmt]  # fmt: skip
        built = maker(first.int(), second.int(), built.values(), built.shape)
    return built


@pytest.mark.parametrize("index", ["int32", "int64"])
@pytest.mark.parametrize("op", ["N", "T", "H"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_formats_dtypes_ops_axes(rng, fmt, dtype, op, index):
    import torch

    values = dense(rng, dtype)
    A = to_torch(values, fmt, index)
    for shape, axis in LAYOUTS:
        shape = tuple(M if s == N and op != "N" else s for s in shape)
        x = torch.from_numpy(support.random_values(rng, shape, dtype))
        y = batchmv.matvec(A, x, axis=axis, op=op)
        assert isinstance(y, torch.Tensor) and y.dtype == getattr(torch, dtype) and y.layout == torch.strided
        support.assert_matvec_close(y, support.reference(op_of(values, op), x, axis), support.magnitude(op_of(values, op), x, axis), shape[axis], dtype)
        p = batchmv.plan(A, x, axis=axis, op=op)
        assert p.kernel == "spmm" and p.index_dtype == ("int64" if fmt == "coo" else index)


def test_x_is_read_in_place_where_torch_reads_it(rng):
    """torch's CSR/BSR products read x's (n, k) view in place with unit stride along its
    rows, torch.mv a contiguous vector, the COO product any strides; every other layout
    is copied by batchmv, and the plan says so."""
    import torch

    values = dense(rng, "float64")
    csr, coo = to_torch(values, "csr", "int32"), to_torch(values, "coo")
    columns = torch.randn(N, 5, dtype=torch.float64)  # vectors in columns: (n, k) row-major
    assert batchmv.plan(csr, columns, axis=0).copies == ()
    assert batchmv.plan(csr, torch.randn(N, 10, dtype=torch.float64)[:, :5], axis=0).copies == ()  # rows padded
    assert batchmv.plan(csr, torch.randn(5, N, dtype=torch.float64)[0]).copies == ()  # one vector
    rows = torch.randn(5, N, dtype=torch.float64)  # vectors in rows: the (n, k) view is column-major
    p = batchmv.plan(coo, rows)
    assert p.copies == () and p.views[0].source == "x" and p.views[0].strides == (1, N)
    assert batchmv.plan(csr, rows).copies[0].startswith("x: copied")
    assert batchmv.plan(csr, torch.randn(N, 10, dtype=torch.float64)[:, ::2], axis=0).copies[0].startswith("x: copied")
    assert batchmv.plan(csr, torch.randn(N, 2, dtype=torch.float64)[:, 0]).copies[0].startswith("x: copied")
    middle = torch.randn(3, N, 4, dtype=torch.float64)
    assert batchmv.plan(csr, middle, axis=1).copies[0].startswith("x: copied")


CONVERSIONS = ("aten::clone", "aten::contiguous", "aten::resolve_conj", "aten::to_sparse_csr", "aten::_to_sparse_csr",
               "aten::to_sparse_bsr", "aten::_to_sparse_bsr", "aten::coalesce", "aten::_coalesce", "aten::_to_copy")  # fmt: skip


def copies_seen(fn) -> set[str]:
    """The copying operations torch's profiler records in one call of ``fn`` (after a warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages() if e.key in CONVERSIONS}


def with_strided_values(A):
    """``A`` (compressed) with its values in a strided view of a buffer twice as long."""
    import torch

    v = A.values()
    buffer = torch.zeros((2 * v.shape[0], *v.shape[1:]), dtype=v.dtype)[::2]
    buffer.copy_(v)
    compressed = A.layout in (torch.sparse_csr, torch.sparse_bsr)
    first, second = (A.crow_indices(), A.col_indices()) if compressed else (A.ccol_indices(), A.row_indices())
    maker = {torch.sparse_csr: torch.sparse_csr_tensor, torch.sparse_csc: torch.sparse_csc_tensor,
             torch.sparse_bsr: torch.sparse_bsr_tensor, torch.sparse_bsc: torch.sparse_bsc_tensor}[A.layout]  # fmt: skip
    return maker(first, second, buffer, A.shape)


@pytest.mark.parametrize("values", ["contiguous", "strided"])
@pytest.mark.parametrize("index", ["int32", "int64"])
@pytest.mark.parametrize("op", ["N", "T"])
@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "bsr", "bsc"])
def test_torch_copies_nothing_the_plan_does_not_report(rng, fmt, op, index, values):
    """Seen by torch's profiler: where the plan reports no copy of A, torch converts
    nothing of A (nor casts its indices, nor copies its values, strided ones included);
    where it reports no copy at all, torch copies nothing."""
    import torch

    if values == "strided" and fmt == "coo":
        pytest.skip("a COO tensor's values are coalesced into new ones")
    dense_values = dense(rng, "float64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        A = to_torch(dense_values, fmt, index)
        A = with_strided_values(A) if values == "strided" else A
        for shape, axis in (((N, 4), 0), ((4, N), -1), ((N,), 0), ((1, N), -1)):
            x = torch.randn(tuple(M if s == N and op == "T" else s for s in shape), dtype=torch.float64)
            copies = batchmv.plan(A, x, axis=axis, op=op).copies
            seen = copies_seen(lambda: batchmv.matvec(A, x, axis=axis, op=op))
            if not any(c.startswith("A:") for c in copies):
                assert not seen & set(CONVERSIONS[3:]), (shape, seen)
            if not copies:  # (a conversion of A clones arrays of A's too)
                assert not seen, (shape, seen)
    # positive controls: torch's own products convert a CSC A, cast int64 indices, copy x's
    # transpose, copy strided values
    values = dense_values
    assert "aten::to_sparse_csr" in copies_seen(lambda: to_torch(values, "csc", "int32") @ torch.randn(N, 4, dtype=torch.float64))
    assert "aten::_to_copy" in copies_seen(lambda: to_torch(values, "csr", "int64") @ torch.randn(N, 4, dtype=torch.float64))
    assert "aten::clone" in copies_seen(lambda: to_torch(values, "csr", "int32") @ torch.randn(4, N, dtype=torch.float64).T)
    strided = with_strided_values(to_torch(values, "csr", "int32"))
    assert "aten::clone" in copies_seen(lambda: strided @ torch.randn(N, 4, dtype=torch.float64))
    assert any("values, a strided view" in c for c in batchmv.plan(strided, torch.randn(N, 4, dtype=torch.float64), axis=0).copies)


def test_lazy_bits_of_x_and_int64_indices_are_reported_copies(rng):
    """torch resolves a conjugate bit of x into a copy inside its products, and casts
    int64 indices of a CSR/BSR A to int32 (MKL): the plan reports both, copy=False refuses
    them, and A with int32 indices and x without bits copy nothing."""
    import torch

    values = dense(rng, "complex128")
    x = torch.from_numpy(support.random_values(rng, (N, 3), "complex128"))
    A32, A64 = to_torch(values, "csr", "int32"), to_torch(values, "csr", "int64")
    assert batchmv.plan(A32, x, axis=0).copies == ()
    assert batchmv.plan(A32, x.conj(), axis=0).copies[0].startswith("x: copied")
    assert "int64 index arrays" in batchmv.plan(A64, x, axis=0).copies[0]
    for A, v in ((A32, x.conj()), (A64, x)):
        with pytest.raises(batchmv.CopyRequiredError):
            batchmv.matvec(A, v, axis=0, copy=False)
        for _ in range(2):  # (the second call remembered)
            y = batchmv.matvec(A, v, axis=0)
            vn = v.resolve_conj().numpy()
            support.assert_matvec_close(y, support.reference(values, vn, 0), support.magnitude(values, vn, 0), N, "complex128")
    assert copies_seen(lambda: batchmv.matvec(A32, x, axis=0)) == set()


@pytest.mark.parametrize("fmt", ["csr", "coo", "bsr"])
def test_a_transform_is_refused_after_a_remembered_call_too(rng, fmt):
    """A sparse A under torch.func.vmap/grad is refused whether or not a call of the same
    layouts was remembered before."""
    import torch

    A = to_torch(dense(rng, "float64"), fmt, "int32" if fmt != "coo" else "int64")
    X = torch.randn(3, N, dtype=torch.float64)
    for warm in (False, True):
        if warm:
            batchmv.matvec(A, X[0]), batchmv.matvec(A, X[0])
        with pytest.raises(TypeError, match="transform"):
            torch.func.vmap(lambda v: batchmv.matvec(A, v))(X)
        with pytest.raises(TypeError, match="transform"):
            torch.func.grad(lambda v: batchmv.matvec(A, v).sum())(X[0])


def test_transposes_are_views_or_reported_copies(rng):
    import torch

    values = dense(rng, "float64")
    xt = torch.randn(M, 3, dtype=torch.float64)
    # CSC^T is a CSR view, multiplied as it is; CSR^T is CSC, which torch would convert every call
    assert batchmv.plan(to_torch(values, "csc", "int32"), xt, axis=0, op="T").copies == ()
    assert batchmv.plan(to_torch(values, "csc", "int32"), xt, axis=0, op="T").format.startswith("csr (A^T: a view")
    assert "CSR tensor is CSC" in batchmv.plan(to_torch(values, "csr", "int32"), xt, axis=0, op="T").copies[0]
    with pytest.raises(batchmv.CopyRequiredError, match="CSC"):
        batchmv.matvec(to_torch(values, "csr", "int32"), xt, axis=0, op="T", copy=False)
    assert "transpose of a COO tensor" in batchmv.plan(to_torch(values, "coo"), xt, axis=0, op="T").copies[0]
    with pytest.raises(batchmv.CopyRequiredError, match="BSC"):
        batchmv.matvec(to_torch(values, "bsc"), torch.randn(3, N, dtype=torch.float64), copy=False)
    uncoalesced = torch.sparse_coo_tensor(torch.tensor([[2, 0, 2], [1, 3, 1]]), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), (M, N))
    x = torch.randn(4, N, dtype=torch.float64)
    expected = np.zeros((M, N))
    expected[2, 1], expected[0, 3] = 4.0, 2.0  # duplicates summed
    check_torch = support.reference(expected, x, -1)
    np.testing.assert_allclose(batchmv.matvec(uncoalesced, x).numpy(), check_torch, rtol=1e-14)
    assert "uncoalesced" in batchmv.plan(uncoalesced, x).copies[0]
    # op T of an uncoalesced COO A: one copy (the transpose, coalesced), not two
    copies = batchmv.plan(uncoalesced, torch.randn(4, M, dtype=torch.float64), op="T").copies
    assert [c for c in copies if c.startswith("A:")] == [copies[0]] and "transpose of a COO" in copies[0]
    np.testing.assert_allclose(
        batchmv.matvec(uncoalesced, xm := torch.randn(4, M, dtype=torch.float64), op="T").numpy(), support.reference(expected.T, xm, -1), rtol=1e-14
    )


# -- autograd -----------------------------------------------------------------------------
def test_grad_of_a_coo_a_is_sparse_and_matches_the_dense_gradient(rng):
    import torch

    values = dense(rng, "float64")
    pattern = torch.from_numpy(values != 0)
    x = torch.randn(4, N, dtype=torch.float64, requires_grad=True)
    S = torch.from_numpy(values).to_sparse().requires_grad_()
    weights = torch.randn(4, M, dtype=torch.float64)
    (batchmv.matvec(S, x) * weights).sum().backward()
    D = torch.from_numpy(values).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    ((x_ref @ D.T) * weights).sum().backward()
    assert S.grad.layout == torch.sparse_coo
    torch.testing.assert_close(S.grad.to_dense(), D.grad * pattern)  # the gradient on A's stored entries
    torch.testing.assert_close(x.grad, x_ref.grad)


@pytest.mark.parametrize("fmt", ["csr", "csc", "bsr"])
def test_grad_of_compressed_values(rng, fmt):
    import torch

    values = dense(rng, "float64")
    template = to_torch(values, fmt)
    compressed = fmt in ("csr", "bsr")
    first = template.crow_indices() if compressed else template.ccol_indices()
    second = template.col_indices() if compressed else template.row_indices()
    data = template.values().clone().requires_grad_()
    maker = {"csr": torch.sparse_csr_tensor, "csc": torch.sparse_csc_tensor, "bsr": torch.sparse_bsr_tensor}[fmt]
    A = maker(first, second, data, (M, N))
    x = torch.randn(N, 3, dtype=torch.float64)
    weights = torch.randn(M, 3, dtype=torch.float64)
    (batchmv.matvec(A, x, axis=0) * weights).sum().backward()
    D = torch.from_numpy(values).requires_grad_()
    ((D @ x) * weights).sum().backward()
    # the dense gradient, read at A's stored entries (the gradient w.r.t. its values)
    mask = maker(first, second, torch.ones_like(data), (M, N)).to_dense()
    torch.testing.assert_close(maker(first, second, data.grad, (M, N)).to_dense(), D.grad * mask)


def test_out_is_refused_while_recording_a_graph(rng):
    import torch

    S = torch.from_numpy(dense(rng, "float64")).to_sparse().requires_grad_()
    with pytest.raises(ValueError, match="requires grad"):
        batchmv.matvec(S, torch.ones(N, dtype=torch.float64), out=torch.empty(M, dtype=torch.float64))


# -- crossing: scipy.sparse <-> torch -------------------------------------------------------
def data_ptr(arr) -> int:
    return arr.__array_interface__["data"][0]


@pytest.mark.parametrize("index", ["int32", "int64"])
@pytest.mark.parametrize("fmt", ["csr", "csc", "bsr"])
def test_scipy_a_with_torch_x_shares_its_arrays(rng, fmt, index):
    import torch

    values = dense(rng, "float64")
    A = make(values, fmt, index)
    x = torch.randn(N, 4, dtype=torch.float64)  # vectors in columns: the (n, k) view torch reads in place
    copies = batchmv.plan(A, x, axis=0).copies
    # torch's product converts CSC to CSR (batchmv does, and says so) and casts int64 indices
    # to int32 (said so); the others copy nothing
    assert ("CSC tensor to CSR" in copies[0]) if fmt == "csc" else (not copies or "int64 index" in copies[0])
    assert len(copies) == (fmt == "csc") + (index == "int64")
    y = batchmv.matvec(A, x, axis=0)
    assert isinstance(y, torch.Tensor)
    support.assert_matvec_close(y, support.reference(values, x, 0), support.magnitude(values, x, 0), N, "float64")
    shared = batchmv.prepare(A, backend="torch")._shared
    compressed = fmt in ("csr", "bsr")
    first = shared.crow_indices() if compressed else shared.ccol_indices()
    second = shared.col_indices() if compressed else shared.row_indices()
    assert first.data_ptr() == data_ptr(A.indptr) and second.data_ptr() == data_ptr(A.indices)
    assert shared.values().data_ptr() == data_ptr(A.data) and str(first.dtype) == f"torch.{index}"
    # positive control: the same comparison fails on a copy of the arrays
    copied = batchmv.prepare(make(values, fmt, index).copy(), backend="torch")._shared
    assert copied.values().data_ptr() != data_ptr(A.data)


def test_scipy_coo_to_torch_stacks_its_indices_a_reported_copy(rng):
    import torch

    values = dense(rng, "float64")
    A = make(values, "coo", "int32")
    x = torch.randn(4, N, dtype=torch.float64)
    copies = batchmv.plan(A, x).copies  # scipy does not know that its entries are sorted: torch coalesces them
    assert len(copies) == 2 and "int32 indices stacked" in copies[0] and "uncoalesced" in copies[1]
    A.sum_duplicates()  # (in place: sorted, and marked so)
    copies = batchmv.plan(A, x).copies
    assert len(copies) == 1 and "int32 indices stacked" in copies[0]
    with pytest.raises(batchmv.CopyRequiredError, match="stacked"):
        batchmv.matvec(A, x, copy=False)
    shared = batchmv.prepare(A, backend="torch")._shared
    assert shared._values().data_ptr() == data_ptr(A.data)  # the values still shared
    assert shared._indices().data_ptr() not in (data_ptr(A.row), data_ptr(A.col))
    support.assert_matvec_close(batchmv.matvec(A, x), support.reference(values, x, -1), support.magnitude(values, x, -1), N, "float64")


@pytest.mark.parametrize("fmt", ["coo", "csr", "csc", "bsr"])
def test_torch_a_with_numpy_x_shares_its_arrays(rng, fmt):
    values = dense(rng, "float64")
    A = to_torch(values, fmt)
    x = rng.standard_normal((N, 3))
    assert batchmv.plan(A, x, axis=0).copies == ()
    y = batchmv.matvec(A, x, axis=0)
    assert type(y) is np.ndarray
    check(y, values, x, 0, "float64")
    shared = batchmv.prepare(A, backend="numpy")._shared
    assert shared.format == fmt
    stored = A._values() if fmt == "coo" else A.values()
    assert data_ptr(shared.data) == stored.data_ptr()
    assert not np.shares_memory(batchmv.prepare(A.clone(), backend="numpy")._shared.data, shared.data)  # positive control


def test_a_torch_a_that_requires_grad_stays_in_torch(rng):
    import torch

    S = torch.from_numpy(dense(rng, "float64")).to_sparse_csr().requires_grad_()
    with pytest.raises(TypeError, match="requires grad"):
        batchmv.matvec(S, np.ones(N))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert batchmv.matvec(S, torch.ones(N, dtype=torch.float64)).requires_grad


def test_sparse_calls_are_remembered_per_layout(rng):
    """A sparse A is remembered by its layout (format, shape, dtype), never by its values:
    new tensors of the same layout take the remembered kernel and give their own results."""
    import torch

    from batchmv import _cache

    x = torch.randn(4, N, dtype=torch.float64)
    before = len(_cache.calls)
    for _ in range(3):
        values = dense(rng, "float64")
        for fmt in ("coo", "csr"):
            y = batchmv.matvec(to_torch(values, fmt), x)
            support.assert_matvec_close(y, support.reference(values, x, -1), support.magnitude(values, x, -1), N, "float64")
    assert len(_cache.calls) == before + 2  # one per format
    batchmv.matvec(torch.from_numpy(values).to_sparse_bsr((2, 2)), x)  # positive control: a new layout
    assert len(_cache.calls) == before + 3


def test_prepared_torch_operator_and_transform_refusal(rng):
    import torch

    values = dense(rng, "complex128")
    op = batchmv.prepare(to_torch(values, "csc"))
    v = torch.from_numpy(support.random_values(rng, (3, M), "complex128"))
    ref = values.conj().T
    support.assert_matvec_close(op.H(v), support.reference(ref, v, -1), support.magnitude(ref, v, -1), M, "complex128")
    assert op.H.plan(v).format.startswith("csr (A^T: a view")
    with pytest.raises(TypeError, match="transform"):
        torch.func.vmap(lambda row: op(row))(torch.ones(3, N, dtype=torch.complex128))


def test_a_prepared_scipy_operator_takes_torch_vectors(rng):
    import torch

    values = dense(rng, "float64")
    op = batchmv.prepare(make(values, "csr"))  # the numpy engine: scipy computes, torch gets the result
    x = torch.randn(N, 3, dtype=torch.float64)
    y = op(x, axis=0)
    assert isinstance(y, torch.Tensor)
    support.assert_matvec_close(y, support.reference(values, x, 0), support.magnitude(values, x, 0), N, "float64")
    assert op.plan(x, axis=0).backend == "numpy"
