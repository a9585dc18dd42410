"""The numpy engine: ``numpy.matmul`` on BLAS-readable 2-D views (one cblas GEMM)."""

from __future__ import annotations

from typing import Any, Optional

import math

import numpy as np

from .._driver import dlpack_device
from .._errors import CopyRequiredError

# numpy calls BLAS for these types only; others (ints, float16, bool) use its own loop,
# which reads any strides without copying.
_BLAS_TYPES = frozenset("fdFD")
# dtypes numpy.matmul computes
_MATMUL_KINDS = frozenset("biufc")
#: Results that another library adopts (numpy computing for a jax home) are allocated at
#: this alignment, so that libraries that wrap only aligned memory (JAX's CPU client needs
#: 64 bytes) share them without a copy.  numpy's own results come from numpy's allocator,
#: like any numpy array (aligning them cost 2.5 us per call).
RESULT_ALIGNMENT = 64
_matmul = np.matmul


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-ordered array whose data is ``RESULT_ALIGNMENT``-byte aligned.

    >>> aligned_empty((3, 5), np.float32).ctypes.data % RESULT_ALIGNMENT
    0
    """
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    raw = np.empty(size + RESULT_ALIGNMENT, np.uint8)
    skip = -raw.ctypes.data % RESULT_ALIGNMENT
    # through a memoryview, so that the array's buffer starts at the aligned address
    return np.frombuffer(memoryview(raw)[skip : skip + size], dtype=dtype).reshape(shape)


class NumpyEngine:
    name = "numpy"
    transform_kernel = "matmul"
    transform_note = "numpy has no transforms"

    def is_native(self, obj: Any) -> bool:
        return isinstance(obj, np.ndarray)

    def shape(self, a: np.ndarray) -> tuple[int, ...]:
        return a.shape

    def strides(self, a: np.ndarray) -> tuple[Optional[int], ...]:
        size = a.itemsize
        return tuple(s // size if s % size == 0 else None for s in a.strides)

    def dtype_name(self, a: np.ndarray) -> str:
        return str(a.dtype)

    def itemsize(self, a: np.ndarray) -> int:
        return a.itemsize

    def device(self, a: np.ndarray) -> str:
        return "cpu"

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

    def dtype_of(self, a: np.ndarray) -> np.dtype:
        return a.dtype

    def result_dtype(self, a: np.ndarray, x: np.ndarray) -> np.dtype:
        return np.result_type(a.dtype, x.dtype)

    def check_dtype(self, dtype: np.dtype) -> None:
        if dtype.kind not in _MATMUL_KINDS:
            raise TypeError(f"the numpy engine cannot multiply arrays of dtype {dtype.str} ({dtype})")

    def tracks_graph(self, *arrays: Any) -> bool:
        return False

    def in_transform(self, *arrays: Any) -> bool:
        return False

    # -- crossing libraries --------------------------------------------------------------
    def adopt(self, obj: Any, *, allow_copy: bool, writable: bool) -> tuple[np.ndarray, Optional[str]]:
        from .torch import as_numpy_view  # only arrays of already-imported libraries get here

        kind = type(obj).__module__.split(".")[0]
        if kind == "torch":
            return as_numpy_view(obj, allow_copy=allow_copy, writable=writable)
        where = dlpack_device(obj)
        if where not in (None, "cpu"):  # GPU memory, which numpy cannot read
            raise TypeError(f"numpy cannot use a {kind} array on {where}; nothing is moved between devices")
        arr = np.from_dlpack(obj)
        if writable and not arr.flags.writeable:
            raise CopyRequiredError(f"numpy imports {type(obj).__name__} through DLPack read-only; it cannot be written")
        return arr, None

    def adopt_result(self, obj: Any, *, allow_copy: bool, writable: bool) -> tuple[np.ndarray, Optional[str]]:
        return self.adopt(obj, allow_copy=allow_copy, writable=writable)

    def astype(self, a: np.ndarray, dtype: Any) -> np.ndarray:
        return a.astype(dtype)

    def export_refusal(self, a: np.ndarray) -> Optional[str]:
        return None

    def signature(self, a: np.ndarray, x: np.ndarray) -> Optional[tuple]:
        return (a.shape, a.strides, a.dtype, x.shape, x.strides, x.dtype)

    def must_copy(self, a: np.ndarray) -> Optional[str]:
        return None

    # -- primitives ---------------------------------------------------------------------
    def asarray(self, obj: Any) -> np.ndarray:
        return np.asarray(obj)

    def permute(self, a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        return a.transpose(axes)

    def view(self, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return a.reshape(shape, copy=False)

    def take_first(self, a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        return a[tuple(slice(0, 1) if i in axes else slice(None) for i in range(a.ndim))]

    def vectors_last_copy(self, a: np.ndarray, axis: int, dtype: np.dtype) -> np.ndarray:
        moved = np.moveaxis(a, axis, -1)
        return np.moveaxis(moved.astype(dtype, order="C", copy=True), -1, axis)

    def c_order_copy(self, a: np.ndarray, dtype: np.dtype) -> np.ndarray:
        return a.astype(dtype, order="C", copy=True)

    def empty(self, shape: tuple[int, ...], dtype: np.dtype, like: np.ndarray) -> np.ndarray:
        return aligned_empty(shape, dtype)

    def gemm(self, x2: np.ndarray, a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return _matmul(x2, a.T) if out is None else _matmul(x2, a.T, out=out)

    def stack(self, parts: list, shape: tuple[int, ...]) -> np.ndarray:
        return np.stack(parts).reshape(shape)

    def assign(self, dst: np.ndarray, src: np.ndarray) -> None:
        np.copyto(dst, src, casting="no")

    def broadcast_copy(self, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        out = aligned_empty(shape, a.dtype)
        np.copyto(out, np.broadcast_to(a, shape))
        return out

    def transform_matvec(self, a: np.ndarray, x: np.ndarray, axis: int) -> np.ndarray:
        raise AssertionError("numpy has no transforms")  # in_transform is always False


ENGINE_CLASS = NumpyEngine
