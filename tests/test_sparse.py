"""scipy.sparse A with dense numpy x: formats x sparray/spmatrix x dtypes x index dtypes x
ops x axes x batch shapes against a float64 dense reference, the awkward matrices (COO
duplicates and unsorted indices, empty rows, nnz = 0, explicit zeros), what the plan says
and what a call really allocates (tracemalloc, with positive controls), copy=False, the
prepared operator and SciPy's solvers."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import batchmv
import support

sp = pytest.importorskip("scipy.sparse")
splinalg = pytest.importorskip("scipy.sparse.linalg")

M, N = 6, 8  # (divisible by the 2 x 2 blocks of bsr)
FORMATS = ("csr", "csc", "coo", "bsr")
DTYPES = ("float32", "float64", "complex64", "complex128")
#: (x shape, axis): vectors in rows, in columns, in the middle, one vector, several batch axes, none
LAYOUTS = (((5, N), -1), ((N, 5), 0), ((3, N, 4), 1), ((N,), 0), ((2, 3, N), -1), ((N, 2, 3), 0), ((0, N), -1))


def dense(rng: np.random.Generator, dtype: str, shape=(M, N), density=0.4) -> np.ndarray:
    """A dense matrix of ``dtype`` values with about ``density`` of them nonzero, one row empty."""
    values = support.random_values(rng, shape, dtype)
    values[rng.random(shape) > density] = 0
    values[1] = 0  # an empty row
    return values


def make(values: np.ndarray, fmt: str, index: str = "int32", kind: str = "sparray"):
    """``values`` as a scipy.sparse matrix of format ``fmt`` whose index arrays have dtype ``index``."""
    csr = sp.csr_array(values)
    if fmt == "coo":
        coo = csr.tocoo()
        built = sp.coo_array((coo.data, (coo.row.astype(index), coo.col.astype(index))), shape=values.shape)
    elif fmt == "bsr":
        bsr = csr.tobsr(blocksize=(2, 2))
        built = sp.bsr_array((bsr.data, bsr.indices.astype(index), bsr.indptr.astype(index)), shape=values.shape)
    else:
        c = csr if fmt == "csr" else csr.tocsc()
        built = type(c)((c.data, c.indices.astype(index), c.indptr.astype(index)), shape=values.shape)
    return built if kind == "sparray" else {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "coo": sp.coo_matrix, "bsr": sp.bsr_matrix}[fmt](built)


def op_of(values: np.ndarray, op: str) -> np.ndarray:
    return {"N": values, "T": values.T, "H": values.conj().T}[op]


def stored(values: np.ndarray, fmt: str) -> int:
    """Entries a matrix built by :func:`make` stores: its nonzeros; bsr: every entry of a 2 x 2 block with a nonzero."""
    if fmt != "bsr":
        return int(np.count_nonzero(values))
    blocks = values.reshape(M // 2, 2, N // 2, 2).transpose(0, 2, 1, 3).reshape(M // 2, N // 2, 4)
    return 4 * int(np.count_nonzero(np.abs(blocks).sum(axis=-1)))


def check(y, values: np.ndarray, x: np.ndarray, axis: int, dtype: str) -> None:
    assert type(y) is np.ndarray
    assert y.dtype == np.dtype(dtype)
    support.assert_matvec_close(y, support.reference(values, x, axis), support.magnitude(values, x, axis), values.shape[1], dtype)


@pytest.mark.parametrize("kind", ["sparray", "spmatrix"])
@pytest.mark.parametrize("index", ["int32", "int64"])
@pytest.mark.parametrize("op", ["N", "T", "H"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_formats_dtypes_ops_axes(rng, fmt, dtype, op, index, kind):
    values = dense(rng, dtype)
    A = make(values, fmt, index, kind)
    before = A.copy()
    for shape, axis in LAYOUTS:
        shape = tuple(M if s == N and op != "N" else s for s in shape)  # op(A) is (N, M)
        x = support.random_values(rng, shape, dtype)
        y = batchmv.matvec(A, x, axis=axis, op=op)
        check(y, op_of(values, op), x, axis, dtype)
        p = batchmv.plan(A, x, axis=axis, op=op)
        assert (p.kernel, p.nnz, p.index_dtype) == ("spmm", stored(values, fmt), index)
        assert p.flops == 2 * p.nnz * (x.size // shape[axis])
    assert (A != before).nnz == 0 and A.format == fmt  # A is never written (the adjoint conjugates x and y)


def test_the_formats_scipy_multiplies_are_computed_as_they_are(rng):
    values = dense(rng, "float64")
    x = rng.standard_normal((N, 3))
    for fmt in FORMATS:
        p = batchmv.plan(make(values, fmt), x, axis=0)
        assert p.format == fmt and p.copies == ()
    # the transpose of csr is csc on the same arrays (and back); coo stays coo; bsr is copied
    xt = rng.standard_normal((M, 3))
    assert batchmv.plan(make(values, "csr"), xt, axis=0, op="T").format.startswith("csc (A^T: a view")
    assert batchmv.plan(make(values, "csc"), xt, axis=0, op="H").format.startswith("csr (A^T: a view")
    assert batchmv.plan(make(values, "coo"), xt, axis=0, op="T").copies == ()
    bsr_t = batchmv.plan(make(values, "bsr"), xt, axis=0, op="T")
    assert [c for c in bsr_t.copies if c.startswith("A: scipy builds the transpose of a bsr")]


@pytest.mark.parametrize("fmt", ["dia", "lil", "dok"])
def test_other_formats_are_converted_and_reported(rng, fmt):
    values = dense(rng, "float64")
    A = sp.csr_array(values).asformat(fmt)
    x = rng.standard_normal((N, 4))
    p = batchmv.plan(A, x, axis=0)
    assert p.format == "csr" and any(f"the {fmt} format" in c for c in p.copies)
    check(batchmv.matvec(A, x, axis=0), values, x, 0, "float64")
    with pytest.raises(batchmv.CopyRequiredError, match=fmt):
        batchmv.matvec(A, x, axis=0, copy=False)


def test_coo_duplicates_and_unsorted_indices_are_summed(rng):
    row = np.array([3, 0, 3, 5, 0, 3, 2], dtype=np.int32)
    col = np.array([1, 7, 1, 0, 7, 1, 4], dtype=np.int32)
    data = rng.standard_normal(7)
    A = sp.coo_array((data, (row, col)), shape=(M, N))
    assert not A.has_canonical_format
    values = np.zeros((M, N))
    np.add.at(values, (row, col), data)  # the meaning of duplicate entries: their sum
    x = rng.standard_normal((4, N))
    check(batchmv.matvec(A, x), values, x, -1, "float64")
    assert batchmv.plan(A, x).nnz == 7  # stored entries, duplicates included
    xt = rng.standard_normal((4, M))
    check(batchmv.matvec(A, xt, op="T"), values.T, xt, -1, "float64")


def test_nnz_zero_and_explicit_zeros(rng):
    empty = sp.csr_array((M, N))
    x = rng.standard_normal((N, 3))
    y = batchmv.matvec(empty, x, axis=0)
    assert y.shape == (M, 3) and not y.any()
    assert batchmv.plan(empty, x, axis=0).flops == 0
    data = np.array([0.0, 2.0, 0.0])  # two explicit zeros: stored, multiplied, counted
    A = sp.csr_array((data, np.array([0, 3, 5]), np.array([0, 1, 1, 3, 3, 3, 3])), shape=(M, N))
    assert A.nnz == 3
    check(batchmv.matvec(A, x, axis=0), A.toarray(), x, 0, "float64")
    assert batchmv.plan(A, x, axis=0).nnz == 3


def test_mixed_dtypes_follow_numpy_and_cast_a_copy_of_a(rng):
    values = dense(rng, "float32")
    A = make(values, "csr")
    x = rng.standard_normal((N, 3))  # float64
    y = batchmv.matvec(A, x, axis=0)
    check(y, values, x, 0, "float64")
    p = batchmv.plan(A, x, axis=0)
    assert p.dtype == "float64" and any(c.startswith("A: values cast from float32 to the result dtype float64") for c in p.copies)
    with pytest.raises(batchmv.CopyRequiredError, match="cast"):
        batchmv.matvec(A, x, axis=0, copy=False)
    with pytest.raises(TypeError, match="float32, float64, complex64 and complex128"):
        batchmv.matvec(sp.csr_array(np.eye(3, dtype=np.int64)), np.ones(3, dtype=np.int64))


# -- copies: what the plan says, and what a call allocates --------------------------------
def peak_bytes(fn) -> int:
    """The most memory (tracked by tracemalloc: numpy's buffers) held at once during ``fn()``, beyond what was held before."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        result = fn()
        return tracemalloc.get_traced_memory()[1] - start, result
    finally:
        tracemalloc.stop()


def test_no_copy_of_a_or_x_when_the_plan_lists_none(rng):
    n, k = 4000, 4
    A = sp.random_array((n, n), density=0.02, format="csr", rng=rng)  # 320k entries: 3.8 MB of arrays
    a_bytes = A.data.nbytes + A.indices.nbytes
    y_bytes = n * k * 8
    x = rng.standard_normal((n, k))  # vectors in columns, C order: the product reads x in place
    assert batchmv.plan(A, x, axis=0).copies == ()
    batchmv.matvec(A, x, axis=0)  # (first calls load modules, whose allocations would count)
    used, y = peak_bytes(lambda: batchmv.matvec(A, x, axis=0))
    assert y_bytes <= used < y_bytes + 16_384, used
    # positive controls: the same measurement sees a copy of x, and a copy of A
    rows = np.ascontiguousarray(x.T)  # vectors in rows: scipy reads only columns of C order
    assert batchmv.plan(A, rows).copies[0].startswith("x: copied")
    used_rows, _ = peak_bytes(lambda: batchmv.matvec(A, rows))
    assert used_rows >= y_bytes + rows.nbytes
    single = sp.csr_array(A, dtype=np.float32)
    used_cast, _ = peak_bytes(lambda: batchmv.matvec(single, x, axis=0))
    assert used_cast >= y_bytes + single.data.nbytes * 2  # its values, cast to float64
    assert used_cast > a_bytes / 2


def strided(v: np.ndarray) -> np.ndarray:
    """``v``'s values in a view of every other entry of a buffer twice as long (not C-contiguous)."""
    buffer = np.zeros((2 * v.shape[0], *v.shape[1:]), v.dtype)
    buffer[::2] = v
    return buffer[::2]


#: A's arrays as sparsetools would copy or cast them: (format, how A is changed)
ARRAY_CASES = (
    ("csr", lambda A: setattr(A, "indices", strided(A.indices))),
    ("csc", lambda A: setattr(A, "data", strided(A.data))),
    ("bsr", lambda A: setattr(A, "data", strided(A.data))),
    ("coo", lambda A: setattr(A, "coords", (strided(A.coords[0]), A.coords[1]))),
    ("csr", lambda A: setattr(A, "indices", A.indices.astype(A.indices.dtype.newbyteorder()))),
    ("csc", lambda A: setattr(A, "indptr", A.indptr.astype(np.int64))),  # index arrays of two dtypes
)


@pytest.mark.parametrize("case", range(len(ARRAY_CASES)))
def test_arrays_sparsetools_copies_are_reported(rng, case):
    """sparsetools copies every array of A that is not C-contiguous in native byte order,
    and casts index arrays of two dtypes to one: the plan reports each as a copy of A,
    copy=False refuses it, tracemalloc sees it (a remembered call of a contiguous A too,
    which the changed A does not take), and the same A with contiguous arrays copies nothing."""
    fmt, change = ARRAY_CASES[case]
    n, k = 3000, 2
    plain = sp.random_array((n, n), density=0.02, format="csr", rng=rng).asformat(fmt)
    if fmt == "bsr":
        plain = sp.random_array((n, n), density=0.02, format="csr", rng=rng).tobsr((2, 2))
    changed = plain.copy()
    change(changed)
    x = rng.standard_normal((n, k))
    y_bytes = n * k * 8
    smallest = min(a.nbytes for a in (plain.data, *(plain.coords if fmt == "coo" else (plain.indices,))))
    assert batchmv.plan(plain, x, axis=0).copies == ()
    batchmv.matvec(plain, x, axis=0, copy=False)  # (remembered)
    used_plain, y = peak_bytes(lambda: batchmv.matvec(plain, x, axis=0))
    assert used_plain < y_bytes + 16_384 < smallest
    copies = batchmv.plan(changed, x, axis=0).copies
    assert len(copies) == 1 and copies[0].startswith("A: scipy"), copies
    with pytest.raises(batchmv.CopyRequiredError, match="scipy"):
        batchmv.matvec(changed, x, axis=0, copy=False)
    used, y = peak_bytes(lambda: batchmv.matvec(changed, x, axis=0))
    assert used >= y_bytes + smallest / 2, (used, smallest)  # (the copy is real: positive control)
    np.testing.assert_allclose(y, plain @ x, rtol=1e-12)


def test_copy_false(rng):
    values = dense(rng, "complex128")
    A = make(values, "csr")
    cols = support.random_values(rng, (N, 3), "complex128")
    batchmv.matvec(A, cols, axis=0, copy=False)  # nothing to copy
    with pytest.raises(batchmv.CopyRequiredError, match="x: copied"):
        batchmv.matvec(A, np.ascontiguousarray(cols.T), copy=False)
    xt = support.random_values(rng, (M, 3), "complex128")
    with pytest.raises(batchmv.CopyRequiredError, match="temporary.*conjugated"):
        batchmv.matvec(A, xt, axis=0, op="H", copy=False)  # conj(x): a temporary the size of x
    p = batchmv.plan(A, xt, axis=0, op="H")
    assert p.copies == () and len(p.temporaries) == 2
    with pytest.raises(batchmv.CopyRequiredError, match="bsr"):
        batchmv.matvec(make(values, "bsr"), xt, axis=0, op="T", copy=False)


def test_out(rng):
    values = dense(rng, "float64")
    x = rng.standard_normal((N, 3))
    out = np.empty((M, 3))
    assert batchmv.matvec(make(values, "csr"), x, axis=0, out=out) is out
    check(out, values, x, 0, "float64")
    assert any(c.startswith("out:") for c in batchmv.plan(make(values, "csr"), x, axis=0, out=out).copies)
    with pytest.raises(ValueError, match="shape"):
        batchmv.matvec(make(values, "csr"), x, axis=0, out=np.empty((M, 4)))


def test_bad_input_is_refused_clearly(rng):
    A = make(dense(rng, "float64"), "csr")
    with pytest.raises(ValueError, match="axis"):
        batchmv.matvec(A, np.ones((3, M)))
    with pytest.raises(TypeError, match="x must be dense.*scipy sparse matrix"):
        batchmv.matvec(A, sp.csr_array(np.ones((N, 2))), axis=0)
    with pytest.raises(TypeError, match="x must be dense"):
        batchmv.matvec(np.ones((M, N)), sp.csr_array(np.ones((N, 2))), axis=0)
    with pytest.raises(ValueError, match="2-D"):
        batchmv.matvec(sp.coo_array(np.ones(N)), np.ones(N))
    if "jax" in support.testable():
        with pytest.raises(TypeError, match="the jax engine cannot take a scipy sparse A"):
            batchmv.matvec(A, np.ones(N), backend="jax")


def test_sequences_and_other_engines_for_a_numpy_x(rng):
    values = dense(rng, "float64")
    y = batchmv.matvec(make(values, "csr"), [1.0] * N)
    assert type(y) is np.ndarray
    check(y, values, np.ones(N), 0, "float64")


# -- the prepared operator ----------------------------------------------------------------
def test_prepare_transpose_adjoint_and_linear_operator(rng):
    values = dense(rng, "complex128")
    op = batchmv.prepare(make(values, "csr"))
    assert op.shape == (M, N) and op.H.shape == (N, M) and op.H.H is op
    x = support.random_values(rng, (N, 2), "complex128")
    check(op(x, axis=0), values, x, 0, "complex128")
    check(op.matmat(x), values, x, 0, "complex128")
    v = support.random_values(rng, (M,), "complex128")
    check(op.rmatvec(v), values.conj().T, v, 0, "complex128")
    check(op.T @ v, values.T, v, 0, "complex128")
    assert op.plan(x, axis=0).kernel == "spmm"
    with pytest.raises(ValueError, match="fastest"):
        batchmv.prepare(make(values, "csr"), backend="fastest")


def test_scipy_solvers_take_the_operator(rng):
    n = 60
    B = sp.random_array((n, n), density=0.05, format="csr", rng=rng)
    A = (B @ B.T + sp.eye_array(n) * n).tocsr()  # symmetric positive definite
    b = rng.standard_normal(n)
    solution, info = splinalg.cg(batchmv.prepare(A).aslinearoperator(), b, rtol=1e-12)
    assert info == 0
    np.testing.assert_allclose(solution, np.linalg.solve(A.toarray(), b), rtol=1e-8, atol=1e-10)
    solution, info = splinalg.gmres(batchmv.prepare(A), b, rtol=1e-12)
    np.testing.assert_allclose(solution, np.linalg.solve(A.toarray(), b), rtol=1e-6, atol=1e-8)


def test_fastest_takes_the_home_engine_and_says_so(rng):
    A = make(dense(rng, "float64"), "csr")
    x = rng.standard_normal((N, 2))
    p = batchmv.plan(A, x, axis=0, backend="fastest")
    assert p.backend == "numpy" and any("measures no engines for a sparse A" in n for n in p.notes)
    check(batchmv.matvec(A, x, axis=0, backend="fastest"), A.toarray(), x, 0, "float64")
