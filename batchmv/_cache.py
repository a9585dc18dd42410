"""Remembered calls: a call repeated on arrays of the same layout skips every check.

A call that runs as one kernel on the engine of its home library, with no ``out`` and no
copy (:func:`batchmv._run.runner`), is remembered under a key made of what its schedule
depends on: the types, the engine's ``layout_key`` of A and of x (shapes, strides, dtypes,
lazy bits), the axis, the arguments and the selection settings.  The next call with the
same key runs the remembered kernel directly.  Values are never part of a key, so any
arrays of that layout take the path; arrays whose engine gives no layout key (tracers,
arrays under a transform or a compiler) always go through the full checks.  What a key
leaves out is checked by the kernel itself (devices) or by the run as it goes (autograd);
a remembered run that raises is repeated through the full checks (:mod:`batchmv._api`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import _registry, _run, _select, _sparse, _sparse_kits

#: Calls ``matvec`` remembers, at most; beyond, the memory starts over (a program with that
#: many kinds of call gains little from it).
MAX_CALLS = 256


class Runners:
    """Remembered ``run(A, x)`` functions under their keys, at most ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._runs: dict[tuple, Callable[[Any, Any], Any]] = {}
        #: ``get(key)``: the remembered ``run(A, x)`` for ``key`` (made by :func:`key` or
        #: by the operator: always hashable), or None
        self.get = self._runs.get

    def __len__(self) -> int:
        return len(self._runs)


    def remember(self, key: tuple, call: Any, a: Any, x: Any) -> Callable[[Any, Any], Any] | None:
        """Remember how ``call``, built from ``a`` and ``x`` for ``key``, runs, and return
        that ``run``: when it is a call to remember and it computes on ``a`` and ``x``
        themselves (not on conversions of them, such as the plain ndarray numpy makes of a
        subclass).  None otherwise."""
        if call.a is not a or call.x is not x:
            return None
        if isinstance(call, _sparse.SparseCall):
            run = _sparse.runner(call)
        elif call.schedule is None and call.engine.strided:  # built under a transform (vmap)
            return None
        else:
            run = _run.runner(call)
        if run is None:
            return None
        if len(self._runs) >= self.limit:
            self._runs.clear()
        self._runs[key] = run
        return run


#: What ``matvec`` remembers (prepared operators keep their own).
calls = Runners(MAX_CALLS)


def key(a: Any, x: Any, axis: Any, backend: Any, copy: Any, op: Any = "N") -> tuple | None:
    """The key of ``matvec(a, x, axis=axis, backend=backend, copy=copy, op=op)`` (no
    ``out``), or None when the call is not one to remember."""
    kind_a, kind_x = type(a), type(x)
    engine = _registry.engine_of_types(kind_a, kind_x)
    if type(axis) is not int or not (copy is None or copy is False) or type(op) is not str:
        return None  # (values equal to 0 or False that are not False: the checks refuse them)
    if backend is not None and type(backend) is not str:
        return None  # (so that every key can be hashed: the checks say what is wrong)
    layouts = engine.layout_keys(a, x) if engine is not None else None
    if layouts is None:
        layouts = sparse_layouts(a, x)
        if layouts is None:
            return None
    settings = _select.settings(backend)
    if settings is None:  # ("fastest": an engine measured per kind of call, which a key does not hold)
        return None
    return (kind_a, kind_x, layouts, axis, backend, copy, op, settings)


def sparse_layouts(a: Any, x: Any) -> tuple | None:
    """(the layout key of a sparse A, that of x) when A is a sparse matrix of a library
    whose kit keys it and x an array of that kit's engine; else None."""
    name = _sparse_kits.library_of_pair(type(a), type(x))
    if name is None:
        return None
    kit = _sparse_kits.get(name)
    return kit.layout_keys(a, x, _registry.get_engine(kit.engine))
