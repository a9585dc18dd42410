"""The public functions: :func:`matvec` computes, :func:`plan` reports."""

from __future__ import annotations

from typing import Any, Optional

from . import _cache, _call, _registry, _run, _tune
from ._plan import Plan, describe


def matvec(
    A: Any,
    x: Any,
    /,
    *,
    axis: int = -1,
    out: Any = None,
    backend: Optional[str] = None,
    copy: Optional[bool] = None,
) -> Any:
    """Multiply every vector of ``x`` along ``axis`` by the shared matrix ``A``.

    ``A`` has shape (m, n); ``x.shape[axis] == n``; the result has ``x``'s shape with
    ``axis`` replaced by m, and belongs to ``x``'s library.  The whole batch is one GEMM
    (``X2 @ A.T`` on views) whenever the batch axes can be viewed as one; nothing is copied
    unless it must be, and :func:`plan` lists every copy.

    Parameters
    ----------
    A, x : arrays of numpy, torch, jax or cupy, objects with ``__dlpack__``, or sequences.
    axis : the axis of ``x`` that holds the vectors.
    out : optional array of the result's library, shape and dtype; written and returned.
    backend : engine name ("auto", "numpy", "torch", ...) or None for
        ``use_backend``/``BATCHMV_BACKEND``/"auto".
    copy : None (copy only what cannot be avoided) or False (raise
        :class:`CopyRequiredError` instead of copying).

    >>> import numpy as np, batchmv
    >>> A = np.array([[1.0, 2.0], [0.0, 1.0], [1.0, 1.0]])
    >>> batchmv.matvec(A, np.array([[1.0, 1.0], [2.0, 0.0]]))
    array([[3., 1., 2.],
           [2., 0., 2.]])
    >>> batchmv.matvec(A, np.array([[1.0, 2.0], [1.0, 0.0]]), axis=0)
    array([[3., 2.],
           [1., 0.],
           [2., 2.]])
    """
    key = _cache.key(A, x, axis, backend, copy) if out is None else None
    if key is not None:
        run = _cache.calls.lookup(key)
        if run is not None:
            return run(A, x)
    adapter = _registry.adapter_for(type(A), type(x))
    if adapter is not None:  # a lazy collection (dask): its adapter takes the whole call
        return adapter.matvec(A, x, axis=axis, out=out, backend=backend, copy=copy)
    tracer = _call.compiling_engine(A, x)
    if tracer is not None:  # two libraries under a compiler: this call runs eagerly
        return tracer.run_eagerly(matvec, A, x, axis=axis, out=out, backend=backend, copy=copy)
    call = _call.build(A, x, axis, out, backend, copy, _tune.choose)
    run = _cache.calls.remember(key, call, A, x) if key is not None else None
    return run(A, x) if run is not None else _run.execute(call)


def plan(
    A: Any,
    x: Any,
    /,
    *,
    axis: int = -1,
    out: Any = None,
    backend: Optional[str] = None,
    copy: Optional[bool] = None,
) -> Plan:
    """Report what :func:`matvec` would do with the same arguments, computing nothing.

    With ``backend="fastest"`` it reports the engine measured for this kind of call, or,
    before the first ``matvec`` of the kind has measured, the home library's engine and the
    candidates that call will time.

    >>> import numpy as np, batchmv
    >>> p = batchmv.plan(np.ones((3, 4)), np.ones((4, 10)), axis=0, backend="numpy")
    >>> p.kernel, p.copies
    ('gemm', ())
    >>> print(p)  # doctest: +ELLIPSIS
    batchmv plan: numpy result, numpy engine, dtype float64
      kernel: gemm (1 call), 240 flops, ...
    """
    adapter = _registry.adapter_for(type(A), type(x))
    if adapter is not None:
        return adapter.plan(A, x, axis=axis, out=out, backend=backend, copy=copy)
    return describe(_call.build(A, x, axis, out, backend, copy, _tune.recall))
