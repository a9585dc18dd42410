"""The array-API engine: any array library that implements the Python array API standard
and that batchmv does not name (array-api-strict, ndonnx, dpnp, ...), computed in the
arrays' own namespace, so that the result stays in the caller's library and on its device.

The registry gives every such library its own instance of this engine, named like the
library's top-level module (``"array_api_strict"``): an array type is one when it has
``__array_namespace__`` (the standard's marker, as array-api-compat's ``is_array_api_obj``
checks) and no named engine or adapter claims it.  The namespace is the library's module
when it declares ``__array_api_version__``, else what ``array_api_compat.array_namespace``
returns for its first array.

What it computes, with the standard's functions only::

    y = xp.moveaxis(xp.matmul(xp.moveaxis(x, axis, -1), xp.matrix_transpose(A)), -1, axis)

Such a library exposes no strides, so batchmv cannot prove what its kernel does: ``plan``
says so, and claims only what batchmv itself does (no copy of its own; casts and ``out=``
writes are copies it reports, and ``copy=False`` refuses them).  Arrays of other libraries
enter through ``xp.from_dlpack(copy=False)`` (the producer shares or refuses); a copy is made,
and reported, only where that fails and copies are allowed.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Optional

from .._engine import Engine
from .._errors import CopyRequiredError

NOTE = (
    "layout not observable: computed with xp.matmul on xp.matrix_transpose(A); no copy is made "
    "by batchmv, the library's own kernel may copy"
)


class ArrayApiEngine(Engine):
    """The engine of one array-API library, named like its top-level module."""

    expression_kernel = "matmul (array API)"
    expression_note = NOTE

    def __init__(self, name: str) -> None:
        self.name = name
        module = sys.modules.get(name) or importlib.import_module(name)
        self._xp = module if hasattr(module, "__array_api_version__") else None

    def namespace(self, a: Any) -> Any:
        """The library's array-API namespace (array-api-compat's answer for its arrays)."""
        if self._xp is None:
            import array_api_compat

            self._xp = array_api_compat.array_namespace(a)
        return self._xp

    # -- questions about native arrays ----------------------------------------------------
    def is_native(self, obj: Any) -> bool:
        kind = type(obj)
        return hasattr(kind, "__array_namespace__") and kind.__module__.split(".")[0] == self.name

    def shape(self, a: Any) -> tuple[int, ...]:
        shape = tuple(a.shape)
        if any(s is None for s in shape):
            raise TypeError(f"a {self.name} array of unknown shape {shape}: batchmv needs concrete shapes")
        return shape

    def dtype_name(self, a: Any) -> str:
        return str(a.dtype).rsplit(".", 1)[-1]

    def itemsize(self, a: Any) -> int:
        xp = self.namespace(a)
        if xp.isdtype(a.dtype, "bool"):
            return 1
        info = xp.finfo(a.dtype) if xp.isdtype(a.dtype, ("real floating", "complex floating")) else xp.iinfo(a.dtype)
        return info.bits // 8 * (2 if xp.isdtype(a.dtype, "complex floating") else 1)

    def device(self, a: Any) -> str:
        return str(a.device)

    def result_dtype(self, a: Any, x: Any) -> Any:
        return self.namespace(x).result_type(a.dtype, x.dtype)

    def check_dtype(self, dtype: Any) -> None:
        xp = self._xp
        if xp is not None and not xp.isdtype(dtype, "numeric"):
            raise TypeError(f"the {self.name} engine cannot multiply arrays of dtype {dtype} (matmul takes numeric dtypes)")

    def signature(self, a: Any, x: Any) -> Optional[tuple]:
        key_a, key_x = self.layout_key(a), self.layout_key(x)
        return None if key_a is None or key_x is None else key_a + key_x

    def layout_key(self, a: Any) -> Optional[tuple]:
        if not self.is_native(a):
            return None
        try:
            key = (tuple(a.shape), a.dtype, str(a.device))
            hash(key)
        except TypeError:
            return None
        return key

    # -- crossing libraries -----------------------------------------------------------------
    def export_refusal(self, a: Any) -> Optional[str]:
        """Arrays off the library's default device stay with its own engine: DLPack may not
        tell another library where they live, and the result would come back elsewhere."""
        info = getattr(self.namespace(a), "__array_namespace_info__", None)
        default = info().default_device() if info is not None else a.device
        if a.device != default:
            return f"it is on {a.device}, not {self.name}'s default device {default}; only its own engine keeps it there"
        return None

    def adopt(self, obj: Any, *, allow_copy: bool, writable: bool, source: Any = None) -> tuple[Any, Optional[str]]:
        """Another library's array in this namespace: ``from_dlpack(copy=False)`` shares it or
        refuses; then, when copies are allowed, ``from_dlpack(copy=True)`` (reported)."""
        xp = self._xp
        if xp is None:
            raise TypeError(f"the {self.name} engine has no namespace yet: pass one of its arrays as x")
        if writable:
            raise CopyRequiredError(f"{self.name} cannot write into another library's out array")
        try:
            return xp.from_dlpack(obj, copy=False), None
        except (BufferError, ValueError) as err:
            reason = f"{type(obj).__name__} cannot be shared with {self.name} through DLPack ({err}), copied"
            if not allow_copy:
                raise CopyRequiredError(reason) from None
        return xp.from_dlpack(obj, copy=True), reason

    # -- computing ----------------------------------------------------------------------------
    def asarray(self, obj: Any) -> Any:
        self.namespace(obj)
        return obj

    def astype(self, a: Any, dtype: Any) -> Any:
        return self.namespace(a).astype(a, dtype)

    def empty(self, shape: tuple[int, ...], dtype: Any, like: Any) -> Any:
        return self.namespace(like).empty(shape, dtype=dtype, device=like.device)

    def assign(self, dst: Any, src: Any) -> None:
        dst[...] = src


ENGINE_CLASS = ArrayApiEngine
