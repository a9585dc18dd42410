"""The base classes of every engine in ``batchmv.backends``.

An engine wraps one array library.  It answers questions about its own arrays, shares
arrays of other libraries without copying (``adopt``), and computes.  An engine writes only
what differs from the defaults here (in the spirit of einops' ``AbstractBackend``).

Two kinds:

* :class:`Engine` computes ``y = A @ x`` along an axis with one array expression,
  :meth:`Engine.expression`; the default is the Python array API standard's
  ``matmul``/``matrix_transpose`` in the array's own namespace (``array_api_compat``).  Its
  strides are not observable, so ``plan`` cannot prove what the library's kernel copies
  (the jax engine: XLA chooses layouts).
* :class:`StridedEngine` adds the view and GEMM primitives that the call builder strings
  together (:mod:`batchmv._layout`): one GEMM ``X2 @ A.T`` on views whose strides prove
  that nothing is copied (numpy, torch, cupy).  Under a transform that hides strides
  (``torch.func.vmap``) it falls back to :meth:`Engine.expression`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional


class Engine:
    """An engine that computes with one array expression; subclasses set :attr:`name` and
    :meth:`is_native`, :meth:`asarray`, :meth:`result_dtype` and :meth:`adopt`."""

    name: str = ""  #: the engine's name in the registry (``backend=`` names it)
    strided: bool = False  #: whether calls run as GEMMs on strided views (StridedEngine)
    expression_kernel: str = "matmul"  #: the kernel ``plan`` reports for an expression call
    expression_note: str = "computed with the library's matmul on A's transposed view; batchmv cannot observe its layout"
    #: why this engine's GEMM cannot conjugate A with a BLAS flag where :meth:`conj_flag` says no
    conj_note: str = "its GEMM has no conjugate flag"

    # -- questions about native arrays ----------------------------------------------------
    def is_native(self, obj: Any) -> bool:
        raise NotImplementedError

    def shape(self, a: Any) -> tuple[int, ...]:
        return tuple(a.shape)

    def strides(self, a: Any) -> tuple[Optional[int], ...]:
        """Strides in elements; None where a stride is unknown or not whole elements."""
        return (None,) * len(a.shape)

    def dtype_of(self, a: Any) -> Any:
        return a.dtype

    def dtype_name(self, a: Any) -> str:
        return str(self.dtype_of(a))

    def itemsize(self, a: Any) -> int:
        return a.itemsize

    def device(self, a: Any) -> str:
        return "cpu"

    def address(self, a: Any) -> tuple[int, int]:
        """(address of the first element, its byte offset from the start of its buffer)."""
        raise TypeError(f"{self.name} arrays have no observable address")

    def is_writable(self, a: Any) -> bool:
        return True

    def needs_blas_layout(self, dtype: Any) -> bool:
        """Whether this engine's GEMM copies operands that BLAS cannot read as they are."""
        return False

    def result_dtype(self, a: Any, x: Any) -> Any:
        raise NotImplementedError

    def check_dtype(self, dtype: Any) -> None:
        """Raise TypeError when this engine cannot multiply arrays of ``dtype``."""

    def tracks_graph(self, *arrays: Any) -> bool:
        """Whether results must stay differentiable/traceable (no ``out=`` writes)."""
        return False

    def in_transform(self, *arrays: Any) -> bool:
        """Whether the arrays are being transformed (vmap), so that strides mean nothing."""
        return False

    def compiling(self) -> bool:
        """Whether this library's compiler is tracing the current call (torch.compile)."""
        return False

    def run_eagerly(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, outside this library's compiler (a graph break)."""
        return fn(*args, **kwargs)

    def signature(self, a: Any, x: Any) -> Optional[tuple]:
        """Everything about native arrays ``a`` and ``x`` (and the library's state, such as
        grad mode) that a call's checks and schedule depend on, not their values; None when
        calls on them must not be remembered (the default: nothing is known)."""
        return None

    def layout_key(self, a: Any) -> Optional[tuple]:
        """What a remembered run (:func:`batchmv._run.runner`) on the native array ``a``
        depends on: its layout (shape, strides, dtype and the like), never its values;
        None for anything else (another library's arrays, tracers, arrays under a
        transform or a compiler), whose calls go through the checks every time.

        Devices and autograd are not part of it: a remembered run is a chain of the
        library's own calls on the arrays themselves, which refuse mismatched devices and
        record autograd as they run, and a run that raises is repeated through the full
        checks, which say what is wrong (:func:`batchmv._api.matvec`).  The default:
        nothing is remembered."""
        return None

    def layout_keys(self, a: Any, x: Any) -> Optional[tuple]:
        """(:meth:`layout_key` of ``a``, of ``x``), or None when either is None."""
        key_a = self.layout_key(a)
        if key_a is None:
            return None
        key_x = self.layout_key(x)
        return None if key_x is None else (key_a, key_x)

    def expression_runner(self, axis: int, op: str) -> Any:
        """``run(a, x)``: :meth:`expression` for this ``axis`` and ``op``, as a remembered
        call repeats it."""
        return lambda a, x: self.expression(a, x, axis, op)

    def must_copy(self, a: Any) -> Optional[str]:
        """Why the GEMM cannot read ``a`` as it is whatever its strides (torch's lazy negative bit)."""
        return None

    def is_complex(self, a: Any) -> bool:
        return getattr(self.dtype_of(a), "kind", "") == "c"

    # -- crossing libraries -----------------------------------------------------------------
    def adopt(self, obj: Any, *, allow_copy: bool, writable: bool, source: Any = None) -> tuple[Any, Optional[str]]:
        """``obj`` (an array of another library, whose engine is ``source`` when batchmv
        knows it) as a native array sharing its memory.

        Returns the array and None, or, when sharing is impossible and ``allow_copy``, a
        copy and the reason.  Raises CopyRequiredError when a copy is needed but not
        allowed; TypeError or ValueError when the call's meaning would be lost.
        """
        raise TypeError(f"the {self.name} engine cannot use {type(obj).__name__} arrays")

    def adopt_result(self, obj: Any, *, allow_copy: bool, writable: bool, source: Any = None) -> tuple[Any, Optional[str]]:
        """Another engine's result as a native array (like ``adopt``; any layout is fine)."""
        return self.adopt(obj, allow_copy=allow_copy, writable=writable, source=source)

    def export_refusal(self, a: Any) -> Optional[str]:
        """Why this native array may not be computed by another engine (gradients, tracers)."""
        return None

    def exportable(self, a: Any, allow_copy: bool) -> tuple[Any, Optional[str]]:
        """(``a`` as another library may import it, why it was copied or None): ``a``
        itself, or a copy where its memory alone is not its value (torch's lazy bits).
        CopyRequiredError where a copy is needed and ``allow_copy`` is False."""
        return a, None

    def check_out(self, out: Any) -> None:
        """Raise where ``out``, an array of this library, may not receive a result (a
        masked array, a tensor that requires grad)."""

    def host(self, a: Any, writable: bool = False) -> Any:
        """``a`` as a numpy array sharing its memory (never a copy), for the row-block
        kernel of :mod:`batchmv._skinny`; None where that cannot be (another device, a
        tracer, a tensor that autograd or torch.compile must see)."""
        return None

    def threads(self) -> Optional[int]:
        """The threads this library computes with, where it has its own setting; None: the
        threads of numpy's BLAS pool."""
        return None

    def export_numpy(self, a: Any, *, allow_copy: bool, writable: bool) -> Optional[tuple[Any, Optional[str]]]:
        """This library's own way to share ``a`` with numpy, as (array, copy reason), or
        None where numpy imports it through DLPack."""
        return None

    # -- computing ------------------------------------------------------------------------
    def asarray(self, obj: Any) -> Any:
        raise NotImplementedError

    def astype(self, a: Any, dtype: Any) -> Any:
        return a.astype(dtype)

    def empty(self, shape: tuple[int, ...], dtype: Any, like: Any) -> Any:
        """A new array of ``shape`` and ``dtype`` on ``like``'s device."""
        raise NotImplementedError

    def assign(self, dst: Any, src: Any) -> None:
        """``dst[...] = src`` with numpy broadcasting."""
        raise TypeError(f"{self.name} arrays cannot be written")

    def expression(self, a: Any, x: Any, axis: int, op: str = "N") -> Any:
        """``y = op(A) @ x`` along ``axis`` with the array API standard's functions in the
        arrays' namespace: ``moveaxis(matmul(moveaxis(x, axis, -1), matrix_transpose(A)), -1, axis)``
        for op "N"; A itself for "T"; for "H" and "C" on complex arrays the conjugate goes
        on x and y (``conj(A) @ x == conj(A @ conj(x))``), never on A."""
        import array_api_compat

        xp = array_api_compat.array_namespace(a, x)
        conj = op in ("H", "C") and xp.isdtype(a.dtype, "complex floating")
        v = xp.moveaxis(x, axis, -1)
        y = xp.matmul(xp.conj(v) if conj else v, a if op in ("T", "H") else xp.matrix_transpose(a))
        return xp.moveaxis(xp.conj(y) if conj else y, -1, axis)


class StridedEngine(Engine):
    """An engine whose arrays have observable strides: calls run as GEMMs on views
    (:mod:`batchmv._layout`), and ``plan`` proves what is copied."""

    strided = True
    needs_blas = True  #: the GEMM copies operands BLAS cannot read (numpy: BLAS dtypes only)

    def strides(self, a: Any) -> tuple[Optional[int], ...]:
        size = a.itemsize
        return tuple(s // size if s % size == 0 else None for s in a.strides)

    def needs_blas_layout(self, dtype: Any) -> bool:
        return self.needs_blas

    def permute(self, a: Any, axes: tuple[int, ...]) -> Any:
        return a.transpose(axes)

    def view(self, a: Any, shape: tuple[int, ...]) -> Any:
        """``a`` viewed as ``shape``, never copied (the schedule proved that it can be)."""
        raise NotImplementedError

    def row_view(self, x2: Any) -> Any:
        """The GEMM's (rows, n) operand ``x2`` as a view the library's GEMM reads in place,
        where only the stride of its one row would make the GEMM copy it; else ``x2``.  The
        schedule takes a one-row X2 as laid out with any row stride (BLAS never reads it)."""
        return x2

    def known_view(self, a: Any, shape: tuple[int, ...]) -> Any:
        """:meth:`view` where the view is known to exist (a remembered run, whose key fixes
        ``a``'s shape and strides), without checking again that it does."""
        return self.view(a, shape)

    def take_first(self, a: Any, axes: tuple[int, ...]) -> Any:
        """``a`` with each of ``axes`` (stride 0) narrowed to its first element."""
        return a[tuple(slice(0, 1) if i in axes else slice(None) for i in range(len(a.shape)))]

    def vectors_last_copy(self, a: Any, axis: int, dtype: Any) -> Any:
        """A copy of ``a`` as ``dtype`` whose ``axis`` is contiguous (batch axes in C order)."""
        raise NotImplementedError

    def c_order_copy(self, a: Any, dtype: Any) -> Any:
        """A C-ordered copy of ``a`` as ``dtype`` (lazy conjugate/negative bits resolved)."""
        return a.astype(dtype, order="C", copy=True)

    def gemm(self, x2: Any, a: Any, out: Any = None, conj: bool = False, trans: bool = True) -> Any:
        """One GEMM ``x2 @ a.T`` on the views as they are (A read through its transposed
        view), into ``out`` when given, else into a new array of this library.
        ``trans=False``: ``x2 @ a`` (op "T" and "H" pass A itself).  ``conj``: the second
        operand conjugated through BLAS's conjugate flag (only where :meth:`conj_flag`
        said yes)."""
        raise NotImplementedError

    def gemm_kernel(self, x2: Any, a: Any, trans: bool = True, conj: bool = False) -> Callable[[Any, Any], Any]:
        """``gemm(x2, a)`` for arrays laid out as these two, chosen once for a remembered
        call (:func:`batchmv._run.runner`): by default :meth:`gemm` with these flags."""
        return lambda x2, a: self.gemm(x2, a, None, conj, trans)

    def gemv_kernel(self, a: Any, x: Any, trans: bool = False) -> Optional[Callable[[Any, Any], Any]]:
        """``run(a, x)``: ``A @ x`` (``trans``: ``A^T @ x``) for one vector ``x`` (1-D),
        with the library's matrix-vector product reading A and x as they are laid out
        here (BLAS's GEMV); None where this engine has none, or it would copy them (the
        call then runs as a GEMM on a one-row view of x)."""
        return None

    # -- op(A): transpose and conjugate without copying A ----------------------------------
    def plain(self, a: Any) -> tuple[Any, bool]:
        """(A's memory as an array without lazy flags, whether A was lazily conjugated)."""
        return a, False

    def operand(self, a: Any, op: str) -> tuple[Any, bool]:
        """(a view of op(A) for the GEMM, whether the GEMM must conjugate it): the
        transpose is a view; the conjugate is a flag, applied by :meth:`conj_flag`'s BLAS
        flag or by conjugating x and y (never by conjugating A)."""
        a, lazy = self.plain(a)
        view = self.permute(a, (1, 0)) if op in ("T", "H") else a
        return view, (op in ("H", "C") and self.is_complex(a)) != lazy

    def conj_flag(self, rows: int, x2_strides: tuple, a: Any, y2_strides: tuple) -> bool:
        """Whether :meth:`gemm` computes ``x2 @ conj(a.T)`` with BLAS's conjugate flag on
        views of these strides, reading ``a`` in place (numpy's matmul has no such flag)."""
        return False

    def conj_copy(self, x2: Any) -> Any:
        """``conj(x2)`` in a new C-ordered array (a temporary the size of the vectors)."""
        raise NotImplementedError

    def conj_inplace(self, y: Any, tracked: bool = False) -> Any:
        """``conj(y)``, written over ``y`` (a new array when ``tracked``: autograd graphs)."""
        raise NotImplementedError

    def stack(self, parts: list, shape: tuple[int, ...]) -> Any:
        raise NotImplementedError

    def broadcast_copy(self, a: Any, shape: tuple[int, ...]) -> Any:
        """A new array of ``shape`` holding ``a`` broadcast to it."""
        raise NotImplementedError
