"""scipy.sparse matrices as A (sparray and spmatrix): the product is scipy's own
``A @ X`` with X a C-ordered (n, k) ndarray, vectors in columns, which runs one
sparsetools kernel over all k vectors (``csr_matvecs``, ``csc_matvecs``, ``bsr_matvecs``,
``coo_matmat_dense``) on A's arrays as they are: int32 and int64 indices alike, COO
duplicates summed, explicit zeros kept.

scipy's kernels read X only as a C-ordered (n, k) array (``other.ravel()``): vectors in
the rows of x (the last axis) are copied into that layout first, as scipy's ``A @ X.T``
itself does; batchmv reports that copy.  sparsetools also copies each array of A that is
not C-contiguous in native byte order, and casts index arrays of two dtypes to one, on
every call: reported as copies of A (``product_copies``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import numpy as np
import scipy.sparse as sp

try:  # the kernels of scipy.sparse's products (a private module: without it, A @ X)
    from scipy.sparse import _sparsetools
except ImportError:  # pragma: no cover - every scipy this supports has it
    _sparsetools = None

from .._sparse_kit import Parts, SparseInfo, SparseKit

#: formats scipy multiplies as they are; others (dia, lil, dok) are converted to csr
_NATIVE = frozenset({"csr", "csc", "coo", "bsr"})
#: the format of A^T for each: csr and csc are each other's transpose on the same arrays
_TRANSPOSED = {"csr": "csc", "csc": "csr", "coo": "coo", "bsr": "bsr"}
_DTYPES = frozenset(np.dtype(t) for t in ("float32", "float64", "complex64", "complex128"))
_BUILD = {"csr": sp.csr_array, "csc": sp.csc_array, "bsr": sp.bsr_array}


class ScipySparse(SparseKit):
    name = "scipy"
    engine = "numpy"
    assembles = True
    kernel = "scipy.sparse A @ X (one sparsetools *_matvecs call)"
    layout_need = "scipy's product reads the vectors as the columns of a C-ordered (n, k) array"

    def info(self, a: Any) -> SparseInfo:
        if a.ndim != 2:
            raise ValueError(f"A must be 2-D; got a {a.ndim}-D scipy.sparse {a.format} array of shape {a.shape}")
        arrays = _index_arrays(a)
        index = arrays[0].dtype if arrays else None
        data_bytes = a.data.nbytes if hasattr(a, "data") and isinstance(a.data, np.ndarray) else 0
        return SparseInfo(a.format, tuple(a.shape), int(a.nnz), index, a.dtype, data_bytes + sum(i.nbytes for i in arrays), "cpu")

    def result_dtype(self, a: Any, x: np.ndarray) -> np.dtype:
        return np.result_type(a.dtype, x.dtype)

    def check_dtype(self, dtype: np.dtype) -> None:
        if dtype not in _DTYPES:
            raise TypeError(f"batchmv multiplies scipy.sparse matrices in float32, float64, complex64 and complex128; the result would be {dtype}")

    def is_complex(self, dtype: np.dtype) -> bool:
        return dtype.kind == "c"

    def astype(self, a: Any, dtype: np.dtype) -> Any:
        return a.astype(dtype)

    def conversion(self, a: Any, op: str = "N") -> Optional[str]:
        if a.format in _NATIVE:
            return None
        return f"scipy has no product for the {a.format} format: converted with A.tocsr() (a copy of A)"

    def converted_format(self, a: Any) -> str:
        return "csr"

    def convert(self, a: Any) -> Any:
        return a.tocsr()

    def transposed_format(self, fmt: str) -> str:
        return _TRANSPOSED[fmt]

    def transpose_copy(self, a: Any) -> Optional[str]:
        if a.format == "bsr":
            return "scipy builds the transpose of a bsr matrix as a new bsr matrix (a copy of A)"
        return None

    def transpose(self, a: Any) -> Any:
        return a.T  # csr <-> csc and coo: the same index and value arrays

    def reads(self, xc: np.ndarray, fmt: str) -> bool:
        # sparsetools takes X.ravel(): a view only for C order; aligned native data, or it copies
        return bool(xc.flags.c_contiguous and xc.flags.aligned and xc.dtype.isnative)

    def spmm(self, a: Any, xc: np.ndarray) -> np.ndarray:
        return a @ xc

    def layout_key(self, a: Any) -> Optional[tuple]:
        # the arrays' dtypes and C order: what sparsetools reads in place (product_copies)
        fmt = a.format
        if fmt in ("csr", "csc", "bsr"):
            i, j, v = a.indptr, a.indices, a.data
        elif fmt == "coo":
            i, j, v = a.row, a.col, a.data
        else:
            return None  # (dia, lil, dok: converted by every call)
        key = (a.shape, i.dtype, j.dtype, v.dtype, i.flags.c_contiguous, j.flags.c_contiguous, v.flags.c_contiguous)
        return key + (v.shape[1:],) if fmt == "bsr" else key

    def product_copies(self, a: Any, fmt: str, fresh: bool = False) -> tuple[str, ...]:
        # sparsetools converts each array it is given to a C-ordered one in native byte
        # order, and the index arrays to one dtype (its C++ templates take one index type)
        if fresh or a.format not in _NATIVE:
            return ()
        named = _named_arrays(a)
        copies = [
            f"scipy's sparsetools copies A's {name} array, {'not C-contiguous' if not arr.flags.c_contiguous else 'not in native byte order'}, "
            f"into a C-contiguous native one on every call (a copy of A's {name})"
            for name, arr in named
            if not arr.flags.c_contiguous or (name != "data" and not arr.dtype.isnative)  # (data: a cast, reported)
        ]
        index = {name: arr.dtype for name, arr in named if name != "data"}
        if len({dtype.newbyteorder("=") for dtype in index.values()}) > 1:
            copies.append(f"scipy casts A's index arrays ({', '.join(f'{k} {v}' for k, v in index.items())}) to one dtype "
                          "on every call (a copy of the narrower)")
        return tuple(copies)

    def product(self, call: Any) -> Callable[[Any, np.ndarray], np.ndarray]:
        """The sparsetools kernel that ``A @ X`` ends in (``*_matvecs``, ``coo_matmat_dense``),
        called directly: the same loop on A's arrays without the Python that scipy runs
        around it, most of a call on few vectors (benchmarks/README.md, "Sparse A").  The
        transpose of a csr or csc A is the other format's kernel on the same arrays, of a
        coo A its row and column swapped.  Index arrays of two dtypes, or values of
        another dtype than the result, take scipy's ``A @ X``, which casts them."""
        kernel = _kernel(call, "matvecs")
        if kernel is None:
            return super().product(call)
        m, k, dtype = call.y_shape[call.axis], call.columns, call.dtype

        def product(a: Any, xc: np.ndarray) -> np.ndarray:
            y = np.zeros((m, k), dtype)
            kernel(a, k, xc.reshape(-1), y.reshape(-1))
            return y
        return product

    def vector_product(self, call: Any) -> Optional[Callable[[Any, np.ndarray], np.ndarray]]:
        """``*_matvec``, the sparsetools kernel of ``A @ v``, called directly (see :meth:`product`)."""
        kernel = _kernel(call, "matvec")
        if kernel is None:
            return None
        m, dtype = call.y_shape[call.axis], call.dtype

        def product(a: Any, v: np.ndarray) -> np.ndarray:
            y = np.zeros(m, dtype)
            kernel(a, 1, v, y)
            return y
        return product

    def parts(self, a: Any) -> Optional[Parts]:
        if a.ndim != 2 or a.format not in _NATIVE:
            return None
        if a.format == "coo":
            return Parts("coo", tuple(a.shape), (a.row, a.col, a.data), bool(a.has_canonical_format))
        return Parts(a.format, tuple(a.shape), (a.indptr, a.indices, a.data))

    def assemble(self, parts: Parts) -> tuple[Any, Optional[str]]:
        first, second, data = parts.arrays
        if parts.format == "coo":
            built = sp.coo_array((data, (first, second)), shape=parts.shape)
            built.has_canonical_format = parts.canonical  # (torch's coalesced tensors are sorted so)
            shared = np.shares_memory(built.row, first) and np.shares_memory(built.col, second)
        elif parts.format in _BUILD:
            built = _BUILD[parts.format]((data, second, first), shape=parts.shape)
            shared = np.shares_memory(built.indptr, first) and np.shares_memory(built.indices, second)
        else:
            raise TypeError(f"scipy.sparse has no {parts.format} format")
        shared = shared and np.shares_memory(built.data, data)
        return built, (None if shared else "scipy.sparse copied A's index or value arrays to build its matrix")


def _kernel(call: Any, kind: str) -> Optional[Callable[[Any, int, np.ndarray, np.ndarray], None]]:
    """``f(a, k, x, y)``: ``y += op(A) @ x`` by scipy's sparsetools kernel of ``kind``
    ("matvec": one vector; "matvecs": k of them, x and y C-ordered (n, k) and (m, k) arrays
    given flat) on A's arrays as they are at each call, for the call's format and op; None
    where scipy's own product must cast (index arrays of two dtypes, values of another
    dtype than the result), where there is no such kernel, and for a subclass of scipy's
    classes (whose own product may differ: it is called)."""
    a, (rows, cols) = call.a, call.info.shape
    fmt, transpose = call.info.format, call.op in ("T", "H")
    if _sparsetools is None or a.data.dtype != call.dtype or len({i.dtype for i in _index_arrays(a)}) != 1:
        return None
    if not type(a).__module__.startswith("scipy.sparse"):
        return None
    one = kind == "matvec"
    if fmt == "coo":
        first, second = ("col", "row") if transpose else ("row", "col")
        if one:
            return lambda a, k, x, y: _sparsetools.coo_matvec(a.nnz, getattr(a, first), getattr(a, second), a.data, x, y)
        return lambda a, k, x, y: _sparsetools.coo_matmat_dense(a.nnz, k, getattr(a, first), getattr(a, second), a.data, x, y)
    if fmt == "bsr":
        if transpose:
            return None
        r, c = a.data.shape[1:]
        blocks = (rows // r, cols // c)
        if one:
            return lambda a, k, x, y: _sparsetools.bsr_matvec(*blocks, r, c, a.indptr, a.indices, a.data.reshape(-1), x, y)
        return lambda a, k, x, y: _sparsetools.bsr_matvecs(*blocks, k, r, c, a.indptr, a.indices, a.data.reshape(-1), x, y)
    # csr or csc; A^T is the other format on the same arrays, of shape (cols, rows)
    fn = getattr(_sparsetools, f"{_TRANSPOSED[fmt] if transpose else fmt}_{kind}")
    shape = (cols, rows) if transpose else (rows, cols)
    if one:
        return lambda a, k, x, y: fn(*shape, a.indptr, a.indices, a.data, x, y)
    return lambda a, k, x, y: fn(*shape, k, a.indptr, a.indices, a.data, x, y)


def _named_arrays(a: Any) -> tuple[tuple[str, np.ndarray], ...]:
    """A's index arrays and values by name, for a format scipy multiplies as it is."""
    if a.format == "coo":
        return (("row", a.row), ("col", a.col), ("data", a.data))
    return (("indptr", a.indptr), ("indices", a.indices), ("data", a.data))


def _index_arrays(a: Any) -> tuple[np.ndarray, ...]:
    if a.format in ("csr", "csc", "bsr"):
        return (a.indptr, a.indices)
    if a.format == "coo":
        return tuple(a.coords)
    if a.format == "dia":
        return (a.offsets,)
    return ()


KIT = ScipySparse
