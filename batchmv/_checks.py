"""Argument rules, each written once: ``copy``, ``axis``, the shapes of A and x, the
``copy=False`` refusal, and where an array of any library lives (DLPack).

Pure functions of shapes, values and DLPack metadata; they import no array library, so the
engines, the call builder, the Dask adapter and ``batchmv apply`` all use them.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any

from ._errors import CopyRequiredError

#: Python objects that go through ``numpy.asarray`` (sequences and scalars).
SEQUENCES = (list, tuple, int, float, complex, bool)


def check_copy(copy: object) -> bool:
    """Whether copies are allowed: True for ``copy=None``, False for ``copy=False``.

    Raises ValueError for anything else (``copy=True`` included, and values merely equal to
    False, such as 0).

    >>> check_copy(None), check_copy(False)
    (True, False)
    """
    if copy is None:
        return True
    if copy is False:
        return False
    raise ValueError(
        f"copy must be None (copy only what cannot be avoided, each copy reported by plan) or "
        f"False (never copy, raise CopyRequiredError instead); got {copy!r}. copy=True is not "
        "accepted: batchmv never copies for the sake of it"
    )


def require_copy(reason: str, allow_copy: bool) -> None:
    """Raise :class:`CopyRequiredError` with ``reason`` unless copies are allowed (an
    engine's import that must copy)."""
    if not allow_copy:
        raise CopyRequiredError(reason)


def refuse_copies(copies: Iterable[str], allow_copy: bool) -> None:
    """Raise :class:`CopyRequiredError` listing ``copies`` when there are any and copies are
    not allowed."""
    copies = list(copies)
    if copies and not allow_copy:
        raise CopyRequiredError("copy=False, but this call needs copies: " + "; ".join(copies))


#: The operations on A a call can apply: ``y = op(A) @ x``.  "N": A; "T": its transpose;
#: "H": its conjugate transpose (the adjoint); "C": its elementwise conjugate (what
#: ``MatVec.T.H`` is; not accepted by the public functions).
OPS = ("N", "T", "H", "C")
#: op(A) for the transpose and for the adjoint of op(A).
TRANSPOSE_OF = {"N": "T", "T": "N", "H": "C", "C": "H"}
ADJOINT_OF = {"N": "H", "H": "N", "T": "C", "C": "T"}


def check_op(op: object, public: bool = True) -> str:
    """``op`` as one of "N", "T", "H" ("C" too when not ``public``).

    Raises TypeError when ``op`` is not a string, ValueError for any other string.

    >>> check_op("H")
    'H'
    """
    allowed = OPS if not public else OPS[:3]
    if not isinstance(op, str):
        raise TypeError(f"op must be a string, one of {', '.join(map(repr, allowed))}; got {type(op).__name__}")
    if op not in allowed:
        raise ValueError(
            f"op must be 'N' (y = A x), 'T' (y = A^T x) or 'H' (y = A^H x, the conjugate transpose); got {op!r}"
        )
    return op


def op_shape(a_shape: tuple[int, ...], op: str) -> tuple[int, ...]:
    """The shape of op(A) for A of ``a_shape`` (transposed for "T" and "H").

    >>> op_shape((3, 5), "H")
    (5, 3)
    """
    return tuple(reversed(a_shape)) if op in ("T", "H") and len(a_shape) == 2 else tuple(a_shape)


def normalize_axis(axis: Any, shape: tuple[int, ...]) -> int:
    """``axis`` of an array of ``shape`` as a non-negative index.

    Raises TypeError when ``axis`` is not an integer (bool included), ValueError when it is
    out of range.

    >>> normalize_axis(-1, (4, 3)), normalize_axis(0, (4, 3))
    (1, 0)
    """
    if isinstance(axis, bool):
        raise TypeError(f"axis must be an integer, got {axis!r}")
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"axis must be an integer, got {type(axis).__name__}") from None
    ndim = len(shape)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for x with shape {tuple(shape)} ({ndim}-D)")
    return axis % ndim


def check_shapes(a_shape: tuple[int, ...], x_shape: tuple[int, ...], axis: Any) -> tuple[int, tuple[int, ...]]:
    """(normalised axis, result shape) for A of ``a_shape`` applied to x of ``x_shape``.

    Raises ValueError when A is not 2-D, x is 0-d or ``x.shape[axis] != A.shape[1]``, and
    what :func:`normalize_axis` raises.

    >>> check_shapes((5, 3), (7, 3), -1)
    (1, (7, 5))
    """
    a_shape, x_shape = tuple(a_shape), tuple(x_shape)
    if len(a_shape) != 2:
        raise ValueError(f"A must be 2-D, shape (m, n); got A with shape {a_shape}")
    if len(x_shape) == 0:
        raise ValueError(f"x must be at least 1-D; got x with shape {x_shape} (a scalar)")
    ax = normalize_axis(axis, x_shape)
    m, n = a_shape
    if x_shape[ax] != n:
        raise ValueError(
            f"x.shape[axis] must equal n = A.shape[1]: A has shape {a_shape}, x has shape {x_shape}, axis={axis}"
        )
    return ax, x_shape[:ax] + (m,) + x_shape[ax + 1 :]


_DLPACK_CPU = (1, 3)  # kDLCPU, kDLCUDAHost (pinned host memory)
_DLPACK_CUDA = (2, 13)  # kDLCUDA, kDLCUDAManaged


def dlpack_device(obj: Any) -> str | None:
    """Where an array of any library lives, from ``__dlpack_device__`` ("cpu", "cuda:0",
    ...); None for objects that do not say (sequences, scalars, tracers)."""
    if isinstance(obj, SEQUENCES) or not hasattr(type(obj), "__dlpack_device__"):
        return None
    try:
        kind, index = obj.__dlpack_device__()
        kind, index = int(kind), int(index)
    except Exception:  # noqa: BLE001 - a tracer or a broken producer: the import will say
        return None
    if kind in _DLPACK_CPU:
        return "cpu"
    return f"cuda:{index}" if kind in _DLPACK_CUDA else f"DLPack device {kind}:{index}"
