"""The protocol every engine in ``batchmv.backends`` implements.

An engine wraps one array library.  It answers questions about its own arrays (shape,
strides in elements, dtype, device, where the data lives), shares arrays of other
libraries without copying (``adopt``), and offers the few view and GEMM primitives that
the generic driver in :mod:`batchmv._driver` strings together.  Nothing else about a
library is known outside its module.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol


class Engine(Protocol):
    name: str  #: the engine's name in the registry
    transform_kernel: str  #: the kernel ``plan`` reports for calls under a transform
    transform_note: str  #: the note ``plan`` adds to calls under a transform

    # -- questions about native arrays ------------------------------------------------
    def is_native(self, obj: Any) -> bool: ...
    def shape(self, a: Any) -> tuple[int, ...]: ...
    def strides(self, a: Any) -> tuple[Optional[int], ...]:
        """Strides in elements; None where a stride is not a whole number of elements."""
    def dtype_name(self, a: Any) -> str: ...
    def itemsize(self, a: Any) -> int: ...
    def device(self, a: Any) -> str: ...
    def address(self, a: Any) -> tuple[int, int]:
        """(address of the first element, its byte offset from the start of its buffer)."""
    def is_writable(self, a: Any) -> bool: ...
    def needs_blas_layout(self, dtype: Any) -> bool:
        """Whether this engine's GEMM copies operands that BLAS cannot read as they are."""
    def result_dtype(self, a: Any, x: Any) -> Any: ...
    def dtype_of(self, a: Any) -> Any: ...
    def check_dtype(self, dtype: Any) -> None:
        """Raise TypeError when this engine's matmul does not support ``dtype``."""
    def tracks_graph(self, *arrays: Any) -> bool:
        """Whether results must stay differentiable/traceable (no ``out=`` writes)."""
    def in_transform(self, *arrays: Any) -> bool:
        """Whether the arrays are being transformed (vmap) so strides mean nothing."""

    # -- crossing libraries ------------------------------------------------------------
    def adopt(self, obj: Any, *, allow_copy: bool, writable: bool) -> tuple[Any, Optional[str]]:
        """``obj`` (an array of another library) as a native array sharing its memory.

        Returns the array and None, or, when sharing is impossible and ``allow_copy``, a
        copy and the reason.  Raises CopyRequiredError when a copy is needed but not
        allowed; TypeError or ValueError when the call's meaning would be lost.
        """
    def adopt_result(self, obj: Any, *, allow_copy: bool, writable: bool) -> tuple[Any, Optional[str]]:
        """Another engine's result as a native array (like ``adopt``; any layout is fine)."""
    def export_refusal(self, a: Any) -> Optional[str]:
        """Why this native array may not be computed by another engine (gradients, tracers)."""

    # -- primitives for the driver ---------------------------------------------------------
    def asarray(self, obj: Any) -> Any: ...
    def permute(self, a: Any, axes: tuple[int, ...]) -> Any: ...
    def view(self, a: Any, shape: tuple[int, ...]) -> Any: ...
    def take_first(self, a: Any, axes: tuple[int, ...]) -> Any: ...
    def astype(self, a: Any, dtype: Any) -> Any:
        """``a`` converted to ``dtype`` (used under transforms, where nothing is a view)."""
    def vectors_last_copy(self, a: Any, axis: int, dtype: Any) -> Any:
        """A copy of ``a`` as ``dtype`` whose ``axis`` is contiguous (batch axes in C order)."""
    def c_order_copy(self, a: Any, dtype: Any) -> Any:
        """A C-ordered copy of ``a`` as ``dtype`` (lazy conjugate/negative bits resolved)."""
    def signature(self, a: Any, x: Any) -> Optional[tuple]:
        """Everything about native arrays ``a`` and ``x`` (and the library's state, such as
        grad mode) that a call's checks and schedule depend on, not their values; None when
        calls on them must not be remembered (tracers, arrays without strides)."""
    def must_copy(self, a: Any) -> Optional[str]:
        """Why the GEMM cannot read ``a`` as it is whatever its strides (e.g. a lazy conjugate bit)."""
    def empty(self, shape: tuple[int, ...], dtype: Any, like: Any) -> Any:
        """A new C-ordered array that any other engine can adopt without a copy."""
    def gemm(self, x2: Any, a: Any, out: Any = None) -> Any:
        """One GEMM ``x2 @ a.T`` on the views as they are (A is read through its transposed
        view), written into ``out`` when given, else into a new array that stays in this
        library."""
    def stack(self, parts: list, shape: tuple[int, ...]) -> Any: ...
    def assign(self, dst: Any, src: Any) -> None:
        """``dst[...] = src`` with numpy broadcasting."""
    def broadcast_copy(self, a: Any, shape: tuple[int, ...]) -> Any:
        """A new array of ``shape`` holding ``a`` broadcast to it."""
    def transform_matvec(self, a: Any, x: Any, axis: int) -> Any:
        """The library's own expression, used while a transform (vmap) hides the layout."""
