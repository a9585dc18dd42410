"""The sparse kits (:data:`batchmv._registry.SPARSE`): which library's sparse matrix an
object is, and the kit of that library, loaded on first use.  Like the registry's
detection of arrays, it looks at types through ``sys.modules`` and imports nothing that is
not imported already; its answers about types are constants under torch.compile, and a
kit is loaded outside any trace.
"""

from __future__ import annotations

import functools
import importlib
import sys
import threading
import types
from typing import Any

from . import _registry

#: The loaded kits, as attributes named like their libraries (a namespace, as ``_engines`` is).
_kits = types.SimpleNamespace()
_lock = threading.Lock()
_sparse_of_type: dict[type, str | None] = {}


@_registry.constant_when_traced
def library_of_type(kind: type) -> str | None:
    """Name of the library (a key of :data:`batchmv._registry.SPARSE`) one of whose sparse
    types ``kind`` is, or None (cached; imports nothing).  For torch every tensor type
    qualifies: its kit tells a sparse layout from a strided one."""
    name = _sparse_of_type.get(kind, False)
    if name is not False:
        return name
    name = None
    for spec in _registry.SPARSE.values():
        module = sys.modules.get(spec.module)
        if module is not None and any(
            isinstance(cls, type) and issubclass(kind, cls)
            for cls in map(functools.partial(_registry._attribute, module), spec.array_types)
        ):
            name = spec.name
            break
    _sparse_of_type.setdefault(kind, name)
    return name


_sparse_of_pair: dict[tuple[type, type], str | None] = {}


@_registry.constant_when_traced
def library_of_pair(kind_a: type, kind_x: type) -> str | None:
    """Name of the library one of whose sparse types ``kind_a`` is, when ``kind_x`` is the
    array type of that library's kit's engine (a sparse A with x in its own library); else
    None.  Cached, as :func:`library_of_type`."""
    try:
        return _sparse_of_pair[kind_a, kind_x]
    except KeyError:
        pass
    name = library_of_type(kind_a)
    if name is not None and _registry.library_of_type(kind_x) != _registry.SPARSE[name].engine:
        name = None
    _sparse_of_pair.setdefault((kind_a, kind_x), name)
    return name


def kit_of(obj: Any) -> Any:
    """The kit of the library whose sparse matrix ``obj`` is, or None for anything else
    (dense arrays included); imports nothing that is not imported already."""
    name = library_of_type(type(obj))
    if name is None:
        return None
    kit = get(name)
    return kit if kit.is_sparse(obj) else None


def get(name: str) -> Any:
    """The sparse kit of library ``name`` (a key of :data:`batchmv._registry.SPARSE`),
    imported on first use."""
    kit = getattr(_kits, name, None)
    if kit is not None:
        return kit
    return getattr(_kits, _load_kit(name))


@_registry.constant_when_traced
def _load_kit(name: str) -> str:
    """Import and build the kit of ``name`` unless it is loaded (outside any trace); ``name``."""
    if not hasattr(_kits, name):
        built = importlib.import_module(f"batchmv.backends.{_registry.SPARSE[name].kit}").KIT()
        with _lock:  # publish one finished kit, even when threads race here
            if not hasattr(_kits, name):
                setattr(_kits, name, built)
    return name
