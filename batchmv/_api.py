"""The public functions: :func:`matvec` computes, :func:`plan` reports."""

from __future__ import annotations

from typing import Any, Optional

from . import _cache, _call, _registry, _run, _tune
from ._checks import check_op
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
    op: str = "N",
) -> Any:
    """Multiply every vector of ``x`` along ``axis`` by the shared matrix ``op(A)``.

    ``A`` has shape (m, n); op(A) is A (``op="N"``), its transpose A^T (``"T"``) or its
    conjugate transpose A^H (``"H"``, the adjoint; A^T for real A), shape (m, n) or (n, m),
    like BLAS's ``trans`` argument.  ``x.shape[axis]`` is op(A)'s second dimension; the
    result has ``x``'s shape with ``axis`` replaced by op(A)'s first, and belongs to
    ``x``'s library.  The whole batch is one GEMM on views (``X2 @ A.T``; ``X2 @ A`` for
    the transpose) whenever the batch axes can be viewed as one; A is never copied to
    transpose or conjugate it, nothing is copied unless it must be, and :func:`plan` lists
    every copy.

    The adjoint conjugates A with BLAS's conjugate flag where the engine's GEMM can on
    these views (torch on the CPU, cupy: an operand read transposed); otherwise (numpy's
    matmul has no such flag) as ``conj(A^T conj(x))``: x is conjugated into a temporary of
    the vectors' size and y in place, listed in ``plan(...).temporaries`` (``copy=False``
    refuses that temporary, as it refuses every input-sized buffer).  torch's lazy
    conjugate views (``A.conj()``, ``A.mH``) are read the same way, never resolved into a
    copy of A.

    Parameters
    ----------
    A, x : arrays of numpy, torch, jax or cupy, objects with ``__dlpack__``, or sequences;
        A may also be sparse (scipy.sparse, torch sparse, jax BCOO/BCSR: one sparse-times-dense
        product, ``plan(...).kernel == "spmm"``); x is always dense.
    axis : the axis of ``x`` that holds the vectors.
    out : optional array of the result's library, shape and dtype; written and returned.
    backend : engine name ("auto", "numpy", "torch", ...) or None for
        ``use_backend``/``BATCHMV_BACKEND``/"auto".
    copy : None (copy only what cannot be avoided) or False (raise
        :class:`CopyRequiredError` instead of copying).
    op : "N", "T" or "H" (see above); ValueError for anything else.

    Raises ValueError for shapes that do not match, TypeError for arrays or dtypes an engine
    cannot take, :class:`CopyRequiredError` with ``copy=False`` where a copy is needed.

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
    key = _cache.key(A, x, axis, backend, copy, op) if out is None else None
    if key is not None:
        run = _cache.calls.get(key)
        if run is not None:
            try:
                return run(A, x)
            except Exception:  # noqa: BLE001 - what the key leaves out (devices): the checks below say
                pass
    return compute(A, x, axis, out, backend, copy, check_op(op), key)


def compute(A: Any, x: Any, axis: Any, out: Any, backend: Any, copy: Any, op: str, key: Optional[tuple] = None) -> Any:
    """:func:`matvec` through every check, for any op of batchmv's: "C" (conj(A), an
    operator's ``op.T.H``) too, which the Dask adapter's blocks take; ``key``: the call's
    key (:func:`batchmv._cache.key`), under which it is remembered, or None."""
    adapter = _registry.adapter_for(type(A), type(x))
    if adapter is not None:  # a lazy collection (dask): its adapter takes the whole call
        return adapter.matvec(A, x, axis=axis, out=out, backend=backend, copy=copy, op=op)
    tracer = _call.compiling_engine(A, x)
    if tracer is not None:  # two libraries under a compiler: this call runs eagerly
        return tracer.run_eagerly(compute, A, x, axis, out, backend, copy, op)
    call = _call.build(A, x, axis, out, backend, copy, _tune.choose, op)
    run = _cache.calls.remember(key, call, A, x) if key is not None else None
    return run(A, x) if run is not None else _run.execute(call)


def rmatvec(
    A: Any,
    x: Any,
    /,
    *,
    axis: int = -1,
    out: Any = None,
    backend: Optional[str] = None,
    copy: Optional[bool] = None,
) -> Any:
    """``y = A^H x`` along ``axis``: :func:`matvec` with ``op="H"`` (SciPy's ``rmatvec``).

    ``A`` has shape (m, n), ``x.shape[axis] == m``, the result has n there.  Along the
    last axis this is ``numpy.conj(numpy.vecmat(x, A))``: NumPy 2.2's ``vecmat``
    conjugates its first argument (the vectors), ``rmatvec`` conjugates A; ``matvec(A, x,
    op="T")`` is ``numpy.vecmat(numpy.conj(x), A)``.  Same arguments, guarantees and
    errors as :func:`matvec`.

    >>> import numpy as np, batchmv
    >>> A = np.array([[1.0, 1j], [0.0, 2.0]])
    >>> batchmv.rmatvec(A, np.array([1.0, 1.0]))
    array([1.-0.j, 2.-1.j])
    >>> bool(np.allclose(batchmv.rmatvec(A, np.eye(2)), np.conj(np.vecmat(np.eye(2), A))))
    True
    """
    return matvec(A, x, axis=axis, out=out, backend=backend, copy=copy, op="H")


def plan(
    A: Any,
    x: Any,
    /,
    *,
    axis: int = -1,
    out: Any = None,
    backend: Optional[str] = None,
    copy: Optional[bool] = None,
    op: str = "N",
) -> Plan:
    """Report what :func:`matvec` would do with the same arguments, computing nothing
    (``op="H"``: what :func:`rmatvec` would do).

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
    return report(A, x, axis, out, backend, copy, check_op(op))


def report(A: Any, x: Any, axis: Any, out: Any, backend: Any, copy: Any, op: str) -> Plan:
    """:func:`plan` for any op of batchmv's ("C" too: see :func:`compute`)."""
    adapter = _registry.adapter_for(type(A), type(x))
    if adapter is not None:
        return adapter.plan(A, x, axis=axis, out=out, backend=backend, copy=copy, op=op)
    return describe(_call.build(A, x, axis, out, backend, copy, _tune.recall, op))
