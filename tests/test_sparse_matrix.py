"""The sparse cross-backend matrix (issue 14, point 7): formats x libraries x dtypes x axes x
batch shapes x ops x index dtypes x awkward matrices (COO duplicates and unsorted indices,
empty rows and columns, nnz = 0, explicit zeros) x x's library (scipy A with torch x, torch
A with numpy x), against a float64/complex128 reference computed with numpy from A's
dense matrix (``toarray``/``to_dense``/``todense``, widened), itself checked against the
entries the test chose (:class:`Entries`).

The full product of those factors is some 10^5 cases per library; each library gets a
pairwise covering design instead (:func:`covering`: every pair of levels of any two
factors appears in some case, pairs that cannot meet excepted), and the awkward matrices
get the full product of format x op on top (:func:`test_awkward_matrices`).

Every product is computed twice, with different values of the same layout, through
``matvec`` (the second time with a second A of the same structure and other values) and
through one prepared operator (``prepare(A)``, then ``op(x)``, ``op.T(x)`` or
``op.H(x)``): a remembered fast path must give the second call's own result.  The
existing per-library tests (test_sparse.py, test_sparse_torch.py, test_sparse_jax.py)
cover the full format x dtype x op grid on one ordinary matrix; this module covers what
they leave out (see the audit in the commit that added it).
"""

from __future__ import annotations

import random
from typing import Any, Callable, NamedTuple

import numpy as np
import pytest

import batchmv
import support
from test_sparse import LAYOUTS, M, N, op_of

sp = pytest.importorskip("scipy.sparse")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # (torch: "beta" sparse CSR)

DTYPES = ("float32", "float64", "complex64", "complex128")
INDEX = ("int32", "int64")
OPS = ("N", "T", "H")
#: test_sparse's layouts, a middle axis named from the end, 4-D with a length-1 batch axis, one vector as a column
SHAPES = (*LAYOUTS, ((2, N, 3), -2), ((2, 1, N, 3), 2), ((N, 1), 0))
#: x's memory: C order, the transpose of a C-ordered array (Fortran order), every other element of the
#: last axis, C order with torch's lazy conjugate/negative bit (numpy, jax: C order)
ORDERS = ("C", "F", "step", "lazy")
#: ordinary (empty rows and a column), explicit zeros stored, nnz = 0, duplicates in unsorted order
MATRICES = ("plain", "zeros", "empty", "messy")
SCIPY_FORMATS = ("csr", "csc", "coo", "bsr", "dia", "lil", "dok")
TORCH_FORMATS = ("coo", "csr", "csc", "bsr", "bsc")
JAX_FORMATS = ("bcoo", "bcsr")
#: formats that store duplicates in any order (scipy's CSR/CSC too: its kernels sum them)
MESSY = {"scipy": ("coo", "csr", "csc"), "torch": ("coo",), "jax": ("bcoo",)}


# -- a pairwise covering design --------------------------------------------------------------
def covering(factors: dict[str, tuple], allowed: Callable[[str, Any, str, Any], bool], seed: int) -> list[dict]:
    """Cases (dicts factor -> level) in which every allowed pair of levels of two factors
    appears at least once, and no case holds a pair that is not allowed; greedy (AETG),
    deterministic for one ``seed``."""
    names = list(factors)

    def ok(a: str, va: Any, b: str, vb: Any) -> bool:
        return allowed(a, va, b, vb) and allowed(b, vb, a, va)

    def pair(a: str, va: Any, b: str, vb: Any) -> tuple:
        return (a, va, b, vb) if names.index(a) < names.index(b) else (b, vb, a, va)

    uncovered = {
        (a, va, b, vb)
        for i, a in enumerate(names) for b in names[i + 1:]
        for va in factors[a] for vb in factors[b] if ok(a, va, b, vb)
    }  # fmt: skip
    rnd = random.Random(seed)
    cases = []
    while uncovered:
        pool = sorted(uncovered, key=repr)
        best, best_pairs = None, set()
        for _ in range(12):
            a, va, b, vb = rnd.choice(pool)
            case = {a: va, b: vb}
            rest = [n for n in names if n not in case]
            rnd.shuffle(rest)
            for name in rest:
                levels = [v for v in factors[name] if all(ok(name, v, k, w) for k, w in case.items())]
                if not levels:
                    break
                gain = [sum(pair(name, v, k, w) in uncovered for k, w in case.items()) for v in levels]
                case[name] = rnd.choice([v for v, g in zip(levels, gain) if g == max(gain)])
            else:
                pairs = {pair(p, case[p], q, case[q]) for i, p in enumerate(names) for q in names[i + 1:]}
                if len(pairs & uncovered) > len(best_pairs):
                    best, best_pairs = case, pairs & uncovered
        assert best is not None, "no case can be completed: the constraints contradict each other"
        cases.append({n: best[n] for n in names})
        uncovered -= best_pairs
    return cases


def test_the_covering_design_covers_every_allowed_pair():
    """The design's own check, with a positive control: a dropped case leaves a pair uncovered."""
    factors = {"f": ("a", "b", "c"), "g": (1, 2, 3, 4), "h": ("x", "y"), "k": ("p", "q", "r")}

    def allowed(a, va, b, vb):
        return not (a == "f" and va == "a" and b == "h" and vb == "y")

    cases = covering(factors, allowed, seed=1)
    assert len(cases) < 3 * 4 * 2 * 3
    assert not any(c["f"] == "a" and c["h"] == "y" for c in cases)

    def covered(cs):
        return {(a, c[a], b, c[b]) for c in cs for a in factors for b in factors if a < b}

    wanted = {(a, va, b, vb) for a in factors for b in factors if a < b for va in factors[a] for vb in factors[b]
              if allowed(a, va, b, vb) and allowed(b, vb, a, va)}  # fmt: skip
    assert covered(cases) == wanted
    assert any(covered(cases[:i] + cases[i + 1:]) != wanted for i in range(len(cases)))


# -- matrices: entries chosen here, then built in each format ----------------------------------
class Entries(NamedTuple):
    """A matrix as the entries it stores, in order (duplicates and zeros included)."""

    row: np.ndarray
    col: np.ndarray
    data: np.ndarray  # of A's dtype

    def dense(self, magnitude: bool = False) -> np.ndarray:
        """The matrix these entries mean (duplicates summed) in float64/complex128, by numpy alone."""
        values = support.to_numpy(self.data)
        if magnitude:
            values = np.abs(values)
        out = np.zeros((M, N), dtype=values.dtype)
        np.add.at(out, (self.row, self.col), values)
        return out


def entries(rng: np.random.Generator, matrix: str, dtype: str) -> Entries:
    """``matrix``'s entries: row 1, the last row and column 2 are empty ("zeros": but for
    stored zeros; "messy": with duplicates, in shuffled order)."""
    mask = rng.random((M, N)) < 0.45
    mask[1], mask[-1], mask[:, 2] = False, False, False
    mask[0, 0] = mask[2, 5] = True  # (never all empty)
    if matrix == "empty":
        mask[:] = False
    row, col = np.nonzero(mask)
    data = support.random_values(rng, (row.size,), dtype)
    if matrix == "zeros":  # stored zeros: in row 1 and in column 2, where nothing else is (the last row stays empty)
        row, col = np.append(row, [1, 4, 0]), np.append(col, [6, 2, 2])
        data = np.append(data, np.zeros(3, dtype))
        order = np.lexsort((col, row))
        row, col, data = row[order], col[order], data[order]
    if matrix == "messy":
        dup = rng.choice(row.size, size=5, replace=False)
        row, col = np.append(row, row[dup]), np.append(col, col[dup])
        data = np.append(data, support.random_values(rng, (5,), dtype))
        row, col = np.append(row, [4, 4]), np.append(col, [2, 2])  # a duplicate in the empty column
        data = np.append(data, support.random_values(rng, (2,), dtype))
        order = rng.permutation(row.size)
        row, col, data = row[order], col[order], data[order]
        assert (np.diff(row) < 0).any()  # unsorted
    return Entries(row.astype(np.int64), col.astype(np.int64), data.astype(dtype))


def compressed(e: Entries, by_col: bool, shape: tuple[int, int] = (M, N)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, indices, data) of CSR (CSC: ``by_col``), the entries' order kept within each row."""
    major, minor = (e.col, e.row) if by_col else (e.row, e.col)
    order = np.argsort(major, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(major, minlength=shape[1] if by_col else shape[0]))])
    return indptr, minor[order], e.data[order]


def scipy_matrix(e: Entries, fmt: str, index: str, kind: str = "sparray", block: tuple[int, int] = (2, 2)):
    shape = (M, N)
    if fmt == "coo":
        A = sp.coo_array((e.data, (e.row.astype(index), e.col.astype(index))), shape=shape)
    elif fmt in ("csr", "csc", "bsr"):
        indptr, indices, data = compressed(e, fmt == "csc")
        A = (sp.csc_array if fmt == "csc" else sp.csr_array)((data, indices.astype(index), indptr.astype(index)), shape=shape)
        if fmt == "bsr":
            b = A.tobsr(blocksize=block)
            A = sp.bsr_array((b.data, b.indices.astype(index), b.indptr.astype(index)), shape=shape)
    else:
        A = sp.csr_array((e.data, (e.row, e.col)), shape=shape).asformat(fmt)
    if kind == "spmatrix":
        A = getattr(sp, f"{fmt}_matrix")(A)
    if fmt in ("csr", "csc", "coo", "bsr"):
        assert (A.coords[0] if fmt == "coo" else A.indices).dtype == np.dtype(index)
    if fmt in ("coo", "csr", "csc"):
        assert A.nnz == e.row.size  # duplicates and zeros stored as given
        if len(set(zip(e.row.tolist(), e.col.tolist()))) < e.row.size:  # "messy": not canonical
            assert not (A.has_canonical_format or (fmt != "coo" and A.has_sorted_indices))
    return A


def torch_matrix(e: Entries, fmt: str, index: str, block: tuple[int, int] = (2, 2)):
    import torch

    shape = (M, N)
    if fmt == "coo":
        A = torch.sparse_coo_tensor(torch.from_numpy(np.stack([e.row, e.col])), torch.from_numpy(e.data), shape)
        if not (np.diff(e.row) < 0).any():  # (not "messy": coalesced, stored zeros kept)
            A = A.coalesce()
        assert A._nnz() == e.row.size
        return A

    def t(a: np.ndarray):
        a = torch.from_numpy(np.ascontiguousarray(a))
        return a.to(getattr(torch, index)) if a.dtype in (torch.int32, torch.int64) else a

    if fmt in ("csr", "csc"):
        indptr, indices, data = compressed(e, fmt == "csc")
        maker = torch.sparse_csr_tensor if fmt == "csr" else torch.sparse_csc_tensor
        A = maker(t(indptr), t(indices), t(data), shape)
    else:  # block formats: scipy's blocks of the entries (stored zero blocks kept)
        if fmt == "bsr":
            b = scipy_matrix(e, "bsr", "int64", block=block)
            A = torch.sparse_bsr_tensor(t(b.indptr), t(b.indices), t(b.data), shape)
        else:  # bsc: the blocks of A^T as bsr, each block transposed back
            et = Entries(e.col, e.row, e.data)
            indptr, indices, data = compressed(et, False, (N, M))
            b = sp.csr_array((data, indices, indptr), shape=(N, M)).tobsr(blocksize=block[::-1])
            A = torch.sparse_bsc_tensor(t(b.indptr), t(b.indices), t(b.data.transpose(0, 2, 1)), shape)
    first = A.crow_indices() if fmt in ("csr", "bsr") else A.ccol_indices()
    assert first.dtype == getattr(torch, index)
    return A


def jax_matrix(e: Entries, fmt: str, index: str):
    import jax.numpy as jnp
    from jax.experimental import sparse

    if fmt == "bcoo":
        A = sparse.BCOO((jnp.asarray(e.data), jnp.asarray(np.stack([e.row, e.col], 1).astype(index))), shape=(M, N))
    else:
        indptr, indices, data = compressed(e, False)
        A = sparse.BCSR((jnp.asarray(data), jnp.asarray(indices.astype(index)), jnp.asarray(indptr.astype(index))), shape=(M, N))
    assert A.indices.dtype == np.dtype(index) and A.nse == e.row.size
    return A


def build(lib: str, e: Entries, case: dict):
    if lib == "scipy":
        return scipy_matrix(e, case["fmt"], case["index"], case.get("kind", "sparray"), case.get("block", (2, 2)))
    if lib == "torch":
        return torch_matrix(e, case["fmt"], case["index"], case.get("block", (2, 2)))
    return jax_matrix(e, case["fmt"], case["index"])


def densified(A: Any) -> np.ndarray:
    """A's library's own dense matrix, widened to float64/complex128."""
    if isinstance(A, (sp.sparray, sp.spmatrix)):
        return support.to_numpy(np.asarray(A.toarray()))
    if support.library_of_array(A) == "torch":
        return support.to_numpy(A.to_dense())
    return support.to_numpy(A.todense())


# -- vectors ---------------------------------------------------------------------------------
def vectors(rng: np.random.Generator, shape: tuple, order: str, dtype: str, lib: str):
    """(x in ``lib`` with the memory layout ``order``, its values as numpy)."""
    if order == "F":
        view = support.random_values(rng, shape[::-1], dtype).transpose()
    elif order == "step" and shape:
        view = support.random_values(rng, (*shape[:-1], 2 * shape[-1]), dtype)[..., ::2]
    else:
        view = support.random_values(rng, shape, dtype)
    values = view.copy()
    if lib == "jax":
        import jax.numpy as jnp

        return jnp.asarray(view), values
    if order == "lazy" and lib == "torch":  # torch's lazy conjugate (complex) or negative (real) bit
        import torch

        if view.dtype.kind == "c":
            x = torch.from_numpy(view.conj()).conj()
            assert x.is_conj()
        else:
            x = torch.from_numpy(-view)._neg_view()
            assert x.is_neg()
        return x, values
    x = support.to_lib(view, lib)
    if lib == "torch":
        assert tuple(x.stride()) == tuple(s // view.itemsize for s in view.strides)
    return x, values


# -- one case ----------------------------------------------------------------------------------
def run_case(rng: np.random.Generator, lib: str, case: dict) -> None:
    dtype, xdtype, op = case["a_dtype"], case["x_dtype"], case["op"]
    x_lib = case.get("x_lib", ENGINE[lib])
    # engines: by default matvec computes in x's library, a prepared operator in A's;
    # "swap" names the other one (backend=); an A that cannot cross to x's library
    # (CROSSES) is computed in A's by both, x shared with it
    crosses = x_lib == ENGINE[lib] or case["fmt"] in CROSSES[lib]
    swap = case.get("engine") == "swap"
    mv_backend = ENGINE[lib] if swap or not crosses else None
    prep_backend = x_lib if swap and crosses else None
    shape, axis = SHAPES[case["layout"]]
    n = N if op == "N" else M
    shape = tuple(n if s == N else s for s in shape)
    result = str(np.result_type(np.dtype(dtype), np.dtype(xdtype)))
    assert support.promoted(x_lib, dtype, xdtype) == result

    first = entries(rng, case["matrix"], dtype)
    # a second A of the same structure, other values
    second = first._replace(data=support.random_values(rng, first.data.shape, dtype))
    A, A2 = build(lib, first, case), build(lib, second, case)
    before = densified(A)
    for got, e in ((before, first), (densified(A2), second)):  # the test's own construction, checked
        np.testing.assert_allclose(got, e.dense(), rtol=10 * support.FLOAT_EPS[dtype], atol=0)

    dense = {id(first): before, id(second): densified(A2)}
    # duplicates may be summed in A's precision (torch coalesces before casting): the
    # tolerance of A's dtype where it is coarser than the result's
    tol = dtype if case["matrix"] == "messy" and support.FLOAT_EPS[dtype] > support.FLOAT_EPS[result] else result

    def check(y: Any, e: Entries, values: np.ndarray, what: str, op: str = op) -> None:
        assert support.library_of_array(y) == x_lib, what
        assert support.dtype_name(y.dtype) == result, what
        ref = support.reference(op_of(dense[id(e)], op), values, axis)
        scale = support.magnitude(op_of(e.dense(magnitude=True), op), values, axis)
        try:
            support.assert_matvec_close(y, ref, scale, n, tol)
        except AssertionError as err:
            raise AssertionError(f"{what} (op {op}): {err}") from None

    kw = {"axis": axis, "backend": mv_backend}
    x1, v1 = vectors(rng, shape, case.get("order", "C"), xdtype, x_lib)
    x2, v2 = vectors(rng, shape, case.get("order", "C"), xdtype, x_lib)
    p = batchmv.plan(A, x1, op=op, **kw)
    assert p.kernel == "spmm" and (mv_backend is None or p.backend == mv_backend)
    check(batchmv.matvec(A, x1, op=op, **kw), first, v1, "matvec, first call")
    check(batchmv.matvec(A2, x2, op=op, **kw), second, v2, "matvec, second call (another A)")
    # T and H take x of the same layout: one must not be taken for the other
    other = {"T": "H", "H": "T"}.get(op)
    if other:
        check(batchmv.matvec(A2, x2, op=other, **kw), second, v2, "matvec, the other transpose", other)
    if op == "H":
        check(batchmv.rmatvec(A, x2, **kw), first, v2, "rmatvec")
    if x_lib != "jax":  # out=: written in place, in x's library
        y_shape = tuple(M if op == "N" and i == axis % len(shape) else N if i == axis % len(shape) else s for i, s in enumerate(shape))
        out = support.to_lib(np.full(y_shape, np.nan, dtype=result), x_lib)
        assert batchmv.matvec(A, x1, op=op, out=out, **kw) is out
        check(out, first, v1, "matvec, out=")

    prepared = batchmv.prepare(A, backend=prep_backend)
    P = {"N": prepared, "T": prepared.T, "H": prepared.H}[op]
    kw = {"axis": axis}
    check(P(x1, **kw), first, v1, "prepared, first call")
    check(P(x2, **kw), first, v2, "prepared, second call")
    if other:
        check(getattr(prepared, other)(x2, **kw), first, v2, "prepared, the other transpose", other)
    check(P(x1, **kw), first, v1, "prepared, the first x again")

    for x, v in ((x1, v1), (x2, v2)):  # nothing written
        np.testing.assert_array_equal(support.to_numpy(x), support.to_numpy(v))
    np.testing.assert_array_equal(densified(A), before)


def params(lib: str, factors: dict, allowed: Callable, seed: int) -> list:
    cases = covering(factors, allowed, seed)
    return [
        pytest.param(c, id="-".join(str(v) for v in c.values()), marks=needs(lib, c["x_lib"]))
        for c in cases
    ]


def _has(lib: str) -> bool:
    return lib in support.libraries() and support.skip_reason(lib) is None


def needs(lib: str, x_lib: str) -> list:
    return [support.needs(name) for name in sorted({lib, x_lib} - {"scipy", "numpy"})]


#: the engine of A's library
ENGINE = {"scipy": "numpy", "torch": "torch", "jax": "jax"}
#: formats whose arrays cross to the other library's engine (scipy <-> torch); jax's do not
CROSSES = {"scipy": ("csr", "csc", "coo", "bsr"), "torch": ("coo", "csr", "csc", "bsr"), "jax": ()}


def _allowed(lib: str) -> Callable:
    def allowed(a: str, va: Any, b: str, vb: Any) -> bool:
        """Pairs that can meet: duplicates only where a format stores them; torch's COO
        indices are int64 only."""
        if a == "matrix" and va == "messy" and b == "fmt":
            return vb in MESSY[lib]
        if lib == "torch" and a in ("fmt", "matrix") and b == "index":
            return not (va in ("coo", "messy") and vb == "int32")
        return True

    return allowed


COMMON = {"a_dtype": DTYPES, "x_dtype": DTYPES, "index": INDEX, "op": OPS, "layout": tuple(range(len(SHAPES))),
          "order": ORDERS, "matrix": MATRICES, "engine": ("auto", "swap")}  # fmt: skip
SCIPY_CASES = params("scipy", {"fmt": SCIPY_FORMATS, "kind": ("sparray", "spmatrix"), **COMMON, "x_lib": ("numpy", "torch")}, _allowed("scipy"), seed=14)
TORCH_CASES = params("torch", {"fmt": TORCH_FORMATS, **COMMON, "x_lib": ("torch", "numpy")}, _allowed("torch"), seed=14)
JAX_CASES = params("jax", {"fmt": JAX_FORMATS, **COMMON, "x_lib": ("jax", "numpy", "torch")}, _allowed("jax"), seed=14)


@pytest.mark.parametrize("case", SCIPY_CASES)
def test_scipy_matrix(rng, case):
    run_case(rng, "scipy", case)


@pytest.mark.parametrize("case", TORCH_CASES)
def test_torch_matrix(rng, case):
    run_case(rng, "torch", case)


@pytest.mark.parametrize("case", JAX_CASES)
def test_jax_matrix(rng, case):
    run_case(rng, "jax", case)


# -- the awkward matrices: every format x op, each kind of x ------------------------------------
def _awkward() -> list:
    out = []
    libs = [("scipy", SCIPY_FORMATS, ("numpy", "torch")), ("torch", TORCH_FORMATS, ("torch", "numpy")), ("jax", JAX_FORMATS, ("jax", "numpy"))]
    for lib, formats, x_libs in libs:
        for fmt in formats:
            for matrix in ("messy", "zeros", "empty"):
                if matrix == "messy" and fmt not in MESSY[lib]:
                    continue
                for x_lib in x_libs:
                    for op in OPS:
                        i = len(out)
                        if lib == "jax" and (OPS.index(op) + x_libs.index(x_lib) + MATRICES.index(matrix)) % 2:
                            continue  # (jax compiles each program: numpy x for some ops, jax x for the others)
                        dtype = DTYPES[i % 4]
                        index = "int64" if lib == "torch" and fmt == "coo" else INDEX[(i // 4) % 2]
                        case = {"fmt": fmt, "a_dtype": dtype, "x_dtype": dtype, "index": index, "op": op,
                                "layout": (2, 7)[i % 2], "order": ORDERS[i % len(ORDERS)], "matrix": matrix, "x_lib": x_lib,
                                "engine": ("auto", "swap")[(i // 3) % 2], "kind": ("sparray", "spmatrix")[(i // 2) % 2]}  # fmt: skip
                        out.append(pytest.param(lib, case, id=f"{lib}-{fmt}-{matrix}-{op}-{x_lib}-{dtype}-{index}", marks=needs(lib, x_lib)))
    return out


@pytest.mark.parametrize(("lib", "case"), _awkward())
def test_awkward_matrices(rng, lib, case):
    """COO duplicates in unsorted order (scipy's CSR/CSC too), stored zeros, nnz = 0, with
    a 3-D x along its middle axis (SHAPES[2]: (3, n, 4) axis 1; SHAPES[7]: (2, n, 3) axis -2)."""
    run_case(rng, lib, case)


# -- blocks that are not square ------------------------------------------------------------------
#: torch's CPU product for block formats is MKL's, which takes square blocks only: batchmv
#: converts A to CSR (a reported copy of A)


def _blocks() -> list:
    out = []
    for lib, fmt, x_lib in (("scipy", "bsr", "numpy"), ("scipy", "bsr", "torch"), ("torch", "bsr", "torch"),
                            ("torch", "bsc", "torch"), ("torch", "bsr", "numpy"), ("torch", "bsc", "numpy")):  # fmt: skip
        for block in ((3, 2), (2, 4)):
            for op in OPS:
                i = len(out)
                case = {"fmt": fmt, "a_dtype": DTYPES[i % 4], "x_dtype": DTYPES[(i + 1) % 4 if i % 3 else i % 4],
                        "index": INDEX[i % 2], "op": op, "layout": (2, 0, 3)[i % 3], "order": ORDERS[i % len(ORDERS)],
                        "matrix": ("plain", "zeros", "empty")[(i // 3) % 3], "x_lib": x_lib, "block": block,
                        "engine": ("auto", "swap")[(i // 2) % 2]}  # fmt: skip
                # the torch engine computes some product of every case with torch in it (scipy
                # A, torch x: matvec by default, the prepared operator swapped; torch A, numpy
                # x: the other way round); with nnz = 0 torch computes nothing
                out.append(pytest.param(lib, case, id=f"{lib}-{fmt}-{block[0]}x{block[1]}-{op}-{x_lib}-{case['engine']}-{case['matrix']}",
                                        marks=needs(lib, x_lib)))  # fmt: skip
    return out


@pytest.mark.parametrize(("lib", "case"), _blocks())
def test_blocks_that_are_not_square(rng, lib, case):
    """BSR/BSC with R x C blocks, R != C (the other tests: 2 x 2)."""
    run_case(rng, lib, case)


@support.needs("torch")
def test_torch_bsr_with_non_square_blocks():
    """torch's product takes square blocks only: (2, 3) blocks are converted to CSR, and the plan says so."""
    import torch

    values = np.arange(24.0).reshape(4, 6)
    x = np.arange(6.0)
    np.testing.assert_allclose(batchmv.matvec(sp.bsr_array(values, blocksize=(2, 3)), x), values @ x, rtol=1e-15)
    np.testing.assert_allclose(batchmv.matvec(torch.from_numpy(values).to_sparse_bsr((2, 2)), torch.from_numpy(x)).numpy(), values @ x, rtol=1e-15)
    A = torch.from_numpy(values).to_sparse_bsr((2, 3))
    y = batchmv.matvec(A, torch.from_numpy(x))
    np.testing.assert_allclose(y.numpy(), values @ x, rtol=1e-15)
    assert "square blocks only" in batchmv.plan(A, torch.from_numpy(x)).copies[0]
    with pytest.raises(batchmv.CopyRequiredError, match="square blocks"):
        batchmv.matvec(A, torch.from_numpy(x), copy=False)


def uncrossable() -> list:
    """(A, x) pairs whose A has no arrays to share with x's library's engine."""
    import torch

    out = [(sp.csr_array(np.eye(M, N)).asformat(fmt), torch.ones(N, dtype=torch.float64), "numpy") for fmt in ("dia", "lil", "dok")]
    out.append((torch.eye(M, N, dtype=torch.float64).to_sparse_bsc((2, 2)), np.ones(N), "torch"))
    if _has("jax"):
        from jax.experimental import sparse

        out += [(sparse.BCOO.fromdense(np.eye(M, N)), x, "jax") for x in (np.ones(N), torch.ones(N, dtype=torch.float64))]
    return out


@support.needs("torch")
def test_an_a_that_cannot_cross_is_refused_by_default():
    """An A that cannot cross to x's engine: matvec's default (x's library's engine) raises a
    TypeError naming the engine that works (A's; the cases above compute there)."""
    for A, x, engine in uncrossable():
        with pytest.raises(TypeError, match=f"cannot take a .* sparse A .*use backend='{engine}'"):
            batchmv.matvec(A, x)
        assert support.library_of_array(batchmv.matvec(A, x, backend=engine)) == support.library_of_array(x)


@support.needs("torch")
def test_the_refusals_advice_works():
    """The refusal of an A that cannot cross to x's engine names A's engine, and that works."""
    for A, x, engine in uncrossable():
        with pytest.raises(TypeError, match=f"use backend='{engine}'") as err:
            batchmv.matvec(A, x)
        assert "auto" not in str(err.value)
        assert support.library_of_array(batchmv.matvec(A, x, backend=engine)) == support.library_of_array(x)  # taken


@support.needs("jax")
def test_jax_bcsr_a_cast_to_the_result_dtype():
    """A BCSR A cast to the result dtype (BCSR has no ``astype``; a BCOO A of the same values)."""
    import jax.numpy as jnp
    from jax.experimental import sparse

    values = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]], dtype=np.float32)
    x = jnp.asarray([1.0, 10.0, 100.0])  # float64
    np.testing.assert_array_equal(np.asarray(batchmv.matvec(sparse.BCOO.fromdense(values), x)), [21.0, 300.0])
    y = batchmv.matvec(sparse.BCSR.fromdense(values), x)
    assert y.dtype == np.float64
    np.testing.assert_array_equal(np.asarray(y), [21.0, 300.0])


# -- a dask x --------------------------------------------------------------------------------
def _dask_cases() -> list:
    out = []
    for lib, formats in (("scipy", SCIPY_FORMATS), ("torch", TORCH_FORMATS), ("jax", JAX_FORMATS)):
        for fmt in formats:
            for op in OPS:
                chunked = ("batch", "axis")[len(out) % 2]
                out.append(pytest.param(lib, fmt, op, chunked, id=f"{lib}-{fmt}-{op}-chunked-{chunked}", marks=needs(lib, "numpy")))
    return out


@pytest.mark.parametrize(("lib", "fmt", "op", "chunked"), _dask_cases())
def test_dask_x(rng, lib, fmt, op, chunked):
    """A dask x (numpy chunks) with every format: chunked along a batch axis, or along the
    vector axis (rechunked); matvec (on A's engine where A does not cross to numpy's) twice,
    with another A the second time, and a prepared operator twice."""
    da = pytest.importorskip("dask.array")
    case = {"fmt": fmt, "index": "int32" if fmt != "coo" or lib != "torch" else "int64", "kind": "sparray"}
    n = N if op == "N" else M
    first = entries(rng, "plain", "complex128")
    second = first._replace(data=support.random_values(rng, first.data.shape, "complex128"))
    A, A2 = build(lib, first, case), build(lib, second, case)
    backend = ENGINE[lib] if lib == "jax" or fmt == "bsc" else None
    chunks = (1, n, 2) if chunked == "batch" else (3, n // 2, 2)

    def check(y, a, values, what):
        assert isinstance(y, da.Array), what
        got = y.compute(scheduler="sync")
        ref = support.reference(op_of(densified(a), op), values, 1)
        try:
            support.assert_matvec_close(got, ref, support.magnitude(op_of(densified(a), op), values, 1), n, "complex128")
        except AssertionError as err:
            raise AssertionError(f"{what}: {err}") from None

    v1, v2 = (support.random_values(rng, (3, n, 4), "complex128") for _ in range(2))
    x1, x2 = da.from_array(v1, chunks=chunks), da.from_array(v2, chunks=chunks)
    check(batchmv.matvec(A, x1, axis=1, op=op, backend=backend), A, v1, "matvec, first call")
    check(batchmv.matvec(A2, x2, axis=1, op=op, backend=backend), A2, v2, "matvec, second call (another A)")
    P = batchmv.prepare(A)
    P = {"N": P, "T": P.T, "H": P.H}[op]
    check(P(x1, axis=1), A, v1, "prepared, first call")
    check(P(x2, axis=1), A, v2, "prepared, second call")
