"""Prepared operators: :func:`prepare` checks A and shares it with its engine once."""

from __future__ import annotations

from typing import Any, Optional

from . import _cache, _call, _registry, _run, _select
from ._checks import check_copy, check_shapes
from ._plan import Plan, describe

#: Kinds of call (layouts of x) a prepared operator remembers, at most.
_MAX_LAYOUTS = 64


class MatVec:
    """``x -> A @ x`` along an axis, for one fixed A (see :func:`prepare`).

    The engine is chosen when the operator is prepared.  A call on an array of the engine's
    own library, with no ``out``, that runs as one kernel without a copy is remembered per
    signature of x (``Engine.signature``: shape, strides, dtype, device, grad state); its
    repeats run that kernel directly: one dictionary look-up, the views and one GEMM.
    """

    def __init__(self, A: Any, *, backend: Optional[str] = None, copy: Optional[bool] = None) -> None:
        check_copy(copy)
        home_name, engine_name = _select.route(type(A), type(A), backend)
        if engine_name == "fastest":
            raise ValueError('prepare() needs a fixed engine; "fastest" measures each kind of call: use matvec')
        # check A, and share it with the engine (refusing what would lose its meaning)
        engine = _registry.get_engine(engine_name)
        home = _registry.get_engine(home_name)
        a_h = _call.to_home(A, "A", home, copy is None, [])
        shape = home.shape(a_h)
        check_shapes(shape, shape[-1:], -1)
        self.A = A
        self.backend = engine.name
        self.copy = copy
        self._engine = engine
        self._shared = a_h if engine is home else _call.share(engine, a_h, home, "A", copy is None, [])
        self._runners = _cache.Runners(_MAX_LAYOUTS)

    @property
    def shape(self) -> tuple[int, int]:
        return self._engine.shape(self._shared)

    def __repr__(self) -> str:
        m, n = self.shape
        return f"<batchmv.MatVec ({m}, {n}) on the {self.backend} engine>"

    def __call__(self, x: Any, *, axis: int = -1, out: Any = None) -> Any:
        """``matvec(A, x, axis=axis, out=out)`` on the prepared engine."""
        engine, shared = self._engine, self._shared
        key = None
        if out is None and type(axis) is int and engine.is_native(x):
            signature = engine.signature(shared, x)
            if signature is not None:
                key = (type(x), signature, axis)
                run = self._runners.lookup(key)
                if run is not None:
                    return run(shared, x)
        adapter = _registry.adapter_for(type(x))
        if adapter is not None:  # a lazy collection (dask): its adapter takes the whole call
            return adapter.matvec(self.A, x, axis=axis, out=out, backend=self._nameable, copy=self.copy)
        call = self._build(x, axis, out)
        run = self._runners.remember(key, call, shared, x) if key is not None else None
        return run(shared, x) if run is not None else _run.execute(call)

    def plan(self, x: Any, *, axis: int = -1, out: Any = None) -> Plan:
        """What ``self(x, axis=axis, out=out)`` does, computing nothing."""
        adapter = _registry.adapter_for(type(x))
        if adapter is not None:
            return adapter.plan(self.A, x, axis=axis, out=out, backend=self._nameable, copy=self.copy)
        return describe(self._build(x, axis, out))

    def _build(self, x: Any, axis: int, out: Any) -> Any:
        a = self._shared if _registry.library_of(x) == self.backend else self.A
        return _call.build(a, x, axis, out, None, self.copy, engine=self.backend)

    @property
    def _nameable(self) -> Optional[str]:
        """The engine as ``backend=`` names it (None for an array-API library's own engine)."""
        return self.backend if self.backend in _registry.ENGINES else None


def prepare(A: Any, *, backend: Optional[str] = None, copy: Optional[bool] = None) -> MatVec:
    """Check ``A`` once and share it with its engine once; call the result like ``matvec``.

    For the time-series use: one matrix applied thousands of times to small batches.

    >>> import numpy as np, batchmv
    >>> op = batchmv.prepare(np.array([[1.0, 2.0], [3.0, 4.0]]))
    >>> op(np.array([[1.0, 0.0], [0.0, 1.0]])).tolist()
    [[1.0, 3.0], [2.0, 4.0]]
    >>> op.plan(np.ones(2)).kernel
    'gemm'
    """
    return MatVec(A, backend=backend, copy=copy)
