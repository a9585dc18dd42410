"""torch sparse tensors as A (COO, CSR, CSC, BSR, BSC): the product is torch's
sparse-times-strided product on a 2-D view of x: ``torch.sparse.mm`` for COO (whose
gradient w.r.t. A stays sparse), ``A @ X`` for CSR and BSR (``torch.mv`` for one vector;
their gradient is the dense one torch computes).  Autograd runs through both.

torch's CPU products multiply COO, CSR and BSR as they are; a CSC or BSC tensor they
convert to CSR/BSR on every call (seen by torch's profiler as ``aten::to_sparse_csr``), so
batchmv converts it itself and reports that copy of A.  The transpose of a CSC (BSC)
tensor is a CSR (BSR) view of the same arrays, multiplied as it is; the transpose of a
CSR, BSR or COO tensor is a copy (converted, or coalesced again), reported.  The CSR and
BSR products read x's (n, k) view in place only with unit stride along its rows (torch
copies other layouts first), so vectors in the rows of a C-ordered x are copied into such
an array, reported, as torch's own ``A @ X.T`` copies them.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, Optional

import torch

from .._sparse_kit import Parts, SparseInfo, SparseKit

_FORMATS = {
    torch.sparse_coo: "coo", torch.sparse_csr: "csr", torch.sparse_csc: "csc",
    torch.sparse_bsr: "bsr", torch.sparse_bsc: "bsc",
}  # fmt: skip
#: the format op(A) is multiplied in for op "T"/"H" (CSC and BSC are converted; see transpose)
_TRANSPOSED = {"coo": "coo", "csr": "csr", "csc": "csr", "bsr": "bsr", "bsc": "bsr"}
_compiling = torch.compiler.is_compiling
_is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor  # (vmap/grad wrappers)
_MKL = torch.backends.mkl.is_available()
_DTYPES = frozenset({torch.float32, torch.float64, torch.complex64, torch.complex128})
_BUILD = {"csr": torch.sparse_csr_tensor, "csc": torch.sparse_csc_tensor, "bsr": torch.sparse_bsr_tensor}


def _arrays(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(compressed or row indices, plain or column indices, values), as stored."""
    layout = a.layout
    if layout == torch.sparse_coo:
        indices = a._indices()
        return indices[0], indices[1], a._values()
    if layout in (torch.sparse_csr, torch.sparse_bsr):
        return a.crow_indices(), a.col_indices(), a.values()
    return a.ccol_indices(), a.row_indices(), a.values()


class TorchSparse(SparseKit):
    name = "torch"
    engine = "torch"
    assembles = True
    kernel = "torch.sparse.mm / torch.matmul / torch.mv (one sparse-times-strided product)"
    layout_need = (
        "torch's CSR/BSR product reads the vectors as the columns of an (n, k) array with unit stride along its "
        "rows, one vector contiguous, and no product reads a lazy conjugate or negative bit (it copies x itself)"
    )

    def is_sparse(self, a: torch.Tensor) -> bool:
        return a.layout in _FORMATS

    def info(self, a: torch.Tensor) -> SparseInfo:
        if a.dim() != 2 or a.dense_dim() != 0:
            raise ValueError(f"A must be a 2-D sparse tensor without dense dimensions; got shape {tuple(a.shape)}")
        first, second, values = _arrays(a)
        if _misaligned(values):
            raise TypeError(f"A's values: {_MISALIGNED}")
        index_bytes = (first.numel() + second.numel()) * first.element_size()
        fmt = _FORMATS[a.layout]
        return SparseInfo(
            fmt, (int(a.shape[0]), int(a.shape[1])), int(values.numel()), first.dtype,
            a.dtype, values.numel() * values.element_size() + index_bytes, str(a.device),
        )  # fmt: skip

    def notes(self, info: SparseInfo) -> tuple[str, ...]:
        if info.format in ("csr", "csc", "bsr"):
            return ("torch computes the gradient w.r.t. a compressed sparse A as a dense (m, n) tensor",)
        return ()

    def result_dtype(self, a: torch.Tensor, x: torch.Tensor) -> torch.dtype:
        return torch.promote_types(a.dtype, x.dtype)

    def check_dtype(self, dtype: torch.dtype) -> None:
        if dtype not in _DTYPES:
            raise TypeError(f"batchmv multiplies torch sparse tensors in float32, float64, complex64 and complex128; the result would be {dtype}")

    def is_complex(self, dtype: torch.dtype) -> bool:
        return dtype.is_complex

    def dtype_name(self, dtype: torch.dtype) -> str:
        return str(dtype).removeprefix("torch.")

    def astype(self, a: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return a.to(dtype)

    def conversion(self, a: torch.Tensor, op: str = "N") -> Optional[str]:
        if op in ("T", "H"):
            return None  # (transpose_copy says what A^T costs: a view, or a copy that converts)
        layout = a.layout
        if _oblong_blocks(a):
            return f"torch's CPU product (MKL) takes square blocks only: {_BLOCKS_TO_CSR}"
        if layout == torch.sparse_bsc:
            return "torch has no CPU product for a BSC tensor: converted to BSR (a copy of A)"
        if layout == torch.sparse_csc:
            return "torch's CPU product converts a CSC tensor to CSR every time: converted here (a copy of A)"
        if layout == torch.sparse_coo and not a.is_coalesced():
            return "an uncoalesced COO tensor is coalesced (a sorted copy of A's indices and values; torch's product would make it)"
        return None

    def converted_format(self, a: torch.Tensor) -> str:
        if _oblong_blocks(a):
            return "csr"
        return {torch.sparse_bsc: "bsr", torch.sparse_csc: "csr"}.get(a.layout, "coo (coalesced)")

    def convert(self, a: torch.Tensor) -> torch.Tensor:
        return _multipliable(a)

    def product_copies(self, a: torch.Tensor, fmt: str, fresh: bool = False) -> tuple[str, ...]:
        # Found with torch's profiler: the CSR and BSR products make A's values contiguous
        # (aten::clone), and MKL's sparse routines, as torch's CPU wheels link them, take
        # 32-bit indices: torch casts int64 ones (its default) in every product (aten::_to_copy)
        if fmt not in ("csr", "bsr"):
            return ()
        copies = []
        if not fresh and not _arrays(a)[2].is_contiguous():
            copies.append("torch's CPU product copies A's values, a strided view, into a contiguous array on every call "
                          "(a copy of A's values)")
        if _MKL and (_arrays(a)[0].dtype != torch.int32 or _oblong_blocks(a)):  # (oblong: to CSR through COO, int64)
            copies.append("torch's CPU product (MKL, 32-bit indices) casts A's int64 index arrays to int32 on every call "
                          "(a copy of A's indices; A with int32 indices avoids it)")
        return tuple(copies)

    def transposed_format(self, fmt: str) -> str:
        return _TRANSPOSED[fmt.split(" ")[0]]

    def transpose_copy(self, a: torch.Tensor) -> Optional[str]:
        layout = a.layout
        if layout == torch.sparse_coo:
            return "the transpose of a COO tensor is a new one, coalesced again (a copy of A's indices and values)"
        if _oblong_blocks(a):
            return f"torch's CPU product (MKL) takes square blocks only: {_BLOCKS_TO_CSR}"
        if layout == torch.sparse_bsr:
            return "the transpose of a BSR tensor is BSC, which torch cannot multiply on the CPU: converted to BSR (a copy of A)"
        if layout == torch.sparse_csr:
            return "the transpose of a CSR tensor is CSC, which torch's CPU product converts to CSR every time: converted here (a copy of A)"
        if layout == torch.sparse_bsc:
            return ("the transpose of a BSC tensor is a BSR view whose blocks are transposed views: torch's product copies "
                    "its values into contiguous blocks (a copy of A's values)")
        return None

    def transpose(self, a: torch.Tensor) -> torch.Tensor:
        t = a.t()  # csr <-> csc, bsr <-> bsc: views of the same arrays
        return t.coalesce() if t.layout == torch.sparse_coo else _multipliable(t)

    def reads(self, xc: torch.Tensor, fmt: str) -> bool:
        # What torch's CPU products read without a copy of their own (found with torch's
        # profiler: aten::clone of x): the COO product any strides; the CSR and BSR product
        # row-major columns (unit stride along the vectors' batch), and torch.mv, which
        # runs one vector, a contiguous vector; none of them reads a lazy conjugate or
        # negative bit in place.
        if xc.is_conj() or xc.is_neg():
            return False  # (every product resolves a lazy bit of x into a copy first)
        if fmt == "coo":
            return True
        n, k = xc.shape
        return xc.stride(0) == 1 or n <= 1 if k == 1 else xc.stride(1) == 1

    def spmm(self, a: torch.Tensor, xc: torch.Tensor) -> torch.Tensor:
        if a.layout == torch.sparse_coo:
            return torch.sparse.mm(a, xc)  # (its gradient w.r.t. A stays sparse)
        if xc.shape[1] == 1:  # (torch's matrix product would copy an (n, 1) view of strides (1, n))
            return torch.mv(a, xc[:, 0]).unsqueeze(1)
        return a @ xc

    def tracks_graph(self, a: torch.Tensor) -> bool:
        return torch.is_grad_enabled() and a.requires_grad

    def layout_key(self, a: torch.Tensor) -> Optional[tuple]:
        return None if _compiling() else _layout_key(a)

    def layout_keys(self, a: torch.Tensor, x: torch.Tensor, engine: Any) -> Optional[tuple]:
        # the torch engine's layout_key of x, read inline (one compiler check, no call); none
        # under a torch.func transform, which a sparse A refuses (the checks say so every time)
        if _compiling() or x.layout is not torch.strided or _is_wrapped(x):
            return None
        if _misaligned(x):  # (the torch engine refuses it)
            return None
        layout_a = _layout_key(a)
        if layout_a is None:
            return None
        try:
            return (layout_a, (x.shape, x.stride(), x.dtype, x.device, x.is_conj(), x.is_neg()))
        except RuntimeError:  # no strides (nested tensors)
            return None

    def product(self, call: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        if call.op in ("T", "H"):
            return super().product(call)
        return torch.sparse.mm if call.info.format == "coo" else operator.matmul  # (see spmm)

    def vector_product(self, call: Any) -> Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
        """``torch.mv`` for a CSR or BSR product (a CSC A's transpose is a CSR view): about
        half the time of the matrix product on one column (benchmarks/README.md, "Sparse
        A"); autograd runs through it."""
        transpose = call.op in ("T", "H")
        fmt = _TRANSPOSED[call.info.format] if transpose else call.info.format
        if fmt not in ("csr", "bsr"):
            return None
        return (lambda a, v: torch.mv(a.t(), v)) if transpose else torch.mv

    def parts(self, a: torch.Tensor) -> Optional[Parts]:
        fmt = _FORMATS[a.layout]
        if fmt == "bsc" or a.dim() != 2 or a.dense_dim() != 0:
            return None
        canonical = a.layout == torch.sparse_coo and a.is_coalesced()
        return Parts(fmt, (int(a.shape[0]), int(a.shape[1])), _arrays(a), canonical)

    def assemble(self, parts: Parts) -> tuple[torch.Tensor, Optional[str]]:
        first, second, data = parts.arrays
        if parts.format == "coo":
            indices = torch.stack([first, second]).to(torch.int64)
            built = torch.sparse_coo_tensor(indices, data, parts.shape, is_coalesced=parts.canonical, check_invariants=False)
            return built, (
                "torch's COO tensor keeps its row and column indices in one (2, nnz) int64 tensor: "
                f"A's {str(first.dtype).removeprefix('torch.')} indices stacked into one (a copy of A's indices; values shared)"
            )
        if first.dtype != second.dtype:
            raise TypeError(f"torch's {parts.format} tensors need one index dtype; A has {first.dtype} and {second.dtype}")
        built = _BUILD[parts.format](first, second, data, parts.shape, check_invariants=False)  # (valid: the source checked them)
        shared = all(p.data_ptr() == q.data_ptr() for p, q in zip(_arrays(built), parts.arrays) if p.numel())
        return built, (None if shared else "torch copied A's index or value arrays to build its tensor")


_BLOCKS_TO_CSR = "A is converted to CSR (through COO: a copy of A)"


def _oblong_blocks(a: torch.Tensor) -> bool:
    """Whether ``a`` is a BSR or BSC tensor whose blocks are not square (its values are
    (nnz blocks, R, C)): MKL's product takes square ones only."""
    if a.layout is not torch.sparse_bsr and a.layout is not torch.sparse_bsc:
        return False
    shape = a.values().shape
    return shape[1] != shape[2]


def _multipliable(a: torch.Tensor) -> torch.Tensor:
    """A compressed tensor in a layout torch's CPU product multiplies as it is: CSC as CSR,
    BSC as BSR, blocks that are not square as CSR (each a copy of A); others as they are."""
    layout = a.layout
    if _oblong_blocks(a):
        return a.to_sparse_coo().to_sparse_csr()
    if layout == torch.sparse_bsc:
        return a.to_sparse_bsr(a.values().shape[1:])
    return a.to_sparse_csr() if layout == torch.sparse_csc else a


def _misaligned(t: torch.Tensor) -> bool:
    """complex128 memory only 8-byte aligned: see backends.torch's _MISALIGNED."""
    return t.dtype is torch.complex128 and t.device.type == "cpu" and t.numel() > 0 and t.data_ptr() % 16 != 0


_MISALIGNED = ("a complex128 tensor whose memory is not 16-byte aligned: torch's own kernels crash the process on it; "
               "copy it through numpy first")


def _layout_key(a: torch.Tensor) -> Optional[tuple]:
    layout = a.layout
    if layout is torch.sparse_coo:  # (only COO can hold dense dimensions in a 2-D tensor; int64 indices only)
        if a.dtype is torch.complex128 and _misaligned(a._values()):
            return None  # (refused by the checks)
        return (layout, a.shape, a.dtype, a.device, a.dense_dim(), a.is_coalesced())
    if layout not in _FORMATS:
        return None
    # the index dtype and whether the values are contiguous: what the products copy (product_copies)
    compressed = a.crow_indices() if layout is torch.sparse_csr or layout is torch.sparse_bsr else a.ccol_indices()
    values = a.values()
    if a.dtype is torch.complex128 and _misaligned(values):
        return None  # (refused by the checks)
    if layout is torch.sparse_csr or layout is torch.sparse_csc:
        return (layout, a.shape, a.dtype, a.device, compressed.dtype, values.is_contiguous())
    return (layout, a.shape, a.dtype, a.device, compressed.dtype, values.is_contiguous(), values.shape[1:])  # (blocks)


KIT = TorchSparse
