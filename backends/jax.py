"""The jax engine: one ``jax.lax.dot_general`` on A as given; the result is a ``jax.Array``.

JAX arrays are immutable and their strides are not observable (XLA chooses layouts when it
compiles), so this engine never goes through the view/GEMM schedule of
:mod:`batchmv._layout`.  Every call takes the driver's semantic path
(:meth:`JaxEngine.in_transform` is always true) and is expressed as::

    y = jax.lax.dot_general(x, A, contracting x's ``axis`` with A's dim 1, no batch dims)
    y = jnp.moveaxis(y, -1, axis)

That is one dot on A exactly as given: no broadcast of A over the batch (the form
``jnp.matmul(A, x[..., None])`` would need transposes and copies around a batched dot),
no transpose or copy of A in the compiled program.  Because dispatch here looks at types
only, never at values, the same code runs on concrete arrays and on tracers: it works
unchanged inside ``jax.jit``, ``jax.vmap``, ``jax.grad`` (in A and x), ``jax.jacfwd`` and
with sharded arrays (the batch sharding of x carries over to y, without collectives).

Precision: the dot runs with ``precision=jax.lax.Precision.HIGHEST``.  On CPU that changes
nothing; on GPU and TPU the default precision may compute float32 products in TF32 or
bfloat16 passes.  batchmv promises that float32 means float32, so it asks for HIGHEST.
float64 needs ``jax_enable_x64`` (``JAX_ENABLE_X64=1``); without it the engine refuses
64-bit inputs from other libraries instead of silently computing in 32 bits.

Crossing libraries (:mod:`batchmv.backends._jax_imports`): numpy arrays and torch
tensors are shared through DLPack where JAX's CPU client can wrap their memory as it is;
otherwise they are copied (reported by ``plan``) or refused with ``copy=False``.  A tracer
cannot be computed by another engine (TypeError).  ``out=`` is refused with TypeError: jax
arrays are immutable.

Because JAX dispatches asynchronously, a call that reads another library's memory in
place waits for the dot before returning, so that the caller may write to that memory
afterwards.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .._engine import Engine
from .._errors import CopyRequiredError
from ._jax_imports import from_dlpack_object, from_numpy, from_torch

_Tracer = jax.core.Tracer
_HIGHEST = jax.lax.Precision.HIGHEST

_IMMUTABLE = (
    "jax arrays are immutable, so the jax engine cannot write into out=; "
    "call matvec without out= and use the returned array"
)


def _is_tracer(a: Any) -> bool:
    return isinstance(a, _Tracer)


class JaxEngine(Engine):
    name = "jax"
    expression_kernel = "dot_general"
    expression_note = (
        "jax: one jax.lax.dot_general (precision HIGHEST) contracting x's axis with A's dim 1, "
        "then moveaxis; XLA chooses the layouts: A is neither broadcast nor copied (x and y may "
        "be transposed inside the program when x's vector axis is not the last)"
    )

    def __init__(self) -> None:
        # id -> weakref of arrays that wrap another library's memory (see expression)
        self._foreign: dict[int, weakref.ref] = {}
        self._concrete: set[type] = set()  # jax.Array types that are not tracers (layout_key)

    # -- questions about native arrays ------------------------------------------------
    def is_native(self, obj: Any) -> bool:
        return isinstance(obj, (jax.Array, _Tracer))

    def strides(self, a: Any) -> tuple[Optional[int], ...]:
        """Element strides of the array's one buffer, from its XLA layout; all None for
        tracers (no buffer yet) and arrays sharded over several devices (no single buffer)."""
        unknown = (None,) * a.ndim
        if _is_tracer(a) or len(a.sharding.device_set) != 1:
            return unknown
        layout = getattr(a.format, "layout", None)
        if layout is None or getattr(layout, "tiling", ()) or not hasattr(layout, "major_to_minor"):
            return unknown
        strides: list[int] = [0] * a.ndim
        step = 1
        for axis in reversed(layout.major_to_minor):
            strides[axis] = step
            step *= max(a.shape[axis], 1)
        return tuple(strides)

    def itemsize(self, a: Any) -> int:
        return np.dtype(a.dtype).itemsize

    def device(self, a: Any) -> str:
        """The platform ("cpu", "gpu", "tpu").  JAX places data among the devices of one
        platform itself (shardings, committed arrays); batchmv only refuses to mix
        platforms.  A tracer's platform is the default backend's."""
        if _is_tracer(a):
            return jax.default_backend()
        return next(iter(a.sharding.device_set)).platform

    def address(self, a: Any) -> tuple[int, int]:
        if _is_tracer(a):
            raise TypeError("a jax tracer has no memory: it stands for a value inside a transformation")
        if len(a.sharding.device_set) != 1:
            raise TypeError("an array sharded over several devices has no single address")
        return a.unsafe_buffer_pointer(), 0

    def is_writable(self, a: Any) -> bool:
        # Only ever asked about an out= argument, which can never be written: say why.
        raise TypeError(_IMMUTABLE)

    def dtype_of(self, a: Any) -> np.dtype:
        return np.dtype(a.dtype)

    def result_dtype(self, a: Any, x: Any) -> np.dtype:
        return np.dtype(jnp.result_type(a, x))

    def check_dtype(self, dtype: Any) -> None:
        dtype = np.dtype(dtype)
        if not (jnp.issubdtype(dtype, jnp.number) or dtype == np.bool_):
            raise TypeError(f"the jax engine cannot multiply arrays of dtype {dtype}")

    def tracks_graph(self, *arrays: Any) -> bool:
        return any(_is_tracer(a) for a in arrays)

    def signature(self, a: Any, x: Any) -> Optional[tuple]:
        """What a call depends on: shape, dtype (weak or not) and placement; None for tracers,
        whose calls are traced once by their transformation anyway."""
        if _is_tracer(a) or _is_tracer(x):
            return None
        return (a.shape, a.dtype, a.weak_type, a.sharding, x.shape, x.dtype, x.weak_type, x.sharding)

    def layout_key(self, a: Any) -> Optional[tuple]:
        # Nor placement nor weak types: the jitted program follows its arguments' devices and
        # is traced anew for another weak type (a remembered run never casts: x has A's dtype)
        if type(a) not in self._concrete:
            if not isinstance(a, jax.Array) or _is_tracer(a):
                return None
            self._concrete.add(type(a))
        return (a.shape, a.dtype)

    def host(self, a: Any, writable: bool = False) -> Optional[np.ndarray]:
        """A concrete CPU array's buffer as a read-only numpy array, when numpy reads it in
        place (its address is the buffer's); None for tracers, other devices, shardings,
        and where jax's own product would give a result that a numpy buffer adopted by jax
        is not: on the device an array is committed to, weakly typed for weak operands."""
        if writable or _is_tracer(a) or len(a.sharding.device_set) != 1 or self.device(a) != "cpu":
            return None
        if a.committed or a.weak_type:
            return None
        try:
            view = np.asarray(a)
            same = view.__array_interface__["data"][0] == a.unsafe_buffer_pointer()
        except Exception:  # noqa: BLE001 - deleted or donated arrays: the expression says
            return None
        return view if same else None

    # -- crossing libraries ------------------------------------------------------------
    def adopt(
        self, obj: Any, *, allow_copy: bool, writable: bool, source: Any = None, any_order: bool = False
    ) -> tuple[Any, Optional[str]]:
        """``obj`` as a jax array sharing its memory where JAX can use it as it is: 64-byte
        aligned, native byte order, C order (``any_order``: any dense layout)."""
        if writable:  # another library's out=: the driver computes, then copies into it
            raise CopyRequiredError(_IMMUTABLE)
        if isinstance(obj, np.ndarray):
            arr, reason = from_numpy(obj, allow_copy, any_order)
        elif type(obj).__module__.split(".")[0] == "torch":
            arr, reason = from_torch(obj, allow_copy, any_order)
        else:
            arr, reason = from_dlpack_object(obj, allow_copy, any_order)
        if reason is None:
            self._mark_foreign(arr)
        return arr, reason

    def adopt_result(self, obj: Any, *, allow_copy: bool, writable: bool, source: Any = None) -> tuple[Any, Optional[str]]:
        """Another engine's result as a jax array.  Unlike an operand, a result with a
        transposed layout is wrapped as it is: nothing here would copy it again."""
        arr, reason = self.adopt(obj, allow_copy=allow_copy, writable=writable, any_order=True)
        self._foreign.pop(id(arr), None)  # owned by the result alone: nobody writes to it
        return arr, reason

    def export_refusal(self, a: Any) -> Optional[str]:
        if _is_tracer(a):
            return (
                "it is a JAX tracer (inside jax.jit, vmap, grad, ...): it has no values yet, only a type, "
                "so only the jax engine can compute with it (use backend='jax' or 'auto')"
            )
        devices = a.sharding.device_set
        if len(devices) != 1:
            return f"it is sharded over {len(devices)} devices; only the jax engine computes on it as a whole"
        if a.is_deleted():
            return "it has been deleted (donated or freed)"
        return None

    # -- primitives ---------------------------------------------------------------------
    def asarray(self, obj: Any) -> Any:
        return obj if self.is_native(obj) else jnp.asarray(obj)

    def astype(self, a: Any, dtype: Any) -> Any:
        cast = a.astype(dtype)
        if self._wraps_foreign(a):  # the cast still reads the other library's memory
            self._mark_foreign(cast)
        return cast

    def empty(self, shape: tuple[int, ...], dtype: Any, like: Any) -> Any:
        return jnp.empty(shape, dtype=dtype)

    def expression(self, a: Any, x: Any, axis: int, op: str = "N") -> Any:
        """``y = moveaxis(dot_general(x, A), -1, axis)``: one dot on A as given (op "T" and
        "H" contract A's dim 0 instead of 1; see :func:`_matvec`)."""
        return self.expression_runner(axis, op)(a, x)

    def expression_runner(self, axis: int, op: str) -> Any:
        program = _program(axis, op)

        def run(a: Any, x: Any) -> Any:
            y = program(a, x)
            if self._foreign and not _is_tracer(y) and (self._wraps_foreign(a) or self._wraps_foreign(x)):
                # JAX dispatches asynchronously; another library owns this memory and may
                # write to it as soon as matvec returns, so wait until the dot has read it.
                y.block_until_ready()
            return y

        return run

    def _mark_foreign(self, a: Any) -> None:
        if not _is_tracer(a):
            self._foreign[id(a)] = weakref.ref(a, lambda _, key=id(a): self._foreign.pop(key, None))

    def _wraps_foreign(self, a: Any) -> bool:
        ref = self._foreign.get(id(a))
        return ref is not None and ref() is a


@functools.lru_cache(maxsize=None)
def _program(axis: int, op: str) -> Any:
    """The jitted :func:`_matvec` for one axis and op (a jitted function per pair: its
    calls hash no static arguments)."""
    return jax.jit(functools.partial(_matvec, axis=axis, op=op))


def _matvec(a: Any, x: Any, axis: int, op: str = "N") -> Any:
    """op(A) @ x along ``axis``: the transpose is the choice of A's contracted dim (no
    transpose of A in the program), the conjugate goes on x and y,
    ``conj(A)^T x == conj(A^T conj(x))``, so the program never holds a conjugated A."""
    dtype = jnp.result_type(a, x)
    conj = op in ("H", "C") and jnp.issubdtype(a.dtype, jnp.complexfloating)
    a = a if a.dtype == dtype else jax.lax.convert_element_type(a, dtype)
    x = x if x.dtype == dtype else jax.lax.convert_element_type(x, dtype)
    dims = (((axis,), (0 if op in ("T", "H") else 1,)), ((), ()))
    y = jax.lax.dot_general(jnp.conj(x) if conj else x, a, dims, precision=_HIGHEST, preferred_element_type=dtype)
    return jnp.moveaxis(jnp.conj(y) if conj else y, -1, axis)


ENGINE_CLASS = JaxEngine
