"""How another library's memory enters JAX: shared through DLPack where JAX's CPU client
can wrap it as it is, else copied (reported) or refused (``copy=False``).

numpy arrays and torch tensors are imported through DLPack (read-only
numpy arrays, which DLPack cannot export to JAX, through ``jax.device_put``), and the
pointer of the imported array is compared with the source's to know whether memory is
shared.  JAX's CPU client wraps foreign memory only when it is 64-byte aligned, dense and
in native byte order; a dense but transposed operand (e.g. ``A.T`` of a C-ordered array)
would be wrapped, but XLA's CPU program then copies it to row-major before the dot, so the
engine takes only C-ordered operands as shared.  Otherwise the data is copied
(``copy=None``, reported by ``plan``) or :class:`batchmv.CopyRequiredError` is raised
(``copy=False``); these conditions are checked before an import is attempted (some
imports of unusual layouts would fail or copy silently).  In the other direction, numpy
and torch read jax arrays in place (DLPack); a result computed by numpy or torch is
wrapped as it is (the numpy engine allocates its results 64-byte aligned for this).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import require_copy
from .._errors import CopyRequiredError
from .._memory import ALIGNMENT, aligned_empty


def _layout_problem(
    shape: tuple[int, ...], byte_strides: tuple[int, ...], itemsize: int, any_order: bool = False
) -> Optional[str]:
    """Why JAX cannot use memory with these strides as it is, or None for C order (for any
    dense layout when ``any_order``); size-1 axes may have any stride.

    JAX's DLPack import wraps any dense layout (a transposition of a C-ordered buffer), but
    XLA's CPU programs copy an operand whose layout is not row-major to row-major before the
    dot (a temporary of its size; the jax tests read it in the compiled program), so only C
    order is taken as shared.

    >>> _layout_problem((3, 4), (16, 4), 4) is None
    True
    >>> _layout_problem((3, 4), (4, 12), 4).split(":")[0]  # column-major
    'byte strides (4, 12) (not C order'
    >>> _layout_problem((3, 4), (32, 4), 4)  # every other row
    'byte strides (32, 4) (JAX wraps only dense memory)'
    """
    def walks_densely(axes: list[tuple[int, int]]) -> bool:  # (stride, size), innermost first
        step = itemsize
        for stride, size in axes:
            if stride != step:
                return False
            step *= size
        return True

    live = [(s, n) for s, n in zip(byte_strides, shape) if n != 1]
    if walks_densely(live[::-1]):
        return None
    if walks_densely(sorted(live)):
        return None if any_order else (
            f"byte strides {tuple(byte_strides)} (not C order: XLA's CPU programs copy an operand "
            "that is not row-major before the dot)"
        )
    return f"byte strides {tuple(byte_strides)} (JAX wraps only dense memory)"


def _jax_dtype(name: str) -> np.dtype:
    """The dtype called ``name`` as JAX holds it, or TypeError when JAX cannot hold it as is."""
    try:
        dtype = np.dtype(getattr(jnp, name)) if hasattr(jnp, name) else np.dtype(name)
    except TypeError:
        raise TypeError(f"jax has no dtype {name}") from None
    if not jax.dlpack.is_supported_dtype(dtype):
        raise TypeError(f"the jax engine cannot hold arrays of dtype {dtype}")
    held = np.dtype(jax.dtypes.canonicalize_dtype(dtype))
    if held != dtype:
        raise TypeError(
            f"jax holds {dtype} as {held} while jax_enable_x64 is off, which would silently change the "
            f"computation; enable it (JAX_ENABLE_X64=1 or jax.config.update('jax_enable_x64', True)) "
            f"or cast the input to {held} yourself"
        )
    return dtype


def _misaligned(ptr: int) -> str:
    return (
        f"data at an address {ptr % ALIGNMENT} bytes past a 64-byte boundary "
        "(JAX's CPU client wraps only 64-byte-aligned memory)"
    )


def _aligned_copy(arr: np.ndarray) -> np.ndarray:
    """A C-ordered, native-byte-order, 64-byte-aligned copy of ``arr`` (which JAX can wrap)."""
    buf = aligned_empty(arr.shape, arr.dtype.newbyteorder("="))
    np.copyto(buf, arr, casting="equiv")
    return buf


def _checked_share(arr: Any, source_ptr: int, allow_copy: bool, what: str) -> tuple[Any, Optional[str]]:
    """``arr`` (just imported) and None when it shares ``source_ptr``; else report the copy."""
    if arr.unsafe_buffer_pointer() == source_ptr:
        return arr, None
    reason = f"{what}: JAX copied it on import"
    require_copy(reason, allow_copy)
    return arr, reason


def from_numpy(arr: np.ndarray, allow_copy: bool, any_order: bool = False) -> tuple[Any, Optional[str]]:
    """A numpy array as a jax array on the CPU, sharing its memory where JAX allows it."""
    dtype = _jax_dtype(arr.dtype.newbyteorder("=").name)
    if arr.size == 0:
        return jnp.zeros(arr.shape, dtype), None  # no memory to share
    ptr = arr.__array_interface__["data"][0]
    problem = None
    if not arr.dtype.isnative:
        problem = f"byte order {arr.dtype.str}"
    elif layout := _layout_problem(arr.shape, arr.strides, dtype.itemsize, any_order):
        problem = layout
    elif ptr % ALIGNMENT:
        problem = _misaligned(ptr)
    if problem is None:
        try:
            if arr.flags.writeable:
                imported = jax.dlpack.from_dlpack(arr, copy=False)
            else:  # numpy exports read-only arrays only to DLPack >= 1.0 consumers
                on_default = jax.default_backend() == "cpu"  # then stay uncommitted
                with jax.ensure_compile_time_eval():  # a concrete array, also inside jax.jit
                    imported = jax.device_put(arr, None if on_default else jax.local_devices(backend="cpu")[0])
        except (BufferError, ValueError, RuntimeError, TypeError) as err:
            problem = f"a failed DLPack import ({err})"
        else:
            return _checked_share(imported, ptr, allow_copy, "numpy array")
    reason = f"numpy array with {problem} cannot be shared with jax, copied"
    require_copy(reason, allow_copy)
    return jax.dlpack.from_dlpack(_aligned_copy(arr), copy=False), reason


def from_torch(t: Any, allow_copy: bool, any_order: bool = False) -> tuple[Any, Optional[str]]:
    """A torch tensor as a jax array sharing its memory where JAX allows it."""
    import torch

    dtype = _jax_dtype(str(t.dtype).removeprefix("torch."))
    if t.numel() == 0:
        return jnp.zeros(tuple(t.shape), dtype), None  # no memory to share
    t = t.detach()  # the front end has refused tensors that need grad
    itemsize = t.element_size()
    problem = None
    if t.is_conj() or t.is_neg():
        problem = "a lazy conjugate/negative bit"
    elif layout := _layout_problem(tuple(t.shape), tuple(s * itemsize for s in t.stride()), itemsize, any_order):
        problem = layout
    elif t.device.type == "cpu" and t.data_ptr() % ALIGNMENT:
        problem = _misaligned(t.data_ptr())
    if problem is None:
        try:
            imported = jax.dlpack.from_dlpack(t, copy=False)
        except (BufferError, ValueError, RuntimeError, TypeError) as err:
            raise TypeError(f"jax cannot import a torch tensor on {t.device}: {err}") from err
        return _checked_share(imported, t.data_ptr(), allow_copy, "torch tensor")
    reason = f"torch tensor with {problem} cannot be shared with jax, copied"
    require_copy(reason, allow_copy)
    copy = t.resolve_conj().resolve_neg().clone(memory_format=torch.contiguous_format)  # 64-byte aligned
    try:
        return jax.dlpack.from_dlpack(copy), reason
    except (BufferError, ValueError, RuntimeError, TypeError) as err:
        raise TypeError(f"jax cannot import a torch tensor on {t.device}: {err}") from err


def from_dlpack_object(obj: Any, allow_copy: bool, any_order: bool = False) -> tuple[Any, Optional[str]]:
    """Another library's array: through numpy when it lives on the CPU (so that the checks
    above apply), else straight through DLPack."""
    try:
        on_cpu = obj.__dlpack_device__()[0] == 1  # kDLCPU
    except (AttributeError, TypeError) as err:
        raise TypeError(f"jax cannot import {type(obj).__name__}: it has no usable __dlpack_device__") from err
    try:
        if on_cpu:
            return from_numpy(np.from_dlpack(obj), allow_copy, any_order)
        return jax.dlpack.from_dlpack(obj, copy=None if allow_copy else False), None
    except CopyRequiredError:
        raise
    except (BufferError, RuntimeError, ValueError) as err:
        raise TypeError(f"jax cannot import {type(obj).__name__} through DLPack: {err}") from err
