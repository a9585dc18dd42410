"""The rules that pick an engine, all in one place.

For one call, the engine name comes from the first of:

1. the ``backend=`` argument, when it is not None;
2. the innermost :func:`use_backend` context of the current thread or task;
3. the environment variable ``BATCHMV_BACKEND``, read once, when batchmv first needs it
   (an empty value counts as unset);
4. ``"auto"``.

``"auto"`` means the home library's own engine: the library of ``x`` (of ``A`` when ``x``
is a plain Python sequence; torch for objects that only speak DLPack).  ``"fastest"``
means the engine measured fastest for this kind of call among those that take it without
a copy (:mod:`batchmv._tune`).  Names are case-insensitive and surrounding whitespace is
ignored.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

from . import _registry
from ._checks import SEQUENCES
from ._registry import ENGINES

ENV_VAR = "BATCHMV_BACKEND"
VALID_NAMES: tuple[str, ...] = ("auto", "fastest", *ENGINES)

_context: contextvars.ContextVar[str | None] = contextvars.ContextVar("batchmv_backend", default=None)
_UNREAD = object()
_env_value: object = _UNREAD


def normalize(name: object, source: str) -> str:
    """``name`` as a valid engine name or ``"auto"``; ValueError naming ``source`` otherwise.

    >>> normalize("  NumPy ", "the backend argument")
    'numpy'
    """
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string or None, got {type(name).__name__} (from {source})")
    key = name.strip().lower()
    if key not in VALID_NAMES:
        raise ValueError(
            f"unknown backend {name!r} (from {source}); valid names: {', '.join(VALID_NAMES)}"
        )
    return key


def _environment() -> str:
    """The value of ``BATCHMV_BACKEND`` as read the first time it was needed ("" if unset)."""
    global _env_value
    if _env_value is _UNREAD:
        _env_value = os.environ.get(ENV_VAR, "")
    assert isinstance(_env_value, str)
    return _env_value


def _from_environment() -> str | None:
    raw = _environment()
    if raw.strip() == "":
        return None
    return normalize(raw, f"the environment variable {ENV_VAR}={raw!r}")


def requested(backend: str | None) -> str:
    """The engine name the rules above give for one call (``"auto"`` not yet resolved)."""
    if backend is not None:
        return normalize(backend, "the backend argument")
    name = _context.get()
    if name is not None:
        return name
    return _from_environment() or "auto"


def settings(backend: str | None) -> tuple | None:
    """What the engine of a call with this ``backend=`` argument (None or a string) depends
    on besides it, as a value that changes whenever the rules above could give another
    answer: nothing when ``backend`` is given; the context when one is set; else the
    environment (read now if this is the first call that needs it).  None when the rules
    give "fastest": its engine is measured per kind of call, and a kind holds more than
    layouts (alignment, writability: :func:`batchmv._tune.kind_of`), so a call with the
    same layouts may get another engine: such calls are not remembered."""
    if backend is not None:
        return None if backend.strip().lower() == "fastest" else ()
    name = _context.get()
    if name is not None:
        return None if name == "fastest" else (name,)
    env = _env_value  # (read once: a repeated call pays no function call for it)
    if env is _UNREAD:
        env = _environment()
    return None if env and env.strip().lower() == "fastest" else (None, env)


def home_of(a_type: type, x_type: type) -> str:
    """The library that owns the result: x's, else A's (when x is a Python sequence);
    torch for objects that only speak DLPack; numpy when both are sequences."""
    for kind in (x_type, a_type):
        lib = _registry.library_of_type(kind)
        if lib is not None:
            return lib
        if hasattr(kind, "__dlpack__"):
            return _registry.DLPACK_HOME
        if not issubclass(kind, SEQUENCES):
            break  # x of an unsupported type: its home decides the error message
    return _registry.SEQUENCE_HOME


@_registry.constant_when_traced
def route(a_type: type, x_type: type, backend: str | None) -> tuple[str, str]:
    """(home library, engine) for a call on arrays of these types.

    Depends on types and settings only, never on values: torch.compile treats it as a
    constant (:func:`batchmv._registry.constant_when_traced`), so the engine is chosen when
    the graph is traced.
    """
    home = home_of(a_type, x_type)
    name = requested(backend)
    return home, (home if name == "auto" else name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Run the calls inside the ``with`` block on engine ``name`` (unless they pass ``backend=``).

    Built on :mod:`contextvars`: each thread and each asyncio task sees its own setting,
    and a new thread starts from the default.

    >>> import batchmv, numpy as np
    >>> with batchmv.use_backend("numpy"):
    ...     batchmv.plan(np.eye(2), np.ones((3, 2))).backend
    'numpy'
    """
    token = _context.set(normalize(name, "use_backend()"))
    try:
        yield _context.get()  # type: ignore[misc]
    finally:
        _context.reset(token)
