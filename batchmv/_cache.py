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

from . import _call, _registry, _run, _select

#: Calls ``matvec`` remembers, at most; beyond, the memory starts over (a program with that
#: many kinds of call gains little from it).
MAX_CALLS = 256


class Runners:
    """Remembered ``run(A, x)`` functions under their keys, at most ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._runs: dict[tuple, Callable[[Any, Any], Any]] = {}
        #: ``get(key)``: the remembered run or None, for keys known to be hashable
        self.get = self._runs.get

    def __len__(self) -> int:
        return len(self._runs)

    def lookup(self, key: tuple) -> Callable[[Any, Any], Any] | None:
        """The remembered ``run(A, x)`` for ``key``, or None."""
        try:
            return self._runs.get(key)
        except TypeError:  # an unhashable argument (backend): the full checks will say
            return None

    def remember(self, key: tuple, call: Any, a: Any, x: Any) -> Callable[[Any, Any], Any] | None:
        """Remember how ``call``, built from ``a`` and ``x`` for ``key``, runs, and return
        that ``run``: when it is a call to remember and it computes on ``a`` and ``x``
        themselves (not on conversions of them, such as the plain ndarray numpy makes of a
        subclass).  None otherwise."""
        if not isinstance(call, _call.Call) or call.a is not a or call.x is not x:
            return None
        if call.schedule is None and call.engine.strided:  # built under a transform (vmap)
            return None
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
    if engine is None or type(axis) is not int or not (copy is None or copy is False):
        return None  # (values equal to 0 or False that are not False: the checks refuse them)
    layout_a = engine.layout_key(a)
    if layout_a is None:
        return None
    layout_x = engine.layout_key(x)
    if layout_x is None:
        return None
    return (kind_a, kind_x, layout_a, layout_x, axis, backend, copy, op, _select.settings(backend))
