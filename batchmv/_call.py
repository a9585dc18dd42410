"""From arguments to a checked call: input checks, sharing across libraries, the engine,
the schedule and the copies it costs.  Nothing is computed here (:mod:`batchmv._run` runs a
call, :func:`batchmv._plan.describe` reports it).  Knows no library by name: everything
library-specific is a call on an engine from the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Optional

from . import _layout, _registry, _select, _sparse, _sparse_kits
from ._arrays import adopt, check_out, share, to_home
from ._checks import check_copy, check_shapes, dlpack_device, op_shape, refuse_copies
from ._errors import CopyRequiredError

#: ``choose(home, a, x, axis, dtype, op, out) -> (engine name, note)``: how a call with
#: ``backend="fastest"`` gets its engine (:mod:`batchmv._tune` measures or recalls).
Chooser = Callable[[Any, Any, Any, int, Any, str, Any], tuple[str, str]]


class Call(NamedTuple):
    """One checked call, ready to plan or run."""

    home: Any  #: engine of the library that owns the result
    engine: Any  #: engine that computes
    a: Any  #: A as the engine's array
    x: Any  #: x as the engine's array
    out: Any  #: the caller's ``out`` (home array) or None
    out_e: Any  #: ``out`` as the engine's array, or None when it cannot be shared
    axis: int
    dtype: Any  #: result dtype, in the engine's terms
    y_shape: tuple[int, ...]
    schedule: Optional[_layout.Schedule]  #: None for an expression (no strides, or under vmap)
    tracks_graph: bool
    copies: tuple[str, ...]
    notes: tuple[str, ...]
    op: str = "N"  #: y = op(A) @ x: "N", "T" (transpose), "H" (conjugate transpose), "C" (conjugate)
    #: how the GEMM conjugates A (op "H"/"C" on complex A, or torch's lazy conjugate bit):
    #: None (no conjugate), "flag" (BLAS's conjugate flag), "xy" (conj(A) x == conj(A conj(x)):
    #: x and y conjugated, never A), "copy" (A is copied anyway: the copy is conjugated)
    conj: Optional[str] = None
    temporaries: tuple[str, ...] = ()  #: buffers a call allocates besides y and the copies
    #: "gemm" (the schedule's views), or "gemv": one vector (x 1-D) multiplied by the
    #: library's matrix-vector product on A and x as they are (``Engine.gemv_kernel``)
    kernel: str = "gemm"








def build(
    a: Any, x: Any, axis: Any, out: Any, backend: Optional[str], copy: object, choose: Optional[Chooser] = None,
    op: str = "N", *, engine: Optional[str] = None,
) -> Call:
    """Check a call of ``y = op(A) @ x`` and decide everything about it; nothing is
    computed.  ``choose`` gives the engine of a call with ``backend="fastest"`` (without it:
    the home library's); ``op`` is checked by the caller (:func:`batchmv._checks.check_op`);
    a sparse A gets a :class:`batchmv._sparse.SparseCall` instead (``choose`` unused);
    ``engine`` names the engine outright, skipping the selection rules (a prepared
    operator's, which may be an array-API library's that ``backend=`` cannot name)."""
    kit = _sparse_kits.kit_of(a)
    if kit is not None:  # a sparse A: its own path, one sparse-times-dense product
        return _sparse.build(kit, a, x, axis, out, backend, copy, op, engine)  # type: ignore[return-value]
    _sparse.refuse_sparse_x(x)
    allow_copy = check_copy(copy)
    copies: list[str] = []
    if engine is None:
        home_name, engine_name = _select.route(type(a), type(x), backend)
    else:
        home_name, engine_name = _select.home_of(type(a), type(x)), engine
    lib_a = _registry.library_of(a)
    if lib_a is None or lib_a != _registry.library_of(x):
        _check_devices(a, x)  # before any import
    home = _registry.get_engine(home_name)
    x_h = to_home(x, "x", home, allow_copy, copies)
    a_h = to_home(a, "A", home, allow_copy, copies)

    ax, y_shape = check_shapes(op_shape(home.shape(a_h), op), home.shape(x_h), axis)
    if home.device(a_h) != home.device(x_h):
        raise TypeError(
            f"A is on {home.device(a_h)} and x on {home.device(x_h)}; batchmv never moves data between devices"
        )
    dtype = home.result_dtype(a_h, x_h)
    home.check_dtype(dtype)
    if out is not None:
        check_out(home, out, y_shape, dtype, home.device(x_h))

    notes: list[str] = []
    if engine_name == "fastest":
        refusal = home.export_refusal(x_h) or home.export_refusal(a_h)
        if refusal:
            engine_name = home.name
            notes.append(f"fastest: {home.name}, the only engine that can take it: {refusal}")
        elif choose is None:
            engine_name = home.name
            notes.append(f"fastest: {home.name}, the home library's engine (this caller does not measure)")
        else:
            engine_name, why = choose(home, a_h, x_h, ax, dtype, op, out)
            notes.append(why)
    engine = _registry.get_engine(engine_name)
    if engine is home:
        a_e, x_e, out_e = a_h, x_h, out
    else:
        a_e = share(engine, a_h, home, "A", allow_copy, copies)
        x_e = share(engine, x_h, home, "x", allow_copy, copies)
        out_e = None
        refusal = home.export_refusal(out) if out is not None else None
        if refusal:  # (a write through another library would bypass what the home library does)
            copies.append(f"out: {refusal}; result computed by {engine.name} and copied into out")
        elif out is not None:
            try:
                out_e, _ = engine.adopt(out, allow_copy=False, writable=True, source=home)
            except CopyRequiredError as err:
                copies.append(f"out: {err}; result computed by {engine.name} and copied into out")
        # the result keeps the home library's promotion (numpy: int32 with float32 gives
        # float64; torch: float32), whichever engine computes it: the engine's name for
        # that dtype is the dtype of a one-element home array adopted by the engine
        probe = adopt(engine, home.empty((1,), dtype, x_h), "the result", True, home)[0]
        dtype = engine.dtype_of(probe)
        engine.check_dtype(dtype)

    tracks = engine.tracks_graph(a_e, x_e)
    if out is not None and tracks:
        raise ValueError("out= cannot be used when A or x requires grad: the result must stay in the autograd graph")
    if not engine.strided or engine.in_transform(a_e, x_e):
        if out is not None and engine.in_transform(a_e, x_e):
            raise ValueError("out= cannot be used inside a transform (vmap/grad)")
        if out is not None and engine is home:  # the expression makes a new array
            copies.append(f"out: the result is computed by {engine.name}'s {engine.expression_kernel}, then copied into out")
        notes.append(engine.expression_note)
        casts = [  # operands are cast to the result dtype (the home library's promotion)
            f"{label}: cast from {engine.dtype_name(arr)} to the result dtype {dtype}"
            for label, arr in (("A", a_e), ("x", x_e))
            if engine.dtype_of(arr) != dtype
        ]
        copies.extend(casts)
        refuse_copies(copies, allow_copy)  # casts, or an out= the engine cannot write
        return Call(home, engine, a_e, x_e, out, None, ax, dtype, y_shape, None, tracks, tuple(copies), tuple(notes), op)

    a_op, conj = engine.operand(a_e, op)  # a view of op(A), and whether to conjugate it
    if conj != (op in ("H", "C") and engine.is_complex(a_e)):
        notes.append("A has torch's lazy conjugate bit: its memory is read as it is and the GEMM conjugates it (below)")
    a_cast = _cast_reason(engine, a_op, "A", dtype)
    x_cast = _cast_reason(engine, x_e, "x", dtype)
    out_strides = None
    if out_e is not None:
        clash = [label for label, arr in (("A", a_e), ("x", x_e)) if _overlap(engine, out_e, arr)]
        special = engine.must_copy(out_e)
        if clash:
            copies.append(f"out overlaps {' and '.join(clash)}: result computed in a temporary, then copied into out")
        elif special:  # (the GEMM would write a temporary of its own, unreported)
            copies.append(f"out {special}: result computed in a temporary, then copied into out")
        else:
            out_strides = engine.strides(out_e)
    sched = _layout.schedule(
        engine.shape(a_op), engine.strides(a_op), engine.shape(x_e), engine.strides(x_e), ax,
        out_strides, engine.needs_blas_layout(dtype), a_cast, x_cast,
    )  # fmt: skip
    # one vector, nothing else copied, cast or conjugated, a new y: the library's
    # matrix-vector product on A and x as they are (it reads a vector of any stride)
    gemv = (
        len(y_shape) == 1 and engine is home and out is None and not conj and not engine.plain(a_e)[1]
        and not copies and not (sched.a_copy or x_cast) and engine.gemv_kernel(a_e, x_e, op in ("T", "H")) is not None
    )  # fmt: skip  (no conjugate at all: neither op's on a complex A nor torch's lazy bit of A)
    if gemv:
        sched = sched._replace(x_copy=None)
    copies[:0] = [c for c in (sched.a_copy, sched.x_copy) if c]
    if out_strides is not None and not sched.out_direct and not sched.zero_axes:
        copies.append(
            f"out: strides {tuple(out_strides)} cannot take the GEMM result directly; "
            "result computed in a temporary, then copied into out"
        )
    if sched.zero_axes:
        notes.append(f"x has stride 0 along axes {sched.zero_axes}: each distinct vector is multiplied once, then broadcast")
    refuse_copies(copies, allow_copy)
    how, temps = _conjugation(engine, a_op, sched, y_shape[ax]) if conj else (None, ())
    if how == "xy" and not sched.x_copy and not allow_copy:  # (an input-sized temporary, as copies are)
        raise CopyRequiredError(
            f"copy=False, but this call needs a temporary: {temps[0]}. Pass copy=None to allow it"
            + ("" if engine.name == "numpy" else ", or give A Fortran order (A = B.T), which BLAS conjugates in place")
        )
    return Call(
        home, engine, a_e, x_e, out, out_e, ax, dtype, y_shape, sched, tracks, tuple(copies), tuple(notes), op, how, temps,
        "gemv" if gemv else "gemm",
    )  # fmt: skip


def _conjugation(engine: Any, a_op: Any, sched: _layout.Schedule, m: int) -> tuple[str, tuple[str, ...]]:
    """How the GEMM of ``sched`` conjugates op(A), and the temporaries that costs (see
    :attr:`Call.conj`): never a copy of A that the call would not make anyway."""
    if sched.a_copy:
        return "copy", ("A: its copy (above) is conjugated in place",)
    n = sched.view_shape[-1]
    x2_strides = (n, 1) if sched.x_copy else sched.x2_strides
    if engine.conj_flag(sched.rows, x2_strides, a_op, sched.y2_strides):
        return "flag", ()
    x_temp = (
        "x: its copy (above) is conjugated in place" if sched.x_copy else
        f"x: conjugated into a new buffer of the vectors' size, shape {(*sched.loop_shape, sched.rows, n)} "
        f"({engine.name}: {engine.conj_note}); conj(A) @ x is computed as conj(A @ conj(x)), A is not copied"
    )  # fmt: skip
    return "xy", (x_temp, f"y: conjugated in place after the GEMM ({sched.rows * sched.gemm_calls} vectors of {m})")


def compiling_engine(a: Any, x: Any) -> Any:
    """The engine whose compiler (torch.compile) is tracing a call on A and x of two
    libraries (or a Python sequence), or None.  A compiler cannot trace another library's
    arrays, DLPack or numpy.asarray, so such a call runs eagerly (``Engine.run_eagerly``)."""
    lib_a, lib_x = _registry.library_of(a), _registry.library_of(x)
    if lib_a == lib_x:
        return None
    for lib in (lib_a, lib_x):
        if lib in _registry.ENGINES:
            engine = _registry.get_engine(lib)
            if engine.compiling():
                return engine
    return None


def _check_devices(a: Any, x: Any) -> None:
    """A and x from two libraries on two devices: TypeError naming both, before either is
    imported into the other's library (an import could fail obscurely, or copy)."""
    dev_a, dev_x = dlpack_device(a), dlpack_device(x)
    if dev_a is not None and dev_x is not None and dev_a != dev_x:
        lib_a, lib_x = (_registry.library_of(v) or type(v).__name__ for v in (a, x))
        raise TypeError(
            f"A ({lib_a}) is on {dev_a} and x ({lib_x}) on {dev_x}; batchmv never moves data between devices"
        )




def _cast_reason(engine: Any, arr: Any, label: str, dtype: Any) -> str | None:
    if engine.dtype_of(arr) != dtype:
        return f"{label}: cast from {engine.dtype_name(arr)} to the result dtype {dtype}"
    special = engine.must_copy(arr)
    return f"{label} {special}" if special else None


def _overlap(engine: Any, a: Any, b: Any) -> bool:
    size = engine.itemsize(a)
    shape_a, shape_b = engine.shape(a), engine.shape(b)
    bytes_a = tuple((s or 0) * size for s in engine.strides(a))
    bytes_b = tuple((s or 0) * engine.itemsize(b) for s in engine.strides(b))
    return _layout.overlaps(
        _layout.extent(engine.address(a)[0], shape_a, bytes_a, size),
        _layout.extent(engine.address(b)[0], shape_b, bytes_b, engine.itemsize(b)),
    )


