"""Running a checked call (:class:`batchmv._call.Call`): the views and GEMMs of its
schedule, or the engine's expression, and the result handed back to its home library."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from . import _skinny, _sparse
from ._call import Call


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
    >>> from batchmv._call import build
    >>> run = runner(build(np.eye(3), np.ones((4, 3)), -1, None, None, None))
    >>> run(np.arange(9.0).reshape(3, 3), np.ones((2, 3)))
    array([[ 3., 12., 21.],
           [ 3., 12., 21.]])
    """
    eng, sched, axis, op, conj = call.engine, call.schedule, call.axis, call.op, call.conj
    if eng is not call.home or call.out is not None or call.copies:
        return None
    if sched is None:
        return _skinny.expression_for(call) or eng.expression_runner(axis, op)
    if call.kernel == "gemv":  # one vector: the library's matrix-vector product on A and x
        return eng.gemv_kernel(call.a, call.x, op in ("T", "H"))
    if sched.loop_shape or sched.zero_axes:
        return None
    perm, view_shape, split_shape = sched.perm, sched.view_shape, sched.split_shape
    permute_x = perm != tuple(range(len(perm)))
    view_x = tuple(eng.shape(call.x)[i] for i in perm) != view_shape
    view_y = split_shape != (sched.rows, call.y_shape[axis])
    unperm = tuple(sorted(range(len(perm)), key=perm.__getitem__)) if permute_x else None
    # A's memory without torch's lazy conjugate bit, when it has one (a bit is part of the
    # key, and a tensor's bit never changes)
    a_plain, plain = eng.plain(call.a)
    # the GEMM, chosen once for views laid out as this call's (row blocks of A for skinny batches)
    x2 = eng.view(eng.permute(call.x, perm) if permute_x else call.x, view_shape) if view_x else call.x
    row = eng.row_view(x2) is not x2  # (one row whose stride the GEMM would copy it for: the key fixes it)
    gemm = _skinny.gemm_for(call) or eng.gemm_kernel(x2, a_plain, op not in ("T", "H"), conj == "flag")
    if not (permute_x or view_x or row or view_y or plain or conj == "xy"):
        return lambda a, x: gemm(x, a)  # x is the GEMM's X2 and its result is y

    def run(a: Any, x: Any) -> Any:
        if plain:
            a = eng.plain(a)[0]
        if permute_x:
            x = eng.permute(x, perm)
        x2 = eng.view(x, view_shape) if view_x else x
        if row:
            x2 = eng.row_view(x2)
        if conj == "xy":  # (a new y where autograd records this call, else y in place)
            y = eng.conj_inplace(gemm(eng.conj_copy(x2), a), eng.tracks_graph(a, x))
        else:
            y = gemm(x2, a)
        if view_y:
            y = eng.view(y, split_shape)
        return eng.permute(y, unperm) if unperm else y

    return run


def _gemm(eng: Any, op: str, conj: Any, copied: bool = False) -> Any:
    """The engine's GEMM for op(A) on A itself (``trans=False`` for op "T"/"H", whose
    GEMM reads A as it is; a copy of A is C-ordered op(A)), with the conjugate flag where
    the call uses it; keywords only where they differ from the defaults."""
    kw = {"trans": False} if op in ("T", "H") and not copied else {}
    if conj == "flag":
        kw["conj"] = True
    if not kw:
        return lambda x2, a, out=None: eng.gemm(x2, a, out)
    return lambda x2, a, out=None: eng.gemm(x2, a, out, **kw)  # (eng.gemm looked up per call)


def execute(call: Call) -> Any:
    """Run a built call and return the result (``out`` itself when given)."""
    if isinstance(call, _sparse.SparseCall):
        return _sparse.execute(call)
    run = runner(call)
    if run is not None:
        return run(call.a, call.x)
    eng, sched, conj, tracked = call.engine, call.schedule, call.conj, call.tracks_graph
    if sched is None:
        a, x = call.a, call.x
        a, x = (v if eng.dtype_of(v) == call.dtype else eng.astype(v, call.dtype) for v in (a, x))
        blocks = _skinny.expression_for(call)
        return _deliver(call, blocks(a, x) if blocks else eng.expression(a, x, call.axis, call.op))
    a, x = call.a, call.x
    if call.op != "N" or conj is not None:
        a = eng.plain(a)[0]
    if sched.a_copy:  # a C-ordered copy of op(A) (without its conjugate)
        a = eng.c_order_copy(eng.permute(a, (1, 0)) if call.op in ("T", "H") else a, call.dtype)
        if conj == "copy":
            a = eng.conj_inplace(a, tracked)
    if sched.zero_axes:
        x = eng.take_first(x, sched.zero_axes)
    if sched.x_copy:
        x = eng.vectors_last_copy(x, call.axis, call.dtype)
    x2 = eng.row_view(_reshape(eng, x, sched.perm, sched.view_shape))
    if conj == "xy":  # conj(A) @ x == conj(A @ conj(x)): conjugate x (its copy in place), later y
        x2 = eng.conj_inplace(x2, tracked) if sched.x_copy else eng.conj_copy(x2)
    r_shape = (*sched.loop_shape, sched.rows, call.y_shape[call.axis])
    direct = call.out_e is not None and sched.out_direct
    r2 = _reshape(eng, call.out_e, sched.perm, r_shape) if direct else None
    if r2 is None and eng is not call.home:  # a result another library adopts
        r2 = eng.empty(r_shape, call.dtype, x)
    gemm = _skinny.gemm_for(call) or _gemm(eng, call.op, conj, copied=bool(sched.a_copy))
    if not sched.loop_shape:
        r2 = gemm(x2, a, r2)
    elif tracked:
        r2 = eng.stack([gemm(x2[i], a) for i in itertools.product(*map(range, sched.loop_shape))], r_shape)
    else:
        if r2 is None:
            r2 = eng.empty(r_shape, call.dtype, x)
        for i in itertools.product(*map(range, sched.loop_shape)):
            gemm(x2[i], a, r2[i])
    if conj == "xy":
        r2 = eng.conj_inplace(r2, tracked)
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
    y_home = y if call.engine is call.home else call.home.adopt_result(y, allow_copy=False, writable=False, source=call.engine)[0]
    if call.out is None:
        return y_home
    call.home.assign(call.out, y_home)
    return call.out


