"""Remembered calls with a sparse A: a repeated call whose A and x have the same layouts
skips the checks (``_call.build``) and runs the library's kernel on A's arrays as they are
at that call; new values, in-place changes of A's values, and changes of A's layout (a new
key) all give the right result.  Against float64/complex128 dense references."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

import batchmv
import support
from batchmv import _cache
from test_sparse import M, N, dense, make, op_of, strided

sp = pytest.importorskip("scipy.sparse")

#: (x shape, axis) with N standing for op(A)'s second dimension: rows, one vector, columns,
#: the middle axis, one vector with a batch axis
LAYOUTS = (((5, N), -1), ((N,), 0), ((N, 3), 0), ((2, N, 3), 1), ((1, N), -1))
CASES = [("scipy", f) for f in ("csr", "csc", "coo", "bsr")] + [("torch", f) for f in ("csr", "csc", "coo", "bsr")] + [
    ("jax", f) for f in ("bcoo", "bcsr")
]


def build(lib: str, values: np.ndarray, fmt: str):
    """``values`` as a sparse matrix of ``lib`` in format ``fmt``."""
    if lib == "scipy":
        return make(values, fmt)
    if lib == "torch":  # (int32 indices: torch's CSR product casts int64 ones, a reported copy)
        pytest.importorskip("torch")
        from test_sparse_torch import to_torch

        return to_torch(values, fmt, "int32").coalesce() if fmt == "coo" else to_torch(values, fmt, "int32")
    support.need("jax")
    import jax.numpy as jnp
    from jax.experimental import sparse as jsparse

    return {"bcoo": jsparse.BCOO, "bcsr": jsparse.BCSR}[fmt].fromdense(jnp.asarray(values))


def to_lib(lib: str, x: np.ndarray):
    return support.to_lib(x, {"scipy": "numpy"}.get(lib, lib))


def shape_for(shape: tuple[int, ...], op: str) -> tuple[int, ...]:
    return tuple(M if s == N and op != "N" else s for s in shape)


def a_copied(A, x, axis: int, op: str) -> bool:
    """Whether the call converts A (a reported copy of A): such calls are built every time."""
    return any(c.startswith("A:") for c in batchmv.plan(A, x, axis=axis, op=op).copies)


@pytest.mark.parametrize("op", ["N", "T", "H"])
@pytest.mark.parametrize("lib, fmt", CASES)
def test_repeated_calls_skip_the_checks_and_read_new_values(rng, builds, lib, fmt, op):
    dtype = "float32" if lib == "jax" else "complex128"  # (jax without x64: float32)
    for shape, axis in LAYOUTS:
        shape = shape_for(shape, op)
        before = builds[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (torch's beta warnings for compressed layouts)
            pattern = dense(rng, dtype) != 0
            for _ in range(3):  # new A (another object, other values, same layout and nnz) and new x each time
                values = np.where(pattern, support.random_values(rng, pattern.shape, dtype), 0)
                A, x64 = build(lib, values, fmt), support.random_values(rng, shape, dtype)
                x = to_lib(lib, x64)
                y = batchmv.matvec(A, x, axis=axis, op=op)
                support.assert_matvec_close(
                    y, support.reference(op_of(values, op), x64, axis), support.magnitude(op_of(values, op), x64, axis), N, dtype
                )
            checked = builds[0] - before
            converted = a_copied(A, x, axis, op)
        # remembered from the first call on, unless every call converts A (then checked each time)
        assert checked == (3 if converted else 1), (shape, axis, converted)


def test_the_scipy_run_is_sparsetools_on_the_arrays_as_they_are(rng, monkeypatch):
    """A remembered scipy call runs the sparsetools kernel itself, not scipy's ``A @ X``, on
    A's arrays at that call: values changed in place (``A.data *= 2``) are read."""
    values = dense(rng, "float64")
    A = make(values, "csr")
    x, xs = rng.standard_normal((4, N)), rng.standard_normal(N)
    batchmv.matvec(A, x), batchmv.matvec(A, xs)  # remembered

    def refuse(*args, **kwargs):
        raise AssertionError("scipy's product ran")

    monkeypatch.setattr(type(A), "_matmul_multivector", refuse)
    monkeypatch.setattr(type(A), "_matmul_vector", refuse)
    A.data *= 2
    for v in (x, xs):
        y = batchmv.matvec(A, v)
        support.assert_matvec_close(y, support.reference(2 * values, v, -1), support.magnitude(2 * values, v, -1), N, "float64")
    # positive control: a call with out= is never remembered: it runs scipy's product, refused here
    with pytest.raises(AssertionError, match="scipy's product ran"):
        batchmv.matvec(A, x, out=np.empty((4, M)))


@pytest.mark.parametrize("fmt", ["csr", "coo"])
def test_a_scipy_A_reshaped_or_pruned_in_place_is_checked_again(rng, builds, fmt):
    """Changes of A's layout in place (``resize``, ``sum_duplicates`` of a COO A) make a new
    key: the call is checked again, nothing reads past the arrays, the result is right."""
    values = dense(rng, "float64")
    A = make(values, fmt)
    x = rng.standard_normal((3, N))
    batchmv.matvec(A, x)
    before = builds[0]
    A.resize((M - 2, N))  # drops the last rows, in place
    y = batchmv.matvec(A, x)
    assert builds[0] == before + 1
    support.assert_matvec_close(y, support.reference(values[: M - 2], x, -1), support.magnitude(values[: M - 2], x, -1), N, "float64")
    if fmt == "coo":  # duplicates summed in place: fewer stored entries, read by the remembered run
        B = sp.coo_array((np.ones(4), ([0, 0, 1, 1], [2, 2, 3, 3])), shape=(M, N))
        ref = B.toarray()
        batchmv.matvec(B, x)
        B.sum_duplicates()
        assert B.nnz == 2
        support.assert_matvec_close(batchmv.matvec(B, x), support.reference(ref, x, -1), support.magnitude(ref, x, -1), N, "float64")


@pytest.mark.parametrize("lib, fmt", [("scipy", "csr"), ("scipy", "coo"), ("torch", "csr"), ("jax", "bcoo")])
def test_a_prepared_sparse_operator_remembers_and_rechecks(rng, builds, lib, fmt):
    dtype = "float32" if lib == "jax" else "float64"
    values = dense(rng, dtype)
    A = build(lib, values, fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        op = batchmv.prepare(A)
        before = builds[0]
        for operator, matrix in ((op, values), (op.H, values.conj().T), (op, values), (op.H, values.conj().T)):
            x64 = support.random_values(rng, (matrix.shape[1], 4), dtype)
            y = operator(to_lib(lib, x64), axis=0)
            support.assert_matvec_close(y, support.reference(matrix, x64, 0), support.magnitude(matrix, x64, 0), N, dtype)
        checked = builds[0] - before
        converted = [a_copied(A, to_lib(lib, support.random_values(rng, (s, 4), dtype)), 0, o) for s, o in ((N, "N"), (M, "H"))]
    # one build per op, the repeats remembered; an op that converts A (torch's CSR^H) is built every time
    assert checked == sum(4 // 2 if c else 1 for c in converted)
    if lib == "scipy":  # A's layout changed in place: a new key, checked again
        before = builds[0]
        A.resize((M - 2, N))
        x = rng.standard_normal((4, N))
        y = op(x)
        assert builds[0] - before == 1
        support.assert_matvec_close(y, support.reference(values[: M - 2], x, -1), support.magnitude(values[: M - 2], x, -1), N, dtype)


def test_torch_autograd_through_a_remembered_run(rng):
    """A call remembered without grad, repeated with a sparse A and x that require grad,
    keeps the graph: the gradients are torch's dense ones."""
    torch = pytest.importorskip("torch")
    values = dense(rng, "float64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for shape in ((N,), (3, N)):
            A = torch.from_numpy(values).to_sparse_csr()
            batchmv.matvec(A, torch.ones(shape, dtype=torch.float64))  # remembered without grad
            A.requires_grad_(True)
            x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
            y = batchmv.matvec(A, x)
            assert y.requires_grad
            y.sum().backward()
            dense_a = torch.from_numpy(values).requires_grad_(True)
            x2 = x.detach().clone().requires_grad_(True)
            (x2 @ dense_a.T).sum().backward()
            torch.testing.assert_close(x.grad, x2.grad)
            torch.testing.assert_close(A.grad.to_dense(), dense_a.grad)


def test_a_scipy_subclass_keeps_its_own_product(rng):
    """The sparsetools kernels are called directly for scipy's own classes only: a subclass
    that overrides the product gets it, on the first call and on a remembered one."""

    class Doubled(sp.csr_array):
        def _matmul_vector(self, other):
            return 2 * super()._matmul_vector(other)

        def _matmul_multivector(self, other):
            return 2 * super()._matmul_multivector(other)

    values = dense(rng, "float64")
    A = Doubled(make(values, "csr"))
    for x in (rng.standard_normal(N), rng.standard_normal(N), rng.standard_normal((N, 3)), rng.standard_normal((N, 3))):
        np.testing.assert_allclose(batchmv.matvec(A, x, axis=0), A @ x, rtol=1e-14)
        np.testing.assert_allclose(A @ x, 2 * (values @ x), rtol=1e-14)  # (the override is there to see)


def variants(lib: str, values: np.ndarray) -> list:
    """Sparse matrices of ``values`` (same shape, same dtype) that differ in everything else
    a call's plan may depend on: format, index dtypes, blocks, COO's coalesced state,
    scipy's array or matrix class, jax's sorted-indices flag."""
    if lib == "scipy":
        out = [make(values, f, i, k) for f in ("csr", "csc", "coo", "bsr") for i in ("int32", "int64") for k in ("sparray", "spmatrix")]
        c = sp.csr_array(values)  # index arrays of two dtypes; arrays sparsetools copies (strided, byte-swapped)
        mixed = sp.csr_array((c.data, c.indices.astype("int32"), c.indptr.astype("int64")), shape=values.shape)
        swapped = sp.csr_array((c.data, c.indices.astype(">i4"), c.indptr.astype("int32")), shape=values.shape)
        return [*out, mixed, swapped, sp.csr_array((strided(c.data), c.indices, c.indptr), shape=values.shape),
                sp.coo_array((c.tocoo().data, (strided(c.tocoo().row), c.tocoo().col)), shape=values.shape)]
    if lib == "torch":
        import torch
        from test_sparse_torch import to_torch

        out = [to_torch(values, f, i) for f in ("csr", "csc", "bsr", "bsc") for i in ("int32", "int64")]
        t, coo = torch.from_numpy(values), torch.from_numpy(values).to_sparse()
        not_coalesced = torch.sparse_coo_tensor(coo.indices(), coo.values(), coo.shape)
        from test_sparse_torch import with_strided_values

        strided_values = [with_strided_values(to_torch(values, f, "int32")) for f in ("csr", "csc", "bsr")]
        return [*out, coo, not_coalesced, t.to_sparse_bsr((2, 4)), t.to_sparse_bsc((2, 4)), *strided_values]  # (oblong blocks)
    support.need("jax")
    from jax.experimental import sparse as jsparse

    bcoo = jsparse.BCOO.fromdense(values)
    unsorted = jsparse.BCOO((bcoo.data, bcoo.indices), shape=bcoo.shape, indices_sorted=False, unique_indices=False)
    return [bcoo, unsorted, jsparse.BCSR.fromdense(values)]


@pytest.mark.parametrize("op", ["N", "H"])
@pytest.mark.parametrize("lib", ["scipy", "torch", "jax"])
def test_a_remembered_call_is_taken_only_by_matrices_checked_alike(rng, lib, op):
    """For every ordered pair of matrices of the same values (:func:`variants`), the second,
    called with ``copy=False`` after the first was remembered with it, raises exactly when its
    own plan lists a copy, and otherwise gives the right result: a remembered call is never
    taken by an A whose call the checks would build differently (a torch CSR A with int64
    indices after one with int32 indices ran MKL's index cast, unreported)."""
    dtype = "float32" if lib == "jax" else "complex128"
    values = dense(rng, dtype)
    matrix = op_of(values, op)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        matrices = variants(lib, values)
        for shape, axis in (((4, N), -1), ((N, 3), 0)):
            x64 = support.random_values(rng, shape_for(shape, op), dtype)
            x = to_lib(lib, x64)
            ref, mag = support.reference(matrix, x64, axis), support.magnitude(matrix, x64, axis)
            for first, second in itertools.permutations(matrices, 2):
                _cache.calls._runs.clear()
                try:
                    batchmv.matvec(first, x, axis=axis, op=op, copy=False)
                except batchmv.CopyRequiredError:
                    continue  # (nothing remembered)
                if batchmv.plan(second, x, axis=axis, op=op).copies:
                    with pytest.raises(batchmv.CopyRequiredError):
                        batchmv.matvec(second, x, axis=axis, op=op, copy=False)
                else:
                    y = batchmv.matvec(second, x, axis=axis, op=op, copy=False)
                    support.assert_matvec_close(y, ref, mag, matrix.shape[1], dtype)
