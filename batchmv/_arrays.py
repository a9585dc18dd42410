"""The arrays of a call: each operand as an array of the home library (shared across
libraries without a copy where possible, else copied and reported), shared with the
computing engine, and the checks on ``out``.  Knows no library by name: everything
library-specific is a call on an engine from the registry.
"""

from __future__ import annotations

from typing import Any, Optional

from . import _registry
from ._checks import SEQUENCES
from ._errors import CopyRequiredError


def to_home(obj: Any, label: str, home: Any, allow_copy: bool, copies: list[str]) -> Any:
    """``obj`` as an array of the home library, shared without a copy where possible."""
    lib = _registry.library_of(obj)
    if lib == home.name:
        try:
            return home.asarray(obj)  # numpy scalars become 0-d arrays; arrays pass through
        except TypeError as err:  # an array whose data alone is not its meaning (a masked array)
            raise TypeError(f"{label}: {err}") from None
    if lib is not None:
        source = _registry.get_engine(lib)
        refusal = source.export_refusal(obj)
        if refusal:
            raise TypeError(f"{label} ({lib}) cannot be shared with {home.name}: {refusal}")
        arr, reason = adopt(home, obj, label, allow_copy, source)
    elif hasattr(obj, "__dlpack__"):
        arr, reason = adopt(home, obj, label, allow_copy)
    elif isinstance(obj, SEQUENCES):
        reason = f"{label}: Python {type(obj).__name__} converted to an array with numpy.asarray"
        if not allow_copy:
            raise CopyRequiredError(f"{reason}; copy=False forbids it")
        arr = _registry.get_engine(_registry.SEQUENCE_HOME).asarray(obj)
        if home.name != _registry.SEQUENCE_HOME:
            arr, _ = home.adopt(arr, allow_copy=True, writable=False)
    else:
        raise TypeError(
            f"{label} must be an array (numpy, torch, jax or cupy, or any object with __dlpack__) "
            f"or a Python sequence; got {type(obj).__module__}.{type(obj).__qualname__}"
        )
    if reason:
        copies.append(reason)
    return arr


def adopt(engine: Any, obj: Any, label: str, allow_copy: bool, source: Any = None) -> tuple[Any, Optional[str]]:
    """``engine.adopt(obj)`` with its failures in the documented forms: CopyRequiredError
    naming ``label``; TypeError naming the dtype and the engine for anything a library
    raises when it cannot carry an array across (a dtype DLPack or the engine lacks)."""
    try:
        obj, resolved = source.exportable(obj, allow_copy) if source is not None else (obj, None)
        arr, reason = engine.adopt(obj, allow_copy=allow_copy, writable=False, source=source)
        reason = "; ".join(r for r in (resolved, reason) if r) or None
    except CopyRequiredError as err:
        raise CopyRequiredError(f"{label}: {err}; copy=False forbids the copy") from None
    except (TypeError, ValueError):
        raise
    except Exception as err:  # noqa: BLE001 - RuntimeError, BufferError, a library's own errors
        lib = _registry.library_of(obj) or type(obj).__name__
        raise TypeError(
            f"the {engine.name} engine cannot take {label} ({lib}, dtype {getattr(obj, 'dtype', '?')}): "
            f"{type(err).__name__}: {err}"
        ) from err
    return arr, (f"{label}: {reason}" if reason else None)


def share(engine: Any, arr: Any, home: Any, label: str, allow_copy: bool, copies: list[str]) -> Any:
    """``arr`` (an array of ``home``) as an array of ``engine``, without a copy where possible."""
    refusal = home.export_refusal(arr)
    if refusal:
        raise TypeError(f"the {engine.name} engine cannot compute {label} ({home.name}): {refusal}")
    shared, reason = adopt(engine, arr, label, allow_copy, home)
    copies.extend([reason] if reason else [])
    return shared


def check_out(home: Any, out: Any, y_shape: tuple[int, ...], dtype: Any, device: str) -> None:
    if not home.is_native(out):
        raise TypeError(
            f"out must be a {home.name} array (the result's library); got {type(out).__module__}.{type(out).__qualname__}"
        )
    if home.shape(out) != y_shape:
        raise ValueError(f"out has shape {home.shape(out)}; the result has shape {y_shape}")
    if home.dtype_of(out) != dtype:
        raise TypeError(f"out has dtype {home.dtype_name(out)}; the result has dtype {dtype} (batchmv never casts silently)")
    if home.device(out) != device:
        raise TypeError(f"out is on {home.device(out)} and the inputs on {device}")
    if not home.is_writable(out):
        raise ValueError("out is read-only")
    home.check_out(out)
    if 0 not in y_shape and any(st == 0 and size > 1 for st, size in zip(home.strides(out), y_shape)):
        raise ValueError(f"out has stride 0 along an axis (strides {home.strides(out)}): several results would share one element")
