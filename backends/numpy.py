"""The numpy engine: ``numpy.matmul`` on BLAS-readable 2-D views (one cblas GEMM)."""

from __future__ import annotations

import sys
from typing import Any, Optional

import numpy as np

from .._checks import dlpack_device
from .._engine import StridedEngine
from .._errors import CopyRequiredError
from .._memory import aligned_empty

# numpy calls BLAS for these types only; others (ints, float16, bool) use its own loop,
# which reads any strides without copying.
_BLAS_TYPES = frozenset("fdFD")
# dtypes numpy.matmul computes
_MATMUL_KINDS = frozenset("biufc")
_matmul = np.matmul
_dot = np.dot
_DOT_ROWS = 64  #: most vectors a remembered GEMM gives numpy.dot (more: matmul)


def _dot_reads(a: np.ndarray) -> bool:
    """Whether ``numpy.dot`` hands ``a`` to BLAS as it is: a BLAS dtype in one aligned C-
    or F-ordered block, no stride negative (it copies anything else, where matmul reads
    any BLAS strides; the flags ignore the stride of an axis of length 1, numpy.dot does
    not)."""
    flags = a.flags
    return (
        a.dtype.char in _BLAS_TYPES and flags.aligned and (flags.c_contiguous or flags.f_contiguous)
        and min(a.strides, default=0) >= 0
    )  # fmt: skip


def _meaning_lost_inside(obj: Any) -> Optional[str]:
    """:func:`_meaning_lost` of the first ndarray subclass inside a (nested) Python list or
    tuple, which ``numpy.asarray`` would turn into plain data (a masked array's mask)."""
    if not isinstance(obj, (list, tuple)) or (obj and isinstance(obj[0], (int, float, complex))):
        return None  # (a level of Python numbers: numpy takes no arrays among them)
    for item in obj:
        if isinstance(item, np.ndarray):
            refusal = _meaning_lost(item)
        elif isinstance(item, (list, tuple)):
            refusal = _meaning_lost_inside(item)
        else:
            continue
        if refusal:
            return f"an element of the {type(obj).__name__}: {refusal}"
    return None


def _meaning_lost(a: np.ndarray) -> Optional[str]:
    """Why multiplying the data of this ndarray subclass would drop its meaning, or None.

    Masked arrays (their mask) and subclasses that override numpy's functions
    (``__array_ufunc__``/``__array_function__``: unit-carrying arrays and the like) are
    refused; subclasses whose data is their meaning (``numpy.matrix``, ``numpy.memmap``,
    ``numpy.recarray``) compute as plain arrays.
    """
    kind = type(a)
    if kind is np.ndarray:
        return None
    masked = sys.modules.get("numpy.ma")
    if masked is not None and isinstance(a, masked.MaskedArray):
        return (
            "it is a numpy masked array: batchmv multiplies the data, so masked entries would count "
            "with the values hidden under the mask. Pass np.ma.filled(arr, 0) to count them as zero "
            "(numpy.ma.dot's rule), or arr.data to use the hidden values"
        )
    if kind.__array_ufunc__ is not np.ndarray.__array_ufunc__ or kind.__array_function__ is not np.ndarray.__array_function__:
        return (
            f"it is a {kind.__module__}.{kind.__qualname__}, an ndarray subclass that overrides numpy's "
            "functions (__array_ufunc__/__array_function__), so its data alone is not its meaning "
            "(units, for example). Pass np.asarray(arr) to multiply the plain values"
        )
    return None


class NumpyEngine(StridedEngine):
    name = "numpy"
    conj_note = "numpy.matmul has no conjugate flag"

    def is_native(self, obj: Any) -> bool:
        return isinstance(obj, np.ndarray)

    def address(self, a: np.ndarray) -> tuple[int, int]:
        ptr = a.__array_interface__["data"][0]
        root = a
        while isinstance(root.base, np.ndarray):
            root = root.base
        lo, _ = np.lib.array_utils.byte_bounds(root)
        return ptr, ptr - lo

    def is_writable(self, a: np.ndarray) -> bool:
        return bool(a.flags.writeable)

    def needs_blas_layout(self, dtype: np.dtype) -> bool:
        return dtype.char in _BLAS_TYPES

    def result_dtype(self, a: np.ndarray, x: np.ndarray) -> np.dtype:
        return np.result_type(a.dtype, x.dtype)

    def check_dtype(self, dtype: np.dtype) -> None:
        if dtype.kind not in _MATMUL_KINDS:
            raise TypeError(f"the numpy engine cannot multiply arrays of dtype {dtype.str} ({dtype})")

    def signature(self, a: np.ndarray, x: np.ndarray) -> Optional[tuple]:
        return (a.shape, a.strides, a.dtype, x.shape, x.strides, x.dtype)

    def layout_key(self, a: Any) -> Optional[tuple]:
        # (subclasses compute as plain-array conversions of themselves: never remembered)
        return (a.shape, a.strides, a.dtype, a.flags.aligned) if type(a) is np.ndarray else None

    def must_copy(self, a: np.ndarray) -> Optional[str]:
        if not a.flags.aligned:  # (BLAS dtypes for BLAS; the others for numpy's own loops, which buffer them)
            return "is not aligned to its itemsize: numpy's matmul would copy it"
        return None

    def check_out(self, out: np.ndarray) -> None:
        refusal = _meaning_lost(out)
        if refusal:
            raise TypeError(f"out: {refusal}")

    def export_refusal(self, a: np.ndarray) -> Optional[str]:
        return _meaning_lost(a)

    def host(self, a: np.ndarray, writable: bool = False) -> Optional[np.ndarray]:
        return a if type(a) is np.ndarray and (a.flags.writeable or not writable) else None

    # -- crossing libraries --------------------------------------------------------------
    def adopt(self, obj: Any, *, allow_copy: bool, writable: bool, source: Any = None) -> tuple[np.ndarray, Optional[str]]:
        shared = source.export_numpy(obj, allow_copy=allow_copy, writable=writable) if source is not None else None
        if shared is not None:
            return shared
        kind = type(obj).__module__.split(".")[0]
        where = dlpack_device(obj)
        if where not in (None, "cpu"):  # GPU memory, which numpy cannot read
            raise TypeError(f"numpy cannot use a {kind} array on {where}; nothing is moved between devices")
        arr = np.from_dlpack(obj)
        if writable and not arr.flags.writeable:
            raise CopyRequiredError(f"numpy imports {type(obj).__name__} through DLPack read-only; it cannot be written")
        return arr, None

    # -- primitives ---------------------------------------------------------------------
    def asarray(self, obj: Any) -> np.ndarray:
        refusal = _meaning_lost(obj) if isinstance(obj, np.ndarray) else _meaning_lost_inside(obj)
        if refusal:
            raise TypeError(f"batchmv cannot multiply this array: {refusal}")
        try:
            return np.asarray(obj)
        except RuntimeError as err:  # (torch tensors in a list: grad, lazy bits)
            raise TypeError(f"numpy cannot convert this sequence to an array: {err}") from None

    def view(self, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return a.reshape(shape, copy=False)

    def known_view(self, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return a.reshape(shape)  # (a view where one exists; copy=False costs 0.25 us more to say so)

    def vectors_last_copy(self, a: np.ndarray, axis: int, dtype: np.dtype) -> np.ndarray:
        moved = np.moveaxis(a, axis, -1)
        return np.moveaxis(moved.astype(dtype, order="C", copy=True), -1, axis)

    def empty(self, shape: tuple[int, ...], dtype: np.dtype, like: np.ndarray) -> np.ndarray:
        # another library adopts these (numpy computing for jax), and JAX wraps only aligned memory
        return aligned_empty(shape, dtype)

    def gemm(
        self, x2: np.ndarray, a: np.ndarray, out: np.ndarray | None = None, conj: bool = False, trans: bool = True
    ) -> np.ndarray:
        if conj:  # (conj_flag is False: numpy's matmul has no conjugate flag)
            raise NotImplementedError("numpy's matmul cannot conjugate an operand")
        b = a.T if trans else a
        return _matmul(x2, b) if out is None else _matmul(x2, b, out=out)

    def gemm_kernel(self, x2: np.ndarray, a: np.ndarray, trans: bool = True, conj: bool = False) -> Any:
        # numpy.dot calls BLAS with less work around it than matmul (a third of a tiny
        # call), but copies any operand that is not one aligned C or F block: only then,
        # and for a few vectors (with many, its GEMM ran up to 7 % slower than matmul's:
        # benchmarks/README.md, "Tiny calls")
        if not conj and x2.shape[0] <= _DOT_ROWS and _dot_reads(x2) and _dot_reads(a) and x2.dtype == a.dtype:
            return (lambda x2, a: _dot(x2, a.T)) if trans else _dot
        return super().gemm_kernel(x2, a, trans, conj)

    def gemv_kernel(self, a: np.ndarray, x: np.ndarray, trans: bool = False) -> Any:
        if a.dtype != x.dtype or x.ndim != 1:
            return None
        if _dot_reads(a) and x.flags.aligned and x.strides[0] > 0:
            return (lambda a, x: _dot(x, a)) if trans else _dot
        # (matmul: BLAS for positive strides, numpy's own loop for others, never a copy)
        return (lambda a, x: _matmul(x, a)) if trans else _matmul

    def conj_copy(self, x2: np.ndarray) -> np.ndarray:
        return np.conjugate(x2, out=np.empty(x2.shape, x2.dtype))

    def conj_inplace(self, y: np.ndarray, tracked: bool = False) -> np.ndarray:
        return np.conjugate(y, out=y)

    def stack(self, parts: list, shape: tuple[int, ...]) -> np.ndarray:
        return np.stack(parts).reshape(shape)

    def assign(self, dst: np.ndarray, src: np.ndarray) -> None:
        np.copyto(dst, src, casting="no")

    def broadcast_copy(self, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        out = aligned_empty(shape, a.dtype)
        np.copyto(out, np.broadcast_to(a, shape))
        return out


ENGINE_CLASS = NumpyEngine
