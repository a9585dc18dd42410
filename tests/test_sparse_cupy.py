"""cupyx.scipy.sparse A (csr, csc; coo and dia converted) with cupy x against a float64
dense reference, what the plan says (kernel, format, copies), copy=False, matrices that
are not canonical, and A crossing between cupyx and torch on the GPU.

Every test but the first is marked ``gpu`` and skips without cupy and a CUDA device.
They were written from CuPy's source on a machine with neither, and have not run yet.
"""

from __future__ import annotations

import numpy as np
import pytest

import batchmv
import support
from batchmv import _registry
from test_sparse import LAYOUTS, M, N, dense, op_of

FORMATS = ("csr", "csc", "coo")
DTYPES = ("float32", "float64", "complex64", "complex128")
#: x of shape (3, N, 4) along axis 1: its batch axes cannot be viewed as one in the order the
#: product reads them (see test_batch_axes_that_cannot_be_viewed_as_one_are_copied)
UNVIEWABLE = ((3, N, 4), 1)
GPU_LAYOUTS = tuple(layout for layout in LAYOUTS if layout != UNVIEWABLE)


# =========================================================================================
# without a GPU
# =========================================================================================
def test_registered_and_never_imported_unless_its_matrices_exist():
    spec = _registry.SPARSE["cupy"]
    assert (spec.module, spec.engine, spec.kit) == ("cupyx.scipy.sparse", "cupy", "_sparse_cupy")
    proc = support.run_python(
        """
        import sys, types
        import numpy as np, scipy.sparse as sp
        import batchmv
        from batchmv import _sparse_kits
        A = sp.csr_array(np.eye(3))
        batchmv.matvec(A, np.ones((2, 3)))
        batchmv.plan(np.ones((2, 3)), np.ones(3))
        assert _sparse_kits.library_of_type(np.ndarray) is None and _sparse_kits.library_of_type(list) is None
        assert _sparse_kits.library_of_type(type(A)) == "scipy"
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("cupy", "cupyx", "cupy_backends")
                     or m == "batchmv.backends._sparse_cupy"))
        # the registry's names: CuPy 14 (sparray and spmatrix) and CuPy 13 (spmatrix only)
        fake = types.ModuleType("cupyx.scipy.sparse")
        class spmatrix: pass
        fake.spmatrix = spmatrix
        class csr_matrix(spmatrix): pass
        sys.modules["cupyx.scipy.sparse"] = fake
        assert _sparse_kits.library_of_type(csr_matrix) == "cupy"
        class sparray: pass
        class csr_array(sparray): pass
        fake.sparray = sparray
        assert _sparse_kits.library_of_type(csr_array) == "cupy"
        assert _sparse_kits.library_of_type(float) is None
        print("ok")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[]", "ok"]


# =========================================================================================
# on a GPU
# =========================================================================================
def _cupyx():
    reason = support.skip_reason("cupy")
    if reason:
        pytest.skip(reason if reason.startswith("no CUDA device") else f"no CUDA device for cupy: {reason}")
    import cupy
    import cupyx.scipy.sparse as csp

    return cupy, csp


def _to_cupyx(csp, values: np.ndarray, fmt: str, kind: str = "matrix"):
    """``values`` as a cupyx.scipy.sparse matrix (or CuPy 14's sparse array) of ``fmt``."""
    import scipy.sparse as sp

    if kind == "array" and not hasattr(csp, "csr_array"):
        pytest.skip("this CuPy has no sparse arrays (CuPy 14 added them)")
    host = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "coo": sp.coo_matrix}[fmt](values)
    return getattr(csp, f"{fmt}_{kind}")(host)


def _check(cupy, y, values: np.ndarray, x, axis: int, dtype: str) -> None:
    assert isinstance(y, cupy.ndarray) and y.dtype == np.dtype(dtype)
    x_host = cupy.asnumpy(x)
    support.assert_matvec_close(
        cupy.asnumpy(y), support.reference(values, x_host, axis), support.magnitude(values, x_host, axis), values.shape[1], dtype
    )


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["matrix", "array"])
@pytest.mark.parametrize("op", ["N", "T", "H"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_formats_dtypes_ops_axes(rng, fmt, dtype, op, kind):
    cupy, csp = _cupyx()
    values = dense(rng, dtype)
    A = _to_cupyx(csp, values, fmt, kind)
    for shape, axis in GPU_LAYOUTS:
        shape = tuple(M if s == N and op != "N" else s for s in shape)
        x = cupy.asarray(support.random_values(rng, shape, dtype))
        y = batchmv.matvec(A, x, axis=axis, op=op)
        _check(cupy, y, op_of(values, op), x, axis, dtype)
        p = batchmv.plan(A, x, axis=axis, op=op)
        assert p.kernel == "spmm" and p.backend == "cupy" and p.home == "cupy" and p.nnz == np.count_nonzero(values)
        conversions = [c for c in p.copies if c.startswith("A:")]
        if fmt == "coo":
            assert conversions and "coo format" in conversions[0] and p.format.startswith("csr" if op == "N" else "csc")
        else:
            assert conversions == [], p.copies


@pytest.mark.gpu
def test_the_native_formats_are_multiplied_without_copies(rng):
    cupy, csp = _cupyx()
    values = dense(rng, "float64")
    rows = cupy.asarray(rng.standard_normal((5, N)))  # vectors along the last axis: an F-ordered (n, k) view
    rows_t = cupy.asarray(rng.standard_normal((5, M)))
    for fmt in ("csr", "csc"):
        A = _to_cupyx(csp, values, fmt)
        p = batchmv.plan(A, rows)
        assert (p.kernel, p.format, p.copies) == ("spmm", fmt, ()), p
        pt = batchmv.plan(A, rows_t, op="T")
        assert pt.copies == () and pt.format.startswith(f"{'csc' if fmt == 'csr' else 'csr'} (A^T: a view"), pt
        assert str(p.index_dtype) in ("int32", "int64")
    # vectors in the columns of a C-ordered x: cupyx reads only F order, so x is copied (reported)
    cols = cupy.asarray(rng.standard_normal((N, 5)))
    assert batchmv.plan(_to_cupyx(csp, values, "csr"), cols, axis=0).copies[0].startswith("x: copied")


@pytest.mark.gpu
def test_no_copy_of_a_or_x_by_the_memory_pool(rng):
    """The pool grows by the result and cuSPARSE's workspace only; the positive control (x
    in the layout cupyx copies) grows by at least x."""
    cupy, csp = _cupyx()
    n, k = 20000, 64
    A = csp.random(n, n, density=0.001, format="csr", dtype=np.float64, random_state=1)
    A.sum_duplicates()
    x = cupy.asarray(rng.standard_normal((k, n)))  # vectors along the last axis
    batchmv.matvec(A, x)  # warm-up: cuSPARSE handle, kernels
    data, indices = A.data.data.ptr, A.indices.data.ptr
    y, grown = support.pool_growth(cupy, lambda: batchmv.matvec(A, x))
    assert grown < 0.25 * x.nbytes, f"the pool grew by {grown} B beyond the result ({x.nbytes} B in x)"
    assert (A.data.data.ptr, A.indices.data.ptr) == (data, indices)
    cols = cupy.ascontiguousarray(x.T)  # vectors in the columns of C order: copied
    _, copied = support.pool_growth(cupy, lambda: batchmv.matvec(A, cols, axis=0))
    assert copied >= 0.9 * x.nbytes, "the meter did not see the copy of x"
    expected = (A @ cupy.asfortranarray(x.T)).T  # cupyx's own product (A is 3.2 GB dense)
    assert float(cupy.abs(y - expected).max()) <= 1e-12 * float(cupy.abs(expected).max())


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["dia", "coo"])
def test_formats_without_a_product_are_converted_and_reported(rng, fmt):
    cupy, csp = _cupyx()
    import scipy.sparse as sp

    values = dense(rng, "float64")
    if fmt == "dia":
        host = sp.dia_matrix(values)
        A = csp.dia_matrix((cupy.asarray(host.data), cupy.asarray(host.offsets)), shape=values.shape)
    else:
        A = _to_cupyx(csp, values, "coo")
    x = cupy.asarray(rng.standard_normal((4, N)))
    p = batchmv.plan(A, x)
    assert p.format == "csr" and any(f"the {fmt} format" in c for c in p.copies), p.copies
    _check(cupy, batchmv.matvec(A, x), values, x, -1, "float64")
    with pytest.raises(batchmv.CopyRequiredError, match=fmt):
        batchmv.matvec(A, x, copy=False)


@pytest.mark.gpu
def test_a_matrix_that_is_not_canonical_is_summed_on_a_copy(rng):
    """cupyx's own product would sort and sum A in place; batchmv leaves A as given."""
    cupy, csp = _cupyx()
    indptr = cupy.asarray(np.array([0, 3, 3, 5, 6, 6, 7], dtype=np.int32))
    indices = cupy.asarray(np.array([7, 1, 7, 4, 2, 0, 5], dtype=np.int32))  # row 0: unsorted, 7 twice
    data = cupy.asarray(rng.standard_normal(7))
    A = csp.csr_matrix((data, indices, indptr), shape=(M, N))
    values = np.zeros((M, N))
    rows = np.repeat(np.arange(M), np.diff(cupy.asnumpy(indptr)))
    np.add.at(values, (rows, cupy.asnumpy(indices)), cupy.asnumpy(data))
    x = cupy.asarray(rng.standard_normal((3, N)))
    p = batchmv.plan(A, x)
    assert any("not canonical" in c for c in p.copies) and p.nnz == 7, p.copies
    before = cupy.asnumpy(A.indices).copy()
    _check(cupy, batchmv.matvec(A, x), values, x, -1, "float64")
    xt = cupy.asarray(rng.standard_normal((3, M)))
    _check(cupy, batchmv.matvec(A, xt, op="T"), values.T, xt, -1, "float64")
    assert A.indices.data.ptr == indices.data.ptr and (cupy.asnumpy(A.indices) == before).all()
    with pytest.raises(batchmv.CopyRequiredError, match="not canonical"):
        batchmv.matvec(A, x, copy=False)


@pytest.mark.gpu
def test_copy_false_and_the_adjoint(rng):
    cupy, csp = _cupyx()
    values = dense(rng, "complex128")
    A = _to_cupyx(csp, values, "csr")
    rows = cupy.asarray(support.random_values(rng, (3, N), "complex128"))
    batchmv.matvec(A, rows, copy=False)  # nothing to copy
    with pytest.raises(batchmv.CopyRequiredError, match="x: copied"):
        batchmv.matvec(A, cupy.ascontiguousarray(rows.T), axis=0, copy=False)
    xt = cupy.asarray(support.random_values(rng, (3, M), "complex128"))
    with pytest.raises(batchmv.CopyRequiredError, match="temporary.*conjugated"):
        batchmv.matvec(A, xt, op="H", copy=False)
    p = batchmv.plan(A, xt, op="H")
    assert p.copies == () and len(p.temporaries) == 2
    _check(cupy, batchmv.matvec(A, xt, op="H"), values.conj().T, xt, -1, "complex128")
    op = batchmv.prepare(A)
    _check(cupy, op.H(xt), values.conj().T, xt, -1, "complex128")


@pytest.mark.gpu
def test_refusals(rng):
    cupy, csp = _cupyx()
    A = _to_cupyx(csp, dense(rng, "float64"), "csr")
    with pytest.raises(TypeError, match="x must be dense.*cupy sparse matrix"):
        batchmv.matvec(A, A, axis=0)
    with pytest.raises(TypeError, match="(?i)cuda"):  # a numpy x: A's arrays are not moved to the CPU
        batchmv.matvec(A, np.ones((2, N)))
    with pytest.raises(TypeError, match="float32, float64, complex64 and complex128"):
        batchmv.matvec(A.astype(bool), cupy.ones((2, N), dtype=np.int32))  # an int32 result
    with pytest.raises(ValueError, match="axis"):
        batchmv.matvec(A, cupy.ones((3, M)))


@pytest.mark.gpu
def test_batch_axes_that_cannot_be_viewed_as_one_are_copied(rng):
    cupy, csp = _cupyx()
    values = dense(rng, "float64")
    shape, axis = UNVIEWABLE
    x = cupy.asarray(rng.standard_normal(shape))
    A = _to_cupyx(csp, values, "csr")
    assert batchmv.plan(A, x, axis=axis).copies[0].startswith("x: copied")
    _check(cupy, batchmv.matvec(A, x, axis=axis), values, x, axis, "float64")


@pytest.mark.gpu
@pytest.mark.parametrize("index", ["int32", "int64"])
def test_crossing_with_torch_on_the_gpu_shares_the_arrays(rng, index):
    """A torch CUDA CSR tensor with cupy x (the cupy engine assembles a cupyx matrix on its
    arrays) and a cupyx matrix with a torch CUDA x (torch assembles a tensor on its arrays)."""
    cupy, csp = _cupyx()
    if not support.installed("torch"):
        pytest.skip("torch is not installed")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: torch sees none")
    values = dense(rng, "float64")
    t = torch.from_numpy(values).to_sparse_csr()
    t = torch.sparse_csr_tensor(
        t.crow_indices().to(getattr(torch, index)), t.col_indices().to(getattr(torch, index)), t.values(), t.shape
    ).cuda()
    x = cupy.asarray(rng.standard_normal((3, N)))
    p = batchmv.plan(t, x)
    assert p.backend == "cupy" and p.kernel == "spmm"
    if index == "int32" or hasattr(csp, "csr_array"):  # CuPy 13's matrices hold int32 indices only
        assert p.copies == (), p.copies
    else:
        assert any("cupyx.scipy.sparse copied" in c for c in p.copies), p.copies
    _check(cupy, batchmv.matvec(t, x), values, x, -1, "float64")

    A = _to_cupyx(csp, values, "csr")
    xt = torch.from_numpy(rng.standard_normal((3, N))).cuda()
    p = batchmv.plan(A, xt)
    assert p.backend == "torch" and p.copies == (), p.copies
    y = batchmv.matvec(A, xt)
    assert isinstance(y, torch.Tensor) and y.is_cuda
    support.assert_matvec_close(y, support.reference(values, xt, -1), support.magnitude(values, xt, -1), N, "float64")
