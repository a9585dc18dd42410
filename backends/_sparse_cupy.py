"""cupyx.scipy.sparse matrices as A (csr, csc; coo and dia converted to csr): the product
is cupyx's own ``A @ X`` with X an F-ordered (n, k) cupy array, vectors in columns, which
runs one cuSPARSE SpMM (``cupyx.cusparse.spmm``; ``csrmm2`` on CUDA before 11) over all k
vectors on A's arrays as they are, int32 and int64 indices alike (CuPy 13 has int32 only).

What this follows from, in CuPy's source (``cupyx/scipy/sparse``, CuPy 13.6 and 14.2):

* the csr product (``_csr.py``: ``__mul__``, ``_matmul_dispatch`` from CuPy 14) calls
  ``cusparse.spmm(A, cupy.asfortranarray(X))``; ``asfortranarray`` returns X itself when
  it is F-contiguous and copies it otherwise, and ``spmm`` refuses any other layout.  So
  the vectors along the last axis of a C-ordered x (whose (n, k) view is F-ordered) are
  read in place; in other layouts x is copied (reported).  The result is a new F-ordered
  (m, k) array.
* the csc product (``_csc.py``) runs ``spmm(A.T, X, transa=True)``: the csr view of the
  same arrays, transposed by cuSPARSE.  ``csr.T`` is a csc matrix on the same three arrays
  and back (``transpose``: ``_from_parts`` on them in CuPy 14, the constructor with
  ``copy=False`` in CuPy 13), so op "T"/"H" never copies A.
* coo and dia have no product of their own: cupyx's ``A @ X`` converts them with
  ``A.tocsr()`` on every call.  batchmv makes that conversion once per call and reports it.
* both products first call ``A.sum_duplicates()``, which for a matrix that is not in
  canonical form (sorted indices, no duplicates) rebuilds A's arrays *in place*.  batchmv
  does that on a copy instead (reported; A is left as given).  Whether A is canonical is
  cupyx's ``has_canonical_format``: a small kernel and one device synchronisation the
  first time it is asked, cached on A by cupyx (its own product asks the same).
* streams: cupyx's cuSPARSE wrappers point the handle at CuPy's current stream before each
  call (``cupy_backends/cuda/libs/cusparse.pyx``: ``_setStream``), so the product is
  enqueued on the caller's current stream, as the dense cupy engine's GEMM is.

None of this has run on a GPU where it was written (no device, no cupy there): the tests
of ``tests/test_sparse_cupy.py`` are marked ``gpu``.
"""

from __future__ import annotations

from typing import Any, Optional

import cupy
import numpy as np
from cupyx.scipy import sparse as csp

from .._sparse_kit import Parts, SparseInfo, SparseKit

#: formats cupyx multiplies as they are; others (coo, dia) are converted to csr
_NATIVE = frozenset({"csr", "csc"})
#: the format of A^T: csr and csc are each other's transpose on the same arrays
_TRANSPOSED = {"csr": "csc", "csc": "csr"}
_DTYPES = frozenset(np.dtype(t) for t in ("float32", "float64", "complex64", "complex128"))
#: the classes that keep the index dtype they are given: the sparse arrays (CuPy 14+) where
#: they exist; CuPy 13's matrices store int32 indices only
_BUILD = {fmt: getattr(csp, f"{fmt}_array", None) or getattr(csp, f"{fmt}_matrix") for fmt in ("csr", "csc", "coo")}


class CupySparse(SparseKit):
    name = "cupy"
    engine = "cupy"
    assembles = True
    kernel = "cupyx.scipy.sparse A @ X (one cuSPARSE SpMM, cupyx.cusparse.spmm)"
    layout_need = (
        "cupyx's product reads the vectors only as the columns of an F-ordered (n, k) array "
        "(it calls cupy.asfortranarray(X)), so it copies this C-ordered copy once more"
    )

    def info(self, a: Any) -> SparseInfo:
        if a.ndim != 2:
            raise ValueError(f"A must be 2-D; got a {a.ndim}-D cupyx.scipy.sparse {a.format} array of shape {a.shape}")
        arrays = _index_arrays(a)
        index = arrays[0].dtype if arrays else None
        return SparseInfo(
            a.format, (int(a.shape[0]), int(a.shape[1])), int(a.nnz), index, a.dtype,
            a.data.nbytes + sum(i.nbytes for i in arrays), f"cuda:{a.data.device.id}",
        )  # fmt: skip

    def notes(self, info: SparseInfo) -> tuple[str, ...]:
        return (
            "cuSPARSE computes a csc operand (a csc A, or A^T of a csr A) as the transpose of its csr view "
            "(op(A) = transpose), whose results NVIDIA documents may differ slightly from run to run",
        )

    def result_dtype(self, a: Any, x: Any) -> np.dtype:
        return np.result_type(a.dtype, x.dtype)

    def check_dtype(self, dtype: np.dtype) -> None:
        if dtype not in _DTYPES:
            raise TypeError(
                f"batchmv multiplies cupyx.scipy.sparse matrices in float32, float64, complex64 and complex128; the result would be {dtype}"
            )

    def is_complex(self, dtype: np.dtype) -> bool:
        return np.dtype(dtype).kind == "c"

    def astype(self, a: Any, dtype: np.dtype) -> Any:
        with a.data.device:
            return a.astype(dtype)

    def conversion(self, a: Any, op: str = "N") -> Optional[str]:
        if a.format not in _NATIVE:
            return f"cupyx has no product for the {a.format} format (its A @ X converts it): converted with A.tocsr() (a copy of A)"
        if not a.has_canonical_format:  # (cupyx's flag: computed once, on the device, then cached on A)
            return (
                f"A's {a.format} indices are not canonical (unsorted, or duplicate entries): cupyx's product would sort "
                "them and sum the duplicates in place, replacing A's arrays; batchmv does it on a copy of A and leaves A "
                "as it is (A.sum_duplicates() once avoids it)"
            )
        return None

    def converted_format(self, a: Any) -> str:
        return f"{a.format} (canonical copy)" if a.format in _NATIVE else "csr"

    def convert(self, a: Any) -> Any:
        with a.data.device:
            if a.format in _NATIVE:
                b = a.copy()
                b.sum_duplicates()  # (in place, on the copy)
                return b
            return a.tocsr()

    def transposed_format(self, fmt: str) -> str:
        return _TRANSPOSED[fmt.split(" ")[0]]

    def transpose_copy(self, a: Any) -> Optional[str]:
        return None  # csr <-> csc: the same arrays (coo and dia are converted to csr first)

    def transpose(self, a: Any) -> Any:
        with a.data.device:
            return a.T

    def reads(self, xc: cupy.ndarray, fmt: str) -> bool:
        return bool(xc.flags.f_contiguous)  # cupy.asfortranarray returns such an array itself

    def spmm(self, a: Any, xc: cupy.ndarray) -> cupy.ndarray:
        m, k = a.shape[0], xc.shape[1]
        with xc.device:
            if m == 0 or k == 0 or xc.shape[0] == 0:  # (no cuSPARSE call on empty operands)
                return cupy.zeros((m, k), dtype=xc.dtype, order="F")
            return a @ xc

    def parts(self, a: Any) -> Optional[Parts]:
        if a.ndim != 2 or a.format not in ("csr", "csc", "coo"):
            return None
        shape = (int(a.shape[0]), int(a.shape[1]))
        if a.format == "coo":  # (cupyx's canonical coo is sorted by row, then column, like torch's coalesced one)
            return Parts("coo", shape, (a.row, a.col, a.data), bool(a.has_canonical_format))
        return Parts(a.format, shape, (a.indptr, a.indices, a.data))

    def assemble(self, parts: Parts) -> tuple[Any, Optional[str]]:
        first, second, data = parts.arrays
        if parts.format not in _BUILD:
            raise TypeError(f"cupyx.scipy.sparse has no {parts.format} format")
        if data.dtype not in _DTYPES:
            raise TypeError(f"cupyx.scipy.sparse matrices hold float32, float64, complex64 or complex128 values here; A's are {data.dtype}")
        with data.device:
            if parts.format == "coo":
                built = _BUILD["coo"]((data, (first, second)), shape=parts.shape, copy=False)
                built.has_canonical_format = parts.canonical  # (a plain attribute of cupyx's coo)
                shared = _same(built.row, first) and _same(built.col, second)
            else:  # (the constructor reads indptr's ends back to the host: one synchronisation)
                built = _BUILD[parts.format]((data, second, first), shape=parts.shape, copy=False)
                shared = _same(built.indptr, first) and _same(built.indices, second)
        shared = shared and _same(built.data, data)
        return built, (None if shared else "cupyx.scipy.sparse copied A's index or value arrays to build its matrix (CuPy 13 keeps int32 indices only)")


def _same(built: cupy.ndarray, given: cupy.ndarray) -> bool:
    """Whether the constructor kept ``given`` (its memory; an empty array always counts)."""
    return given.size == 0 or (built.data.ptr == given.data.ptr and built.dtype == given.dtype)


def _index_arrays(a: Any) -> tuple[cupy.ndarray, ...]:
    if a.format in ("csr", "csc"):
        return (a.indptr, a.indices)
    if a.format == "coo":
        return (a.row, a.col)
    if a.format == "dia":
        return (a.offsets,)
    return ()


KIT = CupySparse
