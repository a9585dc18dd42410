"""From arguments to engine work: input checks, sharing across libraries, the schedule,
the copies it costs, and its execution.  Knows no library by name: everything
library-specific is a call on an engine from the registry.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable
from typing import Any, NamedTuple

from . import _layout, _registry, _select, _tune
from ._errors import CopyRequiredError
from ._plan import OperandView, Plan

_SEQUENCES = _select.SEQUENCES


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
    schedule: _layout.Schedule | None  #: None under a transform (vmap)
    tracks_graph: bool
    copies: tuple[str, ...]
    notes: tuple[str, ...]


def check_copy(copy: object) -> bool:
    if copy is None:
        return True
    if copy is False:
        return False
    raise ValueError(
        f"copy must be None (copy only what cannot be avoided, each copy reported by plan) or "
        f"False (never copy, raise CopyRequiredError instead); got {copy!r}. copy=True is not "
        "accepted: batchmv never copies for the sake of it"
    )


def to_home(obj: Any, label: str, home: Any, allow_copy: bool, copies: list[str]) -> Any:
    """``obj`` as an array of the home library, shared without a copy where possible."""
    lib = _registry.library_of(obj)
    if lib == home.name:
        return home.asarray(obj)  # numpy scalars become 0-d arrays; arrays pass through
    if lib is not None:
        source = _registry.get_engine(lib)
        refusal = source.export_refusal(obj)
        if refusal:
            raise TypeError(f"{label} ({lib}) cannot be shared with {home.name}: {refusal}")
        arr, reason = _adopt(home, obj, label, allow_copy)
    elif hasattr(obj, "__dlpack__"):
        arr, reason = _adopt(home, obj, label, allow_copy)
    elif isinstance(obj, _SEQUENCES):
        reason = f"{label}: Python {type(obj).__name__} converted to an array with numpy.asarray"
        if not allow_copy:
            raise CopyRequiredError(f"{reason}; copy=False forbids it")
        arr = _registry.get_engine(_registry.SEQUENCE_HOME).asarray(obj)
        if home.name != _registry.SEQUENCE_HOME:
            arr, _ = home.adopt(arr, allow_copy=True, writable=False)
    else:
        raise TypeError(
            f"{label} must be an array (numpy, torch, jax or cupy, or any object with __dlpack__) "
            f"or a Python sequence; got {type(obj).__module__}.{type(obj).__qualname__}"
        )
    if reason:
        copies.append(reason)
    return arr


def _adopt(engine: Any, obj: Any, label: str, allow_copy: bool) -> tuple[Any, str | None]:
    try:
        arr, reason = engine.adopt(obj, allow_copy=allow_copy, writable=False)
    except CopyRequiredError as err:
        raise CopyRequiredError(f"{label}: {err}; copy=False forbids the copy") from None
    return arr, (f"{label}: {reason}" if reason else None)


def share(engine: Any, arr: Any, home: Any, label: str, allow_copy: bool, copies: list[str]) -> Any:
    """``arr`` (an array of ``home``) as an array of ``engine``, without a copy where possible."""
    refusal = home.export_refusal(arr)
    if refusal:
        raise TypeError(f"the {engine.name} engine cannot compute {label} ({home.name}): {refusal}")
    shared, reason = _adopt(engine, arr, label, allow_copy)
    copies.extend([reason] if reason else [])
    return shared


def _normalize_axis(axis: Any, x_shape: tuple[int, ...]) -> int:
    if isinstance(axis, bool):
        raise TypeError(f"axis must be an integer, got {axis!r}")
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"axis must be an integer, got {type(axis).__name__}") from None
    ndim = len(x_shape)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for x with shape {x_shape} ({ndim}-D)")
    return axis % ndim


def build(a: Any, x: Any, axis: Any, out: Any, backend: str | None, copy: object) -> Call:
    """Check a call and decide everything about it; nothing is computed."""
    handler = _registry.collection_for(type(a), type(x))
    if handler is not None:  # a lazy collection (registry.COLLECTIONS): its module takes the call
        return handler.build(a, x, axis, out, backend, copy)
    allow_copy = check_copy(copy)
    copies: list[str] = []
    home_name, engine_name = _select.route(type(a), type(x), backend)
    lib_a = _registry.library_of(a)
    if lib_a is None or lib_a != _registry.library_of(x):  # compare devices before any import
        _check_devices(a, x)
    home = _registry.get_engine(home_name)
    x_h = to_home(x, "x", home, allow_copy, copies)
    a_h = to_home(a, "A", home, allow_copy, copies)

    a_shape, x_shape = home.shape(a_h), home.shape(x_h)
    if len(a_shape) != 2:
        raise ValueError(f"A must be 2-D, shape (m, n); got A with shape {a_shape}")
    if len(x_shape) == 0:
        raise ValueError(f"x must be at least 1-D; got x with shape {x_shape} (a scalar)")
    ax = _normalize_axis(axis, x_shape)
    m, n = a_shape
    if x_shape[ax] != n:
        raise ValueError(
            f"x.shape[axis] must equal n = A.shape[1]: A has shape {a_shape}, x has shape {x_shape}, axis={axis}"
        )
    if home.device(a_h) != home.device(x_h):
        raise TypeError(
            f"A is on {home.device(a_h)} and x on {home.device(x_h)}; batchmv never moves data between devices"
        )
    dtype = home.result_dtype(a_h, x_h)
    home.check_dtype(dtype)
    y_shape = x_shape[:ax] + (m,) + x_shape[ax + 1 :]
    if out is not None:
        _check_out(home, out, y_shape, dtype, home.device(x_h))

    notes: list[str] = []
    if engine_name == "fastest":
        refusal = home.export_refusal(x_h) or home.export_refusal(a_h)
        if refusal:
            engine_name = home.name
            notes.append(f"fastest: {home.name}, the only engine that can take it: {refusal}")
        else:
            engine_name, why = _tune.choose(home, a_h, x_h, ax, dtype)
            notes.append(why)
    engine = _registry.get_engine(engine_name)
    if engine is home:
        a_e, x_e, out_e = a_h, x_h, out
    else:
        a_e = share(engine, a_h, home, "A", allow_copy, copies)
        x_e = share(engine, x_h, home, "x", allow_copy, copies)
        out_e = None
        if out is not None:
            try:
                out_e, _ = engine.adopt(out, allow_copy=False, writable=True)
            except CopyRequiredError as err:
                copies.append(f"out: {err}; result computed by {engine.name} and copied into out")
        # the result keeps the home library's promotion (numpy: int32 with float32 gives
        # float64; torch: float32), whichever engine computes it: the engine's name for
        # that dtype is the dtype of a one-element home array adopted by the engine
        dtype = engine.dtype_of(engine.adopt(home.empty((1,), dtype, x_h), allow_copy=True, writable=False)[0])
        engine.check_dtype(dtype)

    tracks = engine.tracks_graph(a_e, x_e)
    if out is not None and tracks:
        raise ValueError("out= cannot be used when A or x requires grad: the result must stay in the autograd graph")
    if engine.in_transform(a_e, x_e):
        if out is not None and engine is home:
            raise ValueError("out= cannot be used inside a transform (vmap/grad)")
        notes.append(engine.transform_note)
        casts = [  # operands are cast to the result dtype (the home library's promotion)
            f"{label}: cast from {engine.dtype_name(arr)} to the result dtype {dtype}"
            for label, arr in (("A", a_e), ("x", x_e))
            if engine.dtype_of(arr) != dtype
        ]
        copies.extend(casts)
        if copies and not allow_copy:  # casts, or an out= the engine cannot write
            raise CopyRequiredError("copy=False, but this call needs copies: " + "; ".join(copies))
        return Call(home, engine, a_e, x_e, out, None, ax, dtype, y_shape, None, tracks, tuple(copies), tuple(notes))

    a_cast = _cast_reason(engine, a_e, "A", dtype)
    x_cast = _cast_reason(engine, x_e, "x", dtype)
    out_strides = None
    if out_e is not None:
        clash = [label for label, arr in (("A", a_e), ("x", x_e)) if _overlap(engine, out_e, arr)]
        if clash:
            copies.append(f"out overlaps {' and '.join(clash)}: result computed in a temporary, then copied into out")
        else:
            out_strides = engine.strides(out_e)
    sched = _layout.schedule(
        engine.shape(a_e), engine.strides(a_e), engine.shape(x_e), engine.strides(x_e), ax,
        out_strides, engine.needs_blas_layout(dtype), a_cast, x_cast,
    )  # fmt: skip
    copies[:0] = [c for c in (sched.a_copy, sched.x_copy) if c]
    if out_strides is not None and not sched.out_direct and not sched.zero_axes:
        copies.append(
            f"out: strides {tuple(out_strides)} cannot take the GEMM result directly; "
            "result computed in a temporary, then copied into out"
        )
    if sched.zero_axes:
        notes.append(f"x has stride 0 along axes {sched.zero_axes}: each distinct vector is multiplied once, then broadcast")
    if not allow_copy and copies:
        raise CopyRequiredError("copy=False, but this call needs copies: " + "; ".join(copies))
    return Call(home, engine, a_e, x_e, out, out_e, ax, dtype, y_shape, sched, tracks, tuple(copies), tuple(notes))


_DLPACK_CPU = (1, 3)  # kDLCPU, kDLCUDAHost (pinned host memory)
_DLPACK_CUDA = (2, 13)  # kDLCUDA, kDLCUDAManaged


def dlpack_device(obj: Any) -> str | None:
    """Where an array of any library lives, from ``__dlpack_device__`` ("cpu", "cuda:0",
    ...); None for objects that do not say (sequences, scalars, tracers)."""
    if isinstance(obj, _SEQUENCES) or not hasattr(type(obj), "__dlpack_device__"):
        return None
    try:
        kind, index = obj.__dlpack_device__()
        kind, index = int(kind), int(index)
    except Exception:  # noqa: BLE001 - a tracer or a broken producer: the import will say
        return None
    if kind in _DLPACK_CPU:
        return "cpu"
    return f"cuda:{index}" if kind in _DLPACK_CUDA else f"DLPack device {kind}:{index}"


def _check_devices(a: Any, x: Any) -> None:
    """A and x from two libraries on two devices: TypeError naming both, before either is
    imported into the other's library (an import could fail obscurely, or copy)."""
    dev_a, dev_x = dlpack_device(a), dlpack_device(x)
    if dev_a is not None and dev_x is not None and dev_a != dev_x:
        lib_a, lib_x = (_registry.library_of(v) or type(v).__name__ for v in (a, x))
        raise TypeError(
            f"A ({lib_a}) is on {dev_a} and x ({lib_x}) on {dev_x}; batchmv never moves data between devices"
        )


def _check_out(home: Any, out: Any, y_shape: tuple[int, ...], dtype: Any, device: str) -> None:
    if not home.is_native(out):
        raise TypeError(
            f"out must be a {home.name} array (the result's library); got {type(out).__module__}.{type(out).__qualname__}"
        )
    if home.shape(out) != y_shape:
        raise ValueError(f"out has shape {home.shape(out)}; the result has shape {y_shape}")
    if home.dtype_of(out) != dtype:
        raise TypeError(f"out has dtype {home.dtype_name(out)}; the result has dtype {dtype} (batchmv never casts silently)")
    if home.device(out) != device:
        raise TypeError(f"out is on {home.device(out)} and the inputs on {device}")
    if not home.is_writable(out):
        raise ValueError("out is read-only")
    if 0 not in y_shape and any(st == 0 and size > 1 for st, size in zip(home.strides(out), y_shape)):
        raise ValueError(f"out has stride 0 along an axis (strides {home.strides(out)}): several results would share one element")


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


def _reshape(eng: Any, arr: Any, perm: tuple[int, ...], shape: tuple[int, ...]) -> Any:
    """``arr`` permuted by ``perm`` and viewed as ``shape``, skipping steps that change nothing."""
    if perm != tuple(range(len(perm))):
        arr = eng.permute(arr, perm)
    return arr if eng.shape(arr) == shape else eng.view(arr, shape)


def runner(call: Call) -> Callable[[Any, Any], Any] | None:
    """``run(A, x)``, which repeats ``call`` on any arrays of the same signature
    (``Engine.signature``): for a call on the engine of its home library, with no ``out``,
    no copy and one kernel.  None for any other call.  ``execute`` runs such calls through
    it, and the call caches remember it, so that a repeated call skips every check.

    >>> import numpy as np
    >>> run = runner(build(np.eye(3), np.ones((4, 3)), -1, None, None, None))
    >>> run(np.arange(9.0).reshape(3, 3), np.ones((2, 3)))
    array([[ 3., 12., 21.],
           [ 3., 12., 21.]])
    """
    eng, sched, axis = call.engine, call.schedule, call.axis
    if eng is not call.home or call.out is not None or call.copies:
        return None
    if sched is None:
        return lambda a, x: eng.transform_matvec(a, x, axis)
    if sched.loop_shape or sched.zero_axes:
        return None
    perm, view_shape, split_shape = sched.perm, sched.view_shape, sched.split_shape
    permute_x = perm != tuple(range(len(perm)))
    view_x = tuple(eng.shape(call.x)[i] for i in perm) != view_shape
    view_y = split_shape != (sched.rows, call.y_shape[axis])
    unperm = tuple(sorted(range(len(perm)), key=perm.__getitem__)) if permute_x else None
    if not (permute_x or view_x or view_y):
        return lambda a, x: eng.gemm(x, a)  # x is the GEMM's X2 and its result is y

    def run(a: Any, x: Any) -> Any:
        if permute_x:
            x = eng.permute(x, perm)
        y = eng.gemm(eng.view(x, view_shape) if view_x else x, a)
        if view_y:
            y = eng.view(y, split_shape)
        return eng.permute(y, unperm) if unperm else y

    return run


def execute(call: Call) -> Any:
    """Run a built call and return the result (``out`` itself when given)."""
    if not isinstance(call, Call):
        return call.execute()  # a lazy collection's call
    run = runner(call)
    if run is not None:
        return run(call.a, call.x)
    eng, sched = call.engine, call.schedule
    if sched is None:
        a, x = call.a, call.x
        a, x = (v if eng.dtype_of(v) == call.dtype else eng.astype(v, call.dtype) for v in (a, x))
        return _deliver(call, eng.transform_matvec(a, x, call.axis))
    a, x = call.a, call.x
    if sched.a_copy:
        a = eng.c_order_copy(a, call.dtype)
    if sched.zero_axes:
        x = eng.take_first(x, sched.zero_axes)
    if sched.x_copy:
        x = eng.vectors_last_copy(x, call.axis, call.dtype)
    x2 = _reshape(eng, x, sched.perm, sched.view_shape)
    r_shape = (*sched.loop_shape, sched.rows, call.y_shape[call.axis])
    direct = call.out_e is not None and sched.out_direct
    r2 = _reshape(eng, call.out_e, sched.perm, r_shape) if direct else None
    if r2 is None and eng is not call.home:  # a result another library adopts
        r2 = eng.empty(r_shape, call.dtype, x)
    if not sched.loop_shape:
        r2 = eng.gemm(x2, a, r2)
    elif call.tracks_graph:
        r2 = eng.stack([eng.gemm(x2[i], a) for i in itertools.product(*map(range, sched.loop_shape))], r_shape)
    else:
        if r2 is None:
            r2 = eng.empty(r_shape, call.dtype, x)
        for i in itertools.product(*map(range, sched.loop_shape)):
            eng.gemm(x2[i], a, r2[i])
    if direct:
        return call.out
    y = eng.view(r2, sched.split_shape) if sched.split_shape != r_shape else r2
    if sched.perm != tuple(range(len(sched.perm))):
        y = eng.permute(y, tuple(sorted(range(len(sched.perm)), key=sched.perm.__getitem__)))
    if call.out_e is not None:
        eng.assign(call.out_e, y)
        return call.out
    if sched.zero_axes:
        y = eng.broadcast_copy(y, call.y_shape)
    return _deliver(call, y)


def _deliver(call: Call, y: Any) -> Any:
    """The engine's result ``y`` as the caller gets it: a home-library array sharing its
    memory, or written into ``out`` when ``out`` could not be shared with the engine (that
    copy is in the plan)."""
    y_home = y if call.engine is call.home else call.home.adopt_result(y, allow_copy=False, writable=False)[0]
    if call.out is None:
        return y_home
    call.home.assign(call.out, y_home)
    return call.out


def make_plan(call: Call) -> Plan:
    """The public report of a built call."""
    if not isinstance(call, Call):
        return call.plan()  # a lazy collection's call
    eng, sched = call.engine, call.schedule
    a_shape, x_shape = eng.shape(call.a), eng.shape(call.x)
    m, n = a_shape
    batch = 1
    for i, size in enumerate(x_shape):
        batch *= size if i != call.axis else 1
    flops = 2 * m * n * batch
    itemsize = max(eng.itemsize(call.a), eng.itemsize(call.x))
    if sched is None:
        return Plan(
            backend=eng.name, kernel=eng.transform_kernel, copies=call.copies, flops=flops,
            bytes=itemsize * (m * n + batch * (n + m)), home=call.home.name, dtype=str(call.dtype),
            notes=call.notes,
        )  # fmt: skip
    distinct = sched.rows * sched.gemm_calls
    a_strides = eng.strides(call.a)
    views = (
        OperandView(
            "A.T", (n, m), (a_strides[1], a_strides[0]) if not sched.a_copy else (1, n), sched.a_order,
            None if sched.a_copy else eng.address(call.a)[1], "copy of A" if sched.a_copy else "A",
        ),
        OperandView(
            "X2", (sched.rows, n), sched.x2_strides if not sched.x_copy else (n, 1), sched.x_order,
            None if sched.x_copy else eng.address(call.x)[1], "copy of x" if sched.x_copy else "x",
        ),
        OperandView(
            "Y2", (sched.rows, m), sched.y2_strides, "row-major" if not sched.out_direct else _layout.blas_order(
                sched.rows, m, *sched.y2_strides),
            eng.address(call.out_e)[1] if sched.out_direct else None, "out" if sched.out_direct else "y",
        ),
    )  # fmt: skip
    return Plan(
        backend=eng.name,
        kernel="gemm" if sched.gemm_calls == 1 else "gemm loop",
        copies=call.copies,
        flops=flops,
        bytes=itemsize * (m * n + distinct * n + batch * m),
        home=call.home.name,
        dtype=str(call.dtype),
        gemm_calls=sched.gemm_calls,
        views=views,
        notes=call.notes,
    )
