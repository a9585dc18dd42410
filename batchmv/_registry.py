"""The engine registry: which array libraries batchmv knows, how it finds them, and how
it loads their engines.

This is the only place that names array libraries.  Detection never imports a library:
an object can only be a ``torch.Tensor`` if ``torch`` is already in ``sys.modules`` (the
way einops and array-api-compat's ``is_*_array`` checks work).  It looks at types only,
never at values, so tracers (torch.compile, jax.jit) flow through, and its answer is
cached per type.  Engines are imported on first use, built completely, and published under
a lock (einops' lesson), so concurrent first calls from several threads all see one
finished engine.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._engine import Engine


@dataclass(frozen=True)
class EngineSpec:
    """What batchmv knows about one array library before importing it."""

    name: str  #: engine name, as given to ``backend=``
    package: str  #: the top-level module of the array library
    install: str  #: what to install when the library is missing
    array_types: tuple[str, ...]  #: attribute paths of the library's array types


ENGINES: dict[str, EngineSpec] = {
    spec.name: spec
    for spec in (
        EngineSpec("numpy", "numpy", "pip install numpy", ("ndarray", "generic")),
        EngineSpec("torch", "torch", "pip install torch", ("Tensor",)),
        EngineSpec("jax", "jax", "pip install 'batchmv[jax]'  (or: pip install jax)", ("Array",)),
        EngineSpec("cupy", "cupy", "pip install cupy-cuda12x  (needs a CUDA GPU)", ("ndarray",)),
    )
}

#: Home library for objects that only offer ``__dlpack__``: their result is a torch tensor.
DLPACK_HOME = "torch"
#: Home library for Python sequences and scalars (they go through ``numpy.asarray``).
SEQUENCE_HOME = "numpy"

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_library_of_type: dict[type, str | None] = {}


def engine_module_exists(name: str) -> bool:
    """Whether batchmv ships an engine module for ``name`` (``batchmv.backends.<name>``)."""
    return importlib.util.find_spec(f"batchmv.backends.{name}") is not None


def available_backends() -> tuple[str, ...]:
    """Engines that can run here: their library is installed and batchmv has an engine
    for it.  Nothing is imported to find out.

    >>> import batchmv
    >>> "numpy" in batchmv.available_backends()
    True
    """
    return tuple(
        name
        for name, spec in ENGINES.items()
        if importlib.util.find_spec(spec.package) is not None and engine_module_exists(name)
    )


def get_engine(name: str) -> Engine:
    """The engine called ``name`` (a valid, normalised name), imported on first use.

    Raises ImportError that says what to install when the library is missing.
    """
    engine = _engines.get(name)
    if engine is not None:
        return engine
    spec = ENGINES[name]
    if not engine_module_exists(name):
        raise ImportError(
            f"batchmv has no {name!r} engine in this version yet; installed engines: "
            f"{', '.join(available_backends())}"
        )
    if importlib.util.find_spec(spec.package) is None:
        raise ImportError(f"the {name!r} engine needs {spec.package}, which is not installed: {spec.install}")
    module = importlib.import_module(f"batchmv.backends.{name}")
    built = module.ENGINE_CLASS()
    with _lock:
        return _engines.setdefault(name, built)


def library_of(obj: Any) -> str | None:
    """Name of the registered library whose array ``obj`` is, or None."""
    return library_of_type(type(obj))


def library_of_type(kind: type) -> str | None:
    """Name of the registered library whose array type ``kind`` is, or None (cached).

    >>> import numpy as np
    >>> library_of_type(np.ndarray), library_of_type(list)
    ('numpy', None)
    """
    try:
        return _library_of_type[kind]
    except KeyError:
        pass
    found = None
    for spec in ENGINES.values():
        module = sys.modules.get(spec.package)
        if module is not None and any(
            issubclass(kind, getattr(module, attr)) for attr in spec.array_types if hasattr(module, attr)
        ):
            found = spec.name
            break
    _library_of_type.setdefault(kind, found)  # atomic; every thread computes the same answer
    return found


def load_imported_engines() -> None:
    """Load the engines of array libraries that are already imported (imports nothing new),
    so that their tracing hooks are in place before a first call under a compiler."""
    for name in available_backends():
        if ENGINES[name].package in sys.modules:
            get_engine(name)
