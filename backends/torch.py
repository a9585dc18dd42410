"""The torch engine: ``torch.mm`` on BLAS-readable 2-D views (one GEMM, autograd intact).

CUDA tensors are computed where they are, on torch's current stream
(``torch.cuda.current_stream()``), like any torch operation; A, x and out must be on one
device (TypeError otherwise; nothing is moved).  float32 products use TF32 exactly when
the caller enabled it in torch (``torch.backends.cuda.matmul.allow_tf32``,
``torch.set_float32_matmul_precision``): batchmv never changes those settings.  torch.mm
has no integer kernel on CUDA, so integer CUDA tensors are refused with TypeError.  Other
libraries' CUDA arrays are imported with ``torch.from_dlpack``, which passes torch's
current stream to the producer's ``__dlpack__(stream=...)``.

Under ``torch.func`` transforms (vmap, grad) strides are not observable, so the call is
expressed with ``torch.matmul`` on the moved vector axis and the transform's batching
rules take over.  Under ``torch.compile`` the front end's Python runs at trace time: the
engine is chosen then, and the traced graph holds just the views and one ``mm``.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import numpy as np
import torch

from .._checks import dlpack_device, require_copy
from .._engine import StridedEngine
from .._errors import CopyRequiredError
from ._torch_mm import keeps_conj

_is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor  # (vmap/grad wrappers)
_unpack_dual = torch.autograd.forward_ad.unpack_dual
_linear = torch.nn.functional.linear
_compiling = torch.compiler.is_compiling
_STRIDED = torch.strided
_C128 = torch.complex128
#: torch's own CPU kernels (clone, copy_, mul, conj_physical, mv) read complex128 with
#: 16-byte vector loads, and crash the process (SIGSEGV, torch 2.13) on memory that is only
#: 8-byte aligned, as numpy's complex128 views can be: such tensors are refused, and a numpy
#: array of that kind is copied (by numpy) before torch computes on it
_MISALIGNED = (
    "a complex128 tensor whose memory is not 16-byte aligned: torch's own kernels (clone, mul, "
    "torch.mv) crash the process on it; copy it through numpy first (torch.from_numpy(t.numpy().copy()))"
)


def _misaligned(a: torch.Tensor) -> bool:
    if a.dtype != _C128 or a.device.type != "cpu":
        return False
    try:
        return a.data_ptr() % 16 != 0
    except RuntimeError:  # no storage (tensors under a transform or a compiler): no memory to read
        return False

#: complex dtypes, whose conjugated temporaries (an adjoint's x) are allocated by numpy from
#: :data:`_HUGE` bytes on (see TorchEngine.conj_copy)
_NUMPY_COMPLEX = {torch.complex64: np.complex64, torch.complex128: np.complex128}
_HUGE = 1 << 22

# dtypes torch.mm computes on the CPU
_MM_DTYPES = frozenset(
    {
        torch.float16, torch.bfloat16, torch.float32, torch.float64,
        torch.complex64, torch.complex128,
        torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8,
    }
)  # fmt: skip


#: ``__torch_function__`` of torch.Tensor and of nn.Parameter (which disables it): a class
#: with another one overrides what torch's functions do with its tensors
_PLAIN_TORCH_FUNCTION = (torch.Tensor.__torch_function__.__func__, torch.nn.Parameter.__torch_function__)


def _numpy_loses(a: torch.Tensor) -> Optional[str]:
    """Why a numpy view of ``a`` (another engine's product on its memory) would lose what
    torch's own product keeps, or None: a tangent of forward-mode AD, or a class whose
    ``__torch_function__`` torch's functions go through."""
    if type(a) is not torch.Tensor:
        own = type(a).__torch_function__
        if getattr(own, "__func__", own) not in _PLAIN_TORCH_FUNCTION:
            return f"its class {type(a).__name__} overrides __torch_function__, which another engine would bypass"
    if _unpack_dual(a).tangent is not None:
        return "it carries a forward-mode AD tangent (torch.autograd.forward_ad), which another engine would drop"
    return None


class TorchEngine(StridedEngine):
    name = "torch"
    expression_kernel = "matmul under a torch.func transform"
    expression_note = "inputs are being transformed by torch.func (vmap/grad): torch.matmul on the moved vector axis runs under the transform"
    conj_note = (
        "torch.mm hands BLAS the conjugate flag only for an operand it reads transposed; "
        "on these views it would resolve A's conjugate into a copy of A"
    )

    def is_native(self, obj: Any) -> bool:
        return isinstance(obj, torch.Tensor)

    # int() specialises symbolic sizes under torch.compile(dynamic=...): the layout, and so
    # the views and GEMM in the graph, are decided for concrete shapes and strides.
    def shape(self, a: torch.Tensor) -> tuple[int, ...]:
        return tuple([int(s) for s in a.shape])

    def strides(self, a: torch.Tensor) -> tuple[Optional[int], ...]:
        return tuple([int(s) for s in a.stride()])

    def dtype_name(self, a: torch.Tensor) -> str:
        return str(a.dtype).removeprefix("torch.")

    def itemsize(self, a: torch.Tensor) -> int:
        return a.element_size()

    def device(self, a: torch.Tensor) -> str:
        return str(a.device)

    def address(self, a: torch.Tensor) -> tuple[int, int]:
        return a.data_ptr(), a.storage_offset() * a.element_size()

    def is_writable(self, a: torch.Tensor) -> bool:
        return not a.is_inference() or torch.is_inference_mode_enabled()

    def result_dtype(self, a: torch.Tensor, x: torch.Tensor) -> torch.dtype:
        try:
            dtype = torch.promote_types(a.dtype, x.dtype)
        except RuntimeError as err:  # (float8 types have no promotion)
            raise TypeError(f"the torch engine cannot combine dtypes {a.dtype} and {x.dtype}: {err}") from err
        if a.device.type == "cuda":
            _check_cuda_dtype(dtype)
        return dtype

    def check_dtype(self, dtype: torch.dtype) -> None:
        if dtype not in _MM_DTYPES:
            raise TypeError(f"the torch engine cannot multiply tensors of dtype {dtype} (torch.mm does not support it)")

    def tracks_graph(self, *arrays: torch.Tensor) -> bool:
        return torch.is_grad_enabled() and any(a.requires_grad for a in arrays)

    def in_transform(self, *arrays: torch.Tensor) -> bool:
        if torch.compiler.is_compiling():  # dynamo sees through transforms; strides are known
            return False
        return any(_is_wrapped(a) for a in arrays)

    def compiling(self) -> bool:
        return torch.compiler.is_compiling()

    def run_eagerly(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return torch.compiler.disable(fn, recursive=True)(*args, **kwargs)

    def signature(self, a: torch.Tensor, x: torch.Tensor) -> Optional[tuple]:
        if torch.compiler.is_compiling() or _is_wrapped(a) or _is_wrapped(x):
            return None
        try:
            return (
                torch.is_grad_enabled(),
                a.layout, a.shape, a.stride(), a.dtype, a.device, a.requires_grad, a.is_conj(), a.is_neg(),
                x.layout, x.shape, x.stride(), x.dtype, x.device, x.requires_grad, x.is_conj(), x.is_neg(),
            )  # fmt: skip
        except RuntimeError:  # no strides (sparse CSR): the full checks say what to do
            return None

    def layout_key(self, a: Any) -> Optional[tuple]:
        # Tensors under a torch.func transform have keys too: a run remembered outside is a
        # chain of torch calls, which the transform's rules take (calls built under a
        # transform are not remembered: batchmv._cache).  The device stays in the key:
        # F.linear takes a "meta" x with a CPU A.
        if _compiling():
            return None
        try:
            if a.layout is not _STRIDED:  # (sparse tensors: the checks say what to do)
                return None
            dtype = a.dtype
            if dtype is _C128 and _misaligned(a):  # (refused by the checks)
                return None
            return (a.shape, a.stride(), dtype, a.device, a.is_conj(), a.is_neg())
        except (AttributeError, RuntimeError):  # not a tensor; no sizes (nested tensors)
            return None

    def layout_keys(self, a: Any, x: Any) -> Optional[tuple]:
        # layout_key's tuple for each, read inline: one compiler check and no call per
        # array (0.1 us of a repeated torch matvec's 2.6 us of overhead, measured)
        if _compiling():
            return None
        try:
            if a.layout is not _STRIDED or x.layout is not _STRIDED:
                return None
            dtype_a, dtype_x = a.dtype, x.dtype
            if (dtype_a is _C128 and _misaligned(a)) or (dtype_x is _C128 and _misaligned(x)):
                return None  # (refused by the checks)
            return (
                (a.shape, a.stride(), dtype_a, a.device, a.is_conj(), a.is_neg()),
                (x.shape, x.stride(), dtype_x, x.device, x.is_conj(), x.is_neg()),
            )  # fmt: skip
        except (AttributeError, RuntimeError):
            return None

    def is_complex(self, a: torch.Tensor) -> bool:
        return a.is_complex()

    def plain(self, a: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """A lazy conjugate bit of A (``A.conj()``, ``A.mH``) becomes the GEMM's conjugate
        flag, on a view of A's memory without the bit: it is never resolved into a copy of A."""
        if not torch.compiler.is_compiling() and a.is_conj():  # (the compiler resolves bits in the graph)
            return a.conj(), True  # conj() of a conjugate view: the same memory, bit cleared
        return a, False

    def conj_flag(self, rows: int, x2_strides: tuple, a: torch.Tensor, y2_strides: tuple) -> bool:
        """Whether ``torch.mm(x2, a.t().conj())`` hands the conjugate bit to BLAS (op C)
        instead of resolving it into a copy of A (:func:`._torch_mm.keeps_conj`).  CUDA is
        not decided here (torch's CUDA rule is not checked by batchmv's tests): CUDA calls
        conjugate x and y instead."""
        if torch.compiler.is_compiling() or a.device.type != "cpu":
            return False
        m, n = (int(s) for s in a.shape)
        return keeps_conj(rows, m, n, (int(a.stride(1)), int(a.stride(0))), tuple(y2_strides))

    def must_copy(self, a: torch.Tensor) -> Optional[str]:
        if torch.compiler.is_compiling():  # the compiler resolves lazy bits in the graph
            return None
        if a.is_conj():
            return "has torch's lazy conjugate bit; resolved into a copy"
        if a.is_neg():
            return "has torch's lazy negative bit; resolved into a copy"
        return None

    def host(self, a: torch.Tensor, writable: bool = False) -> Optional[np.ndarray]:
        """A CPU tensor's memory as numpy sees it; None under torch.compile or a transform
        (the graph must hold the product), for lazy conjugate/negative bits, for what a numpy
        view would lose (:func:`_numpy_loses`), and where a result must stay in the autograd
        graph (the caller has refused those already)."""
        if torch.compiler.is_compiling() or _is_wrapped(a) or a.device.type != "cpu" or a.is_conj() or a.is_neg():
            return None
        if _numpy_loses(a):
            return None
        if a.dtype not in (torch.float32, torch.float64) or (writable and a.requires_grad):
            return None
        if writable:  # numpy's writes bypass autograd's version counter: count this one
            torch.autograd.graph.increment_version(a)
        return a.detach().numpy()

    def threads(self) -> int:
        return torch.get_num_threads()

    # -- crossing libraries --------------------------------------------------------------
    def adopt(self, obj: Any, *, allow_copy: bool, writable: bool, source: Any = None) -> tuple[torch.Tensor, Optional[str]]:
        if isinstance(obj, np.ndarray):
            return _from_numpy(obj, allow_copy=allow_copy, writable=writable)
        if dlpack_device(obj) == "cpu":
            # torch.from_dlpack takes any layout it is given, and negative strides abort the
            # process, misaligned memory crashes its kernels: numpy's import reads the layout
            # (a view), and _from_numpy shares or copies it as it does any numpy array
            try:
                view = np.from_dlpack(obj)
            except (BufferError, RuntimeError, TypeError, ValueError):
                view = None  # (a dtype numpy has not: bfloat16 and the like, which torch imports)
            if view is not None:
                return _from_numpy(view, allow_copy=allow_copy, writable=writable)
        try:
            return torch.from_dlpack(obj), None
        # (AssertionError: a CUDA producer on a CPU-only torch; AttributeError: no __dlpack_device__)
        except (AssertionError, AttributeError, BufferError, RuntimeError, TypeError, ValueError) as err:
            raise TypeError(
                f"the torch engine cannot import {type(obj).__name__} (dtype {getattr(obj, 'dtype', '?')}) through DLPack: {err}"
            ) from err

    def astype(self, a: torch.Tensor, dtype: Any) -> torch.Tensor:
        return a.to(dtype)

    def export_refusal(self, a: torch.Tensor) -> Optional[str]:
        if torch.compiler.is_compiling():
            return "torch.compile is tracing it; only the torch engine can be traced"
        if self.in_transform(a):
            return "it is being transformed by torch.func (vmap/grad); only the torch engine can trace it"
        if a.requires_grad and torch.is_grad_enabled():
            return "it requires grad; another engine would detach it and drop the gradient"
        return _numpy_loses(a)

    def exportable(self, a: torch.Tensor, allow_copy: bool) -> tuple[torch.Tensor, Optional[str]]:
        if a.is_conj() or a.is_neg():  # (DLPack would carry the raw memory: a conjugate refused, a negative lost)
            reason = "tensor with a lazy conjugate/negative bit, which DLPack does not carry: resolved into a copy"
            require_copy(reason, allow_copy)
            return a.resolve_conj().resolve_neg(), reason
        return a, None

    def check_out(self, out: torch.Tensor) -> None:
        if out.requires_grad and torch.is_grad_enabled():
            raise ValueError("out= cannot be a tensor that requires grad: autograd cannot record a write into it")
        if _misaligned(out):
            raise TypeError(f"out: {_MISALIGNED}")

    def export_numpy(self, a: torch.Tensor, *, allow_copy: bool, writable: bool) -> tuple[np.ndarray, Optional[str]]:
        """A CPU tensor as a numpy array sharing its memory (``Tensor.numpy``, not DLPack,
        which cannot carry lazy conjugate/negative bits)."""
        if a.device.type != "cpu":
            raise TypeError(f"numpy cannot use a tensor on {a.device}; nothing is moved between devices")
        if a.dtype not in (torch.float16, torch.float32, torch.float64, torch.complex64, torch.complex128) and (
            a.dtype.is_floating_point or a.dtype.is_complex
        ):
            raise TypeError(f"numpy has no dtype for {a.dtype}")
        if a.is_conj() or a.is_neg():
            reason = "tensor with a lazy conjugate/negative bit cannot be exported, resolved into a copy"
            if writable:
                raise CopyRequiredError(f"out {reason}")
            require_copy(reason, allow_copy)
            return a.resolve_conj().resolve_neg().numpy(), reason
        return a.detach().numpy(), None  # export_refusal has refused tensors that need grad

    # -- primitives ---------------------------------------------------------------------
    def asarray(self, obj: Any) -> torch.Tensor:
        if isinstance(obj, torch.Tensor) and (obj.layout != torch.strided or obj.is_nested or obj.is_quantized):
            kind = "nested" if obj.is_nested else "quantized" if obj.is_quantized else str(obj.layout)
            raise TypeError(f"the torch engine computes on dense (strided) tensors; got a {kind} tensor")
        if isinstance(obj, torch.Tensor) and _misaligned(obj):
            raise TypeError(_MISALIGNED)
        return torch.as_tensor(obj)

    def permute(self, a: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
        # (the transpose of a matrix: t() takes half the time of permute's argument parsing)
        return a.t() if axes == (1, 0) else a.permute(axes)

    def view(self, a: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return a.view(shape)

    def row_view(self, x2: torch.Tensor) -> torch.Tensor:
        # torch's CPU GEMM reads a one-row matrix in place when its row stride is at least
        # its length, or as a column-major row (row stride 1); any other row stride (0, of a
        # broadcast row) makes it copy the row (aten::clone): the same row, viewed (n, 1)
        # and transposed, has row stride 1
        if x2.dim() == 2 and x2.shape[0] == 1 and x2.shape[1] > 1 and x2.stride(0) != 1 and x2.stride(0) < x2.shape[1]:
            return x2.view(x2.shape[1]).unsqueeze(1).t()
        return x2

    def take_first(self, a: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
        for axis in axes:
            a = a.narrow(axis, 0, 1)
        return a

    def vectors_last_copy(self, a: torch.Tensor, axis: int, dtype: torch.dtype) -> torch.Tensor:
        moved = a.movedim(axis, -1)
        copy = torch.empty(moved.shape, dtype=dtype, device=a.device)
        copy.copy_(moved)
        return copy.movedim(-1, axis)

    def c_order_copy(self, a: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:  # (resolves lazy bits)
        if a.dtype == dtype and not (a.is_conj() or a.is_neg()):
            return a.clone(memory_format=torch.contiguous_format)  # (faster than empty + copy_ by a few us)
        copy = torch.empty(a.shape, dtype=dtype, device=a.device)
        copy.copy_(a)
        return copy

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, like: torch.Tensor) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=like.device)

    def gemm(
        self, x2: torch.Tensor, a: torch.Tensor, out: torch.Tensor | None = None, conj: bool = False, trans: bool = True
    ) -> torch.Tensor:
        if x2.is_cuda:  # (another library's CUDA arrays, computed by torch)
            _check_cuda_dtype(x2.dtype)
        if conj or not trans:  # (conj: a lazy conjugate view, whose bit torch.mm hands to BLAS)
            b = a.t() if trans else a
            b = b.conj() if conj else b
            return torch.mm(x2, b) if out is None else torch.mm(x2, b, out=out)
        if out is None:
            return _linear(x2, a)  # x2 @ a.T: torch.mm on the transposed view, without a Python step
        return torch.mm(x2, a.t(), out=out)

    def gemm_kernel(self, x2: torch.Tensor, a: torch.Tensor, trans: bool = True, conj: bool = False) -> Any:
        if not conj:  # _linear(x2, a) is x2 @ a.T: torch.mm on the transposed view
            return _linear if trans else torch.mm
        return super().gemm_kernel(x2, a, trans, conj)

    def gemv_kernel(self, a: torch.Tensor, x: torch.Tensor, trans: bool = False) -> Any:
        if x.dim() != 1 or a.dtype != x.dtype or (x.stride(0) == 0 and x.shape[0] > 1):
            return None  # (torch.mv copies a broadcast vector)
        return (lambda a, x: torch.mv(a.t(), x)) if trans else torch.mv

    def conj_copy(self, x2: torch.Tensor) -> torch.Tensor:
        numpy_dtype = None if torch.compiler.is_compiling() else _NUMPY_COMPLEX.get(x2.dtype)
        if (
            numpy_dtype is not None and x2.device.type == "cpu" and x2.numel() * x2.element_size() >= _HUGE
            and not (x2.requires_grad and torch.is_grad_enabled()) and _unpack_dual(x2).tangent is None
        ):  # fmt: skip (conj_physical's out= form has no forward-mode AD)
            # numpy asks the kernel for transparent huge pages for large arrays (madvise), torch's
            # CPU allocator does not: a fresh buffer of small pages costs a fault per 4 KiB
            buf = torch.from_numpy(np.empty(tuple(x2.shape), numpy_dtype))
            return torch.conj_physical(x2, out=buf)
        if x2.is_contiguous():  # (conj_physical keeps a dense layout: C order here)
            return torch.conj_physical(x2)
        copy = torch.empty(x2.shape, dtype=x2.dtype, device=x2.device)
        copy.copy_(x2.conj())  # (copy_ writes the conjugated values; autograd records it)
        return copy

    def conj_inplace(self, y: torch.Tensor, tracked: bool = False) -> torch.Tensor:
        return torch.conj_physical(y) if tracked else y.conj_physical_()

    def stack(self, parts: list, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.stack(parts).view(shape)

    def assign(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        dst.copy_(src)

    def broadcast_copy(self, a: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return a.expand(shape).clone(memory_format=torch.contiguous_format)

    def expression(self, a: torch.Tensor, x: torch.Tensor, axis: int, op: str = "N") -> torch.Tensor:
        conj = op in ("H", "C") and a.is_complex()  # conj(A) @ x == conj(A @ conj(x)): A stays as it is
        v = x.movedim(axis, -1)
        y = torch.matmul(v.conj() if conj else v, a if op in ("T", "H") else a.mT)
        # (lazy conjugates: transforms batch them, unlike conj_physical)
        return (y.conj().resolve_conj() if conj else y).movedim(-1, axis)


def _check_cuda_dtype(dtype: torch.dtype) -> None:
    """TypeError for dtypes torch.mm computes on the CPU only (integers, bool)."""
    if not (dtype.is_floating_point or dtype.is_complex):
        raise TypeError(
            f"the torch engine cannot multiply {dtype} tensors on CUDA: torch.mm has no integer "
            "kernel on CUDA (only on the CPU); the cupy engine multiplies integers on the GPU"
        )


def _from_numpy(arr: np.ndarray, *, allow_copy: bool, writable: bool) -> tuple[torch.Tensor, Optional[str]]:
    """A numpy array as a tensor sharing its memory (``torch.from_numpy``, never DLPack,
    whose import of some numpy layouts aborts the process)."""
    problem = None
    if arr.dtype.byteorder not in "=|" or not arr.dtype.isnative:
        problem = f"byte order {arr.dtype.str}"
    elif not arr.flags.aligned:
        problem = "misaligned data"
    elif arr.dtype == np.complex128 and arr.ctypes.data % 16:
        problem = "complex128 data not 16-byte aligned (torch's kernels crash on it)"
    elif any(s < 0 for s in arr.strides):
        problem = f"negative strides {arr.strides}"
    elif any(s % arr.itemsize for s in arr.strides):
        problem = f"strides {arr.strides} that are not whole elements"
    elif writable and not arr.flags.writeable:
        raise ValueError("out is a read-only numpy array")
    if problem is None:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "The given NumPy array is not writable")
                return torch.from_numpy(arr), None
        except TypeError as err:  # a dtype torch does not have
            raise TypeError(f"torch cannot share a numpy array of dtype {arr.dtype}: {err}") from err
    if writable:
        raise CopyRequiredError(f"torch cannot share the numpy out array ({problem})")
    reason = f"numpy array with {problem} cannot be shared with torch, copied"
    require_copy(reason, allow_copy)
    return torch.from_numpy(np.array(arr, dtype=arr.dtype.newbyteorder("="), order="C")), reason


ENGINE_CLASS = TorchEngine
