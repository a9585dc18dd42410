"""Prepared operators: :func:`prepare` checks A and shares it with its engine once."""

from __future__ import annotations

import threading
from typing import Any, Optional

from . import _driver, _registry, _select
from ._plan import Plan

#: Schedules a prepared operator keeps (one per layout of x it has seen), at most.
_MAX_LAYOUTS = 64


class MatVec:
    """``x -> A @ x`` along an axis, for one fixed A (see :func:`prepare`).

    The engine is chosen when the operator is prepared.  Calls on arrays of the engine's
    own library reuse the checked schedule of the last call with the same layout, so the
    per-call work is a few dictionary look-ups, the views and one GEMM.
    """

    def __init__(self, A: Any, *, backend: Optional[str] = None, copy: Optional[bool] = None) -> None:
        _driver.check_copy(copy)
        home_name, engine_name = _select.route(type(A), type(A), backend)
        if engine_name == "fastest":
            raise ValueError('prepare() needs a fixed engine; "fastest" measures each kind of call: use matvec')
        # check A, and share it with the engine (refusing what would lose its meaning)
        engine = _registry.get_engine(engine_name)
        home = _registry.get_engine(home_name)
        a_h = _driver.to_home(A, "A", home, copy is None, [])
        shape = home.shape(a_h)
        if len(shape) != 2:
            raise ValueError(f"A must be 2-D, shape (m, n); got A with shape {shape}")
        self.A = A
        self.backend = engine.name
        self.copy = copy
        self._engine = engine
        self._shared = a_h if engine is home else _driver.share(engine, a_h, home, "A", copy is None, [])
        self._calls: dict[Any, _driver.Call] = {}
        self._lock = threading.Lock()

    @property
    def shape(self) -> tuple[int, int]:
        return self._engine.shape(self._shared)

    def __repr__(self) -> str:
        m, n = self.shape
        return f"<batchmv.MatVec ({m}, {n}) on the {self.backend} engine>"

    def __call__(self, x: Any, *, axis: int = -1, out: Any = None) -> Any:
        """``matvec(A, x, axis=axis, out=out)`` on the prepared engine."""
        engine = self._engine
        if out is None and engine.is_native(x):
            signature = engine.signature(x)
            if signature is not None:
                key = (signature, axis)
                call = self._calls.get(key)
                if call is None:
                    call = _driver.build(self._shared, x, axis, None, self.backend, self.copy)
                    with self._lock:
                        if len(self._calls) >= _MAX_LAYOUTS:  # many shapes: keep memory bounded
                            self._calls.clear()
                        self._calls[key] = call
                return _driver.execute(call._replace(x=x))
        return _driver.execute(self._build(x, axis, out))

    def plan(self, x: Any, *, axis: int = -1, out: Any = None) -> Plan:
        """What ``self(x, axis=axis, out=out)`` does, computing nothing."""
        return _driver.make_plan(self._build(x, axis, out))

    def _build(self, x: Any, axis: int, out: Any) -> Any:
        a = self._shared if _registry.library_of(x) == self.backend else self.A
        return _driver.build(a, x, axis, out, self.backend, self.copy)


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
