"""The cupy engine: one cuBLAS GEMM on views of cupy arrays, on the caller's current stream.

Results of a call on cupy arrays are cupy arrays on the inputs' device.  The kernel is the
one every engine runs, ``Y2 = X2 @ A.T`` on views (:mod:`batchmv._layout`), but the GEMM is
called here, not through ``cupy.matmul``: CuPy's ``matmul`` copies every 2-D operand that
is neither C- nor F-contiguous (a row slice ``X[:, :n]`` has a unit stride and a leading
dimension cuBLAS can read, yet CuPy copies it), and its path for more than two dimensions
makes operands contiguous.  This engine passes the views' own leading dimensions to
``cublas<s,d,c,z>gemm`` (``cublasGemmEx`` for float16, accumulating in float32), with the
transpose flags and operand order computed by :func:`batchmv._cublas.cublas_args`
(row-major views as a column-major problem: ``Y2.T = A @ X2.T``).  Views cuBLAS cannot
read are copied first, and :func:`batchmv.plan` reports each copy.

Other dtypes (integers, bool), which cuBLAS does not multiply, run in a small CUDA kernel
of this module that reads any strides (one thread per result element, accumulating in the
dtype itself, so integer results wrap like numpy's); it makes no copy either.

Streams: everything is enqueued on CuPy's current stream of the inputs' device
(``cupy.cuda.get_current_stream()``); the cuBLAS handle is pointed at that stream for the
call and given back its previous stream afterwards.  Nothing synchronises: the result is
ready on that stream, as a ``cupy.matmul`` result would be.  Arrays of other libraries are
imported with ``cupy.from_dlpack``, which passes CuPy's current stream to the producer's
``__dlpack__(stream=...)``, so the producer orders its pending work before CuPy reads; a
result handed to another library goes through that library's ``from_dlpack``, which does
the same in the other direction.

Devices: the engine computes on CUDA devices only.  Arrays on the CPU (numpy arrays, CPU
tensors, Python sequences) are refused with TypeError naming the devices; batchmv never
moves data between devices.

Precision: float32 is computed by ``cublasSgemm`` with the handle's math mode as the
caller left it (CuPy's default does not use TF32).  ``CUPY_TF32`` is CuPy's switch for the
compute type of its own ``matmul``; this engine does not read it and never turns TF32 on.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Optional

import cupy
import numpy as np

from .._checks import dlpack_device, require_copy
from .._engine import StridedEngine
from .._errors import CopyRequiredError
from .._cublas import CUBLAS_INT_MAX, conj_readable, cublas_args

#: dtypes cuBLAS multiplies: float32, float64, complex64, complex128, float16 (GemmEx)
_CUBLAS_CHARS = frozenset("fdFDe")
#: cudaDataType CUDA_R_16F (``cupy_backends.cuda.api.runtime.CUDA_R_16F``), for GemmEx
_R_16F = 2

_KERNEL_SOURCE = r"""
extern "C" __global__ void batchmv_strided_gemm(
        const T* x, const T* a, T* y, long long rows, long long m, long long n,
        long long xs0, long long xs1, long long as0, long long as1, long long ys0, long long ys1) {
    // Y2[r, j] = sum_k X2[r, k] * AT[k, j], every view with its own element strides
    long long step = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < rows * m; i += step) {
        long long r = i / m, j = i - r * m;
        const T* xr = x + r * xs0;
        const T* aj = a + j * as1;
        T acc = 0;
        for (long long k = 0; k < n; ++k) {
            acc += xr[k * xs1] * aj[k * as0];
        }
        y[r * ys0 + j * ys1] = acc;
    }
}
"""
#: C types of the dtypes the strided kernel multiplies (bool and integers), by (kind, itemsize)
_C_TYPES = {
    ("b", 1): "bool",
    ("i", 1): "signed char", ("i", 2): "short", ("i", 4): "int", ("i", 8): "long long",
    ("u", 1): "unsigned char", ("u", 2): "unsigned short", ("u", 4): "unsigned int", ("u", 8): "unsigned long long",
}  # fmt: skip
_kernels: dict[str, Any] = {}
_kernels_lock = threading.Lock()


def _strided_kernel(dtype: np.dtype) -> Any:
    ctype = _C_TYPES[(dtype.kind, dtype.itemsize)]
    kernel = _kernels.get(ctype)
    if kernel is None:
        source = f"typedef {ctype} T;\n{_KERNEL_SOURCE}"
        with _kernels_lock:
            kernel = _kernels.setdefault(ctype, cupy.RawKernel(source, "batchmv_strided_gemm"))
    return kernel


def _element_strides(a: cupy.ndarray) -> tuple[int, ...]:
    return tuple(s // a.itemsize for s in a.strides)


class CupyEngine(StridedEngine):
    name = "cupy"
    conj_note = "cuBLAS conjugates only an operand it reads transposed (op C)"

    # -- questions about native arrays ------------------------------------------------
    def is_native(self, obj: Any) -> bool:
        return isinstance(obj, cupy.ndarray)

    def device(self, a: cupy.ndarray) -> str:
        return f"cuda:{a.device.id}"

    def address(self, a: cupy.ndarray) -> tuple[int, int]:
        ptr = a.data.ptr
        base = getattr(a.data.mem, "ptr", ptr)
        return ptr, ptr - base

    def needs_blas_layout(self, dtype: np.dtype) -> bool:
        return np.dtype(dtype).char in _CUBLAS_CHARS  # the strided kernel reads any strides

    def result_dtype(self, a: cupy.ndarray, x: cupy.ndarray) -> np.dtype:
        return np.result_type(a.dtype, x.dtype)

    def check_dtype(self, dtype: Any) -> None:
        dtype = np.dtype(dtype)
        if dtype.char not in _CUBLAS_CHARS and (dtype.kind, dtype.itemsize) not in _C_TYPES:
            raise TypeError(f"the cupy engine cannot multiply arrays of dtype {dtype}")

    def signature(self, a: cupy.ndarray, x: cupy.ndarray) -> Optional[tuple]:
        return (a.shape, a.strides, a.dtype, a.device.id, x.shape, x.strides, x.dtype, x.device.id)

    def layout_key(self, a: Any) -> Optional[tuple]:
        return (a.shape, a.strides, a.dtype, a.device.id) if isinstance(a, cupy.ndarray) else None

    # -- crossing libraries ------------------------------------------------------------
    def adopt(self, obj: Any, *, allow_copy: bool, writable: bool, source: Any = None) -> tuple[cupy.ndarray, Optional[str]]:
        """``obj`` (on a CUDA device) as a cupy array sharing its memory, imported with
        ``cupy.from_dlpack`` (which hands CuPy's current stream to the producer)."""
        kind = type(obj).__module__.split(".")[0]
        where = dlpack_device(obj) or "an unknown device"
        if not where.startswith("cuda:"):
            what = "numpy array (or Python sequence)" if isinstance(obj, np.ndarray) else f"{kind} array"
            raise TypeError(
                f"the cupy engine computes on CUDA devices, and this {what} is on {where}; "
                "batchmv never moves data between devices (copy it to the GPU yourself, e.g. cupy.asarray)"
            )
        source_ptr = None
        reason = None
        if kind == "torch":
            obj = obj.detach()  # the front end has refused tensors whose gradient would be lost
            if obj.is_conj() or obj.is_neg():
                if writable:
                    raise CopyRequiredError("a torch out tensor with a lazy conjugate/negative bit cannot be shared with cupy")
                reason = "torch tensor with a lazy conjugate/negative bit cannot be exported, resolved into a copy"
                require_copy(reason, allow_copy)
                obj = obj.resolve_conj().resolve_neg()
            source_ptr = obj.data_ptr() if obj.numel() else None
        elif kind in ("jax", "jaxlib"):
            try:
                source_ptr = obj.unsafe_buffer_pointer() if obj.size else None
            except Exception:  # noqa: BLE001 - sharded or deleted: the import decides
                source_ptr = None
        try:
            arr = cupy.from_dlpack(obj)
        except (BufferError, RuntimeError, TypeError, ValueError, NotImplementedError) as err:
            raise TypeError(f"cupy cannot import {type(obj).__name__} through DLPack: {err}") from err
        if reason is None and source_ptr is not None and arr.size and arr.data.ptr != source_ptr:
            reason = f"{kind} array: CuPy copied it on import"
            if writable or not allow_copy:
                raise CopyRequiredError(reason)
        return arr, reason

    # -- primitives ---------------------------------------------------------------------
    def asarray(self, obj: Any) -> cupy.ndarray:
        return obj  # only cupy arrays get here (the driver adopts everything else)

    def view(self, a: cupy.ndarray, shape: tuple[int, ...]) -> cupy.ndarray:
        v = a.view()
        try:
            v.shape = shape  # never copies: raises when the strides cannot express ``shape``
        except AttributeError as e:  # (cupy's setter says so as AttributeError; numpy's and torch's ValueError/RuntimeError)
            raise ValueError(str(e)) from None
        return v

    def vectors_last_copy(self, a: cupy.ndarray, axis: int, dtype: Any) -> cupy.ndarray:
        with a.device:
            moved = cupy.moveaxis(a, axis, -1)
            return cupy.moveaxis(moved.astype(dtype, order="C", copy=True), -1, axis)

    def c_order_copy(self, a: cupy.ndarray, dtype: Any) -> cupy.ndarray:
        with a.device:
            return a.astype(dtype, order="C", copy=True)

    def empty(self, shape: tuple[int, ...], dtype: Any, like: cupy.ndarray) -> cupy.ndarray:
        with like.device:
            return cupy.empty(shape, dtype=dtype)

    def conj_flag(self, rows: int, x2_strides: tuple, a: cupy.ndarray, y2_strides: tuple) -> bool:
        """cuBLAS conjugates A (op C) wherever it reads A's memory transposed."""
        m, n = a.shape
        return a.dtype.char in "FD" and conj_readable(rows, n, m, x2_strides, _element_strides(a.T), y2_strides)

    def conj_copy(self, x2: cupy.ndarray) -> cupy.ndarray:
        with x2.device:
            return cupy.conjugate(x2, out=cupy.empty(x2.shape, x2.dtype))

    def conj_inplace(self, y: cupy.ndarray, tracked: bool = False) -> cupy.ndarray:
        with y.device:
            return cupy.conjugate(y, out=y)

    def gemm(
        self, x2: cupy.ndarray, a: cupy.ndarray, out: cupy.ndarray | None = None, conj: bool = False, trans: bool = True
    ) -> cupy.ndarray:
        """``out = x2 @ a.T`` (``x2 @ a`` without ``trans``; the second operand conjugated
        with ``conj``: cuBLAS's op C) on the views as they are, on the current stream."""
        a_t = a.T if trans else a
        rows, n = x2.shape
        m = a_t.shape[1]
        dtype = x2.dtype
        with x2.device:
            if out is None:
                out = cupy.empty((rows, m), dtype=dtype)
            if rows == 0 or m == 0:
                return out
            if n == 0:
                out.fill(0)
                return out
            if dtype.char in _CUBLAS_CHARS:
                _cublas_gemm(x2, a_t, out, conj)
            else:
                _kernel_gemm(x2, a_t, out)
        return out

    def stack(self, parts: list, shape: tuple[int, ...]) -> cupy.ndarray:
        return cupy.stack(parts).reshape(shape)

    def assign(self, dst: cupy.ndarray, src: cupy.ndarray) -> None:
        with dst.device:
            cupy.copyto(dst, src, casting="no")

    def broadcast_copy(self, a: cupy.ndarray, shape: tuple[int, ...]) -> cupy.ndarray:
        with a.device:
            return cupy.broadcast_to(a, shape).copy()



def _cublas_gemm(x2: cupy.ndarray, a_t: cupy.ndarray, out: cupy.ndarray, conj: bool = False) -> None:
    """One cuBLAS call per block of at most 2**31 - 1 rows (one block in practice)."""
    from cupy_backends.cuda.libs import cublas  # loads libcublas: only when a GPU computes

    dtype = x2.dtype
    if dtype.char == "e":  # float16: cublasGemmEx, products accumulated in float32
        one, zero = np.ones((), np.float32), np.zeros((), np.float32)
    else:
        one, zero = np.ones((), dtype), np.zeros((), dtype)
    handle = cupy.cuda.device.get_cublas_handle()
    stream = cupy.cuda.get_current_stream()
    old_stream = cublas.getStream(handle)
    old_mode = cublas.getPointerMode(handle)
    cublas.setStream(handle, stream.ptr)
    cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)
    try:
        rows, n = x2.shape
        m = a_t.shape[1]
        block = min(rows, CUBLAS_INT_MAX)
        for start in range(0, rows, block):
            stop = min(rows, start + block)
            xs, ys = x2[start:stop], out[start:stop]
            try:
                args = cublas_args(
                    stop - start, n, m, _element_strides(xs), _element_strides(a_t), _element_strides(ys), conj
                )
            except OverflowError as err:
                raise ValueError(f"the cupy engine cannot call cuBLAS on these views: {err}") from None
            first = (xs if args.first == "x2" else a_t).data.ptr
            second = (xs if args.second == "x2" else a_t).data.ptr
            common = (handle, args.transa, args.transb, args.m, args.n, args.k, one.ctypes.data)
            if dtype.char == "e":
                cublas.gemmEx(
                    *common, first, _R_16F, args.lda, second, _R_16F, args.ldb, zero.ctypes.data,
                    ys.data.ptr, _R_16F, args.ldc, cublas.CUBLAS_COMPUTE_32F, cublas.CUBLAS_GEMM_DEFAULT,
                )  # fmt: skip
            else:
                gemm = {"f": cublas.sgemm, "d": cublas.dgemm, "F": cublas.cgemm, "D": cublas.zgemm}[dtype.char]
                gemm(*common, first, args.lda, second, args.ldb, zero.ctypes.data, ys.data.ptr, args.ldc)
    finally:
        cublas.setPointerMode(handle, old_mode)
        cublas.setStream(handle, old_stream)


def _kernel_gemm(x2: cupy.ndarray, a_t: cupy.ndarray, out: cupy.ndarray) -> None:
    rows, n = x2.shape
    m = a_t.shape[1]
    threads = 256
    blocks = max(1, min(math.ceil(rows * m / threads), 65535))
    sizes = (rows, m, n, *_element_strides(x2), *_element_strides(a_t), *_element_strides(out))
    args = (x2, a_t, out, *(np.int64(v) for v in sizes))
    _strided_kernel(x2.dtype)((blocks,), (threads,), args)  # on the current stream


ENGINE_CLASS = CupyEngine
