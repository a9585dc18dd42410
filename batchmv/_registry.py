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

import functools
import importlib
import importlib.util
import sys
import threading
import types
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
        # jax.jit/vmap/grad tracers are not subclasses of jax.Array (jax >= 0.8.2)
        EngineSpec("jax", "jax", "pip install 'batchmv[jax]'  (or: pip install jax)", ("Array", "core.Tracer")),
        EngineSpec("cupy", "cupy", "pip install cupy-cuda12x  (needs a CUDA GPU)", ("ndarray",)),
    )
}

#: The module of the engine of every array-API library that :data:`ENGINES` does not name.
ARRAY_API = "array_api"
#: Home library for objects that only offer ``__dlpack__``: their result is a torch tensor.
DLPACK_HOME = "torch"
#: Home library for Python sequences and scalars (they go through ``numpy.asarray``).
SEQUENCE_HOME = "numpy"

_lock = threading.Lock()
#: The loaded engines, as attributes named like them.  Not a dict: torch.compile reads an
#: object's attributes when the traced code reads them, a dict once per trace (an engine
#: loaded later in that trace would be missing from it).
_engines = types.SimpleNamespace()
_library_of_type: dict[type, str | None] = {}
_library_of_pair: dict[tuple[type, type], str | None] = {}


def constant_when_traced(fn: Any) -> Any:
    """Mark ``fn``, whose answer is a name (or names) that depends on types, names and
    batchmv's settings only, never on values or shapes, as constant for torch.compile:
    dynamo then runs it as plain Python while tracing and puts its answer into the graph,
    instead of tracing into the caches it fills, the modules it imports and the context
    variable it reads (which dynamo cannot trace, or guards in ways that break, such as a
    type-keyed dict filled during the trace).  The marker is the attribute that
    ``torch.compiler.assume_constant_result`` sets; set here, on batchmv's own functions,
    it is in place before any trace, whichever of torch and batchmv was imported first.
    (Only for answers that are constants: an object returned from such a function cannot
    be guarded by dynamo.)"""
    fn._dynamo_marked_constant = True
    return fn


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
    engine = getattr(_engines, name, None)
    if engine is not None:
        return engine
    return getattr(_engines, _load_engine(name))


@constant_when_traced
def _load_engine(name: str) -> str:
    """Import and build engine ``name`` unless it is loaded; ``name``."""
    if hasattr(_engines, name):
        return name
    if name not in ENGINES:  # a library that only implements the array API standard
        built = importlib.import_module(f"batchmv.backends.{ARRAY_API}").ENGINE_CLASS(name)
        with _lock:
            if not hasattr(_engines, name):
                setattr(_engines, name, built)
        return name
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
    with _lock:  # publish one finished engine, even when threads race here
        if not hasattr(_engines, name):
            setattr(_engines, name, built)
    return name


def library_of(obj: Any) -> str | None:
    """Name of the registered library whose array ``obj`` is, or None."""
    return library_of_type(type(obj))


@constant_when_traced
def library_of_type(kind: type) -> str | None:
    """Name of the library whose array type ``kind`` is, or None (cached): a library of
    :data:`ENGINES`, or, for a type with ``__array_namespace__`` that no engine or adapter
    claims, its top-level module (computed by the array-API engine).

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
            issubclass(kind, cls) for cls in map(functools.partial(_attribute, module), spec.array_types) if cls
        ):
            found = spec.name
            break
    else:
        if hasattr(kind, "__array_namespace__") and adapter_of_type(kind) is None:
            found = kind.__module__.split(".")[0]  # its own engine, batchmv.backends.array_api
    _library_of_type.setdefault(kind, found)  # atomic; every thread computes the same answer
    return found


def engine_of_types(kind_a: type, kind_x: type) -> Engine | None:
    """The engine of the library whose arrays both types are (loaded on first use: that
    library is imported already); None for any other pair.

    >>> import numpy as np
    >>> engine_of_types(np.ndarray, np.ndarray).name, engine_of_types(np.ndarray, list)
    ('numpy', None)
    """
    lib = library_of_types(kind_a, kind_x)
    if lib is None:
        return None
    return getattr(_engines, lib, None) or get_engine(lib)


@constant_when_traced
def library_of_types(kind_a: type, kind_x: type) -> str | None:
    """Name of the library whose arrays both types are, or None (cached: one look-up for
    a repeated call)."""
    try:
        return _library_of_pair[kind_a, kind_x]
    except KeyError:
        pass
    lib = library_of_type(kind_x)
    found = lib if lib is not None and library_of_type(kind_a) == lib else None
    _library_of_pair.setdefault((kind_a, kind_x), found)
    return found


def _attribute(module: Any, path: str) -> Any:
    """``module.<path>`` for a dotted ``path``, or None where a part is missing."""
    for part in path.split("."):
        module = getattr(module, part, None)
    return module


# -- adapters: home libraries that are not engines -------------------------------------------


@dataclass(frozen=True)
class AdapterSpec:
    """A library whose arrays are lazy collections of blocks, each block an array of some
    engine's library (dask.array), like xarray's chunk managers.  It is a home library but
    not an engine: ``backend=`` never names it.  Its module, ``batchmv.backends.<name>``,
    defines ``ADAPTER_CLASS``, whose ``matvec`` and ``plan`` take the whole call (with the
    keywords of :func:`batchmv.matvec`) and call batchmv's public API on each block.
    """

    name: str  #: the library's name (also the module name in batchmv.backends)
    package: str  #: the top-level module, for the installation check
    module: str  #: the module that defines the array types; nothing is one before it is imported
    install: str  #: what to install when the library is missing
    array_types: tuple[str, ...]  #: attribute names, in ``module``, of the array types


ADAPTERS: dict[str, AdapterSpec] = {
    spec.name: spec
    for spec in (AdapterSpec("dask", "dask", "dask.array", "pip install 'batchmv[dask]'", ("Array",)),)
}

_adapters: dict[str, Any] = {}
_adapter_of_type: dict[type, str | None] = {}


@constant_when_traced
def adapter_of_type(kind: type) -> str | None:
    """Name of the registered adapter library whose array type ``kind`` is, or None
    (cached; imports nothing).

    >>> adapter_of_type(list)
    """
    found = _adapter_of_type.get(kind, False)
    if found is not False:
        return found
    found = None
    for spec in ADAPTERS.values():
        module = sys.modules.get(spec.module)
        if module is not None and any(
            isinstance(getattr(module, attr, None), type) and issubclass(kind, getattr(module, attr))
            for attr in spec.array_types
        ):
            found = spec.name
            break
    _adapter_of_type.setdefault(kind, found)
    return found


def adapter_for(*kinds: type) -> Any:
    """The adapter that takes a whole call whose arguments have these types (the first one
    that is a lazy collection decides), or None: the call goes to the engines."""
    for kind in kinds:
        name = adapter_of_type(kind)
        if name is not None:
            return get_adapter(name)
    return None


def get_adapter(name: str) -> Any:
    """The adapter of library ``name``, imported on first use."""
    adapter = _adapters.get(name)
    if adapter is not None:
        return adapter
    spec = ADAPTERS[name]
    if importlib.util.find_spec(spec.package) is None:  # pragma: no cover - its arrays exist
        raise ImportError(f"batchmv's {name!r} support needs {spec.package}: {spec.install}")
    built = importlib.import_module(f"batchmv.backends.{name}").ADAPTER_CLASS()
    with _lock:
        return _adapters.setdefault(name, built)


# -- sparse matrices: A in a library's sparse formats ------------------------------------------


@dataclass(frozen=True)
class SparseSpec:
    """A library's sparse matrices, which batchmv takes as A (x stays dense).  Its module,
    ``batchmv.backends.<kit>``, defines ``KIT``: what batchmv does with them (their format,
    views of op(A), the sparse-times-dense product, their index and value arrays)."""

    name: str  #: the library's name in reports ("scipy", "torch", "jax", "cupy")
    module: str  #: the module that defines the types; nothing is one before it is imported
    array_types: tuple[str, ...]  #: attribute paths, in ``module``, of the sparse types
    engine: str  #: the engine of the dense arrays the product takes and returns
    kit: str  #: the module in batchmv.backends with the library's sparse operations


SPARSE: dict[str, SparseSpec] = {
    spec.name: spec
    for spec in (
        SparseSpec("scipy", "scipy.sparse", ("sparray", "spmatrix"), "numpy", "_sparse_scipy"),
        # every tensor is a torch.Tensor: the kit tells sparse layouts from strided ones
        SparseSpec("torch", "torch", ("Tensor",), "torch", "_sparse_torch"),
        SparseSpec("jax", "jax.experimental.sparse", ("BCOO", "BCSR"), "jax", "_sparse_jax"),
        # CuPy 14's sparse arrays and matrices; CuPy 13 has spmatrix only (a missing name matches nothing)
        SparseSpec("cupy", "cupyx.scipy.sparse", ("sparray", "spmatrix"), "cupy", "_sparse_cupy"),
    )
}
