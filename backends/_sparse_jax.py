"""jax.experimental.sparse matrices as A (BCOO, BCSR; no batch or dense dimensions): the
product is one ``bcoo_dot_general`` / ``bcsr_dot_general`` contracting A's column (its
row, for op "T"/"H") with x's vector axis, inside one jitted program; XLA chooses the
layouts, as for a dense A.  Under ``jax.grad`` the gradient w.r.t. A's data flows through
it (A is a pytree whose leaves are its data and indices).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse as jsparse

from .._sparse_kit import SparseInfo, SparseKit

_DOT = {"bcoo": jsparse.bcoo_dot_general, "bcsr": jsparse.bcsr_dot_general}


def _is_tracer(a: Any) -> bool:
    return isinstance(a, jax.core.Tracer)


class JaxSparse(SparseKit):
    name = "jax"
    engine = "jax"
    strided = False
    kernel = "jax.experimental.sparse bcoo_dot_general / bcsr_dot_general (one jitted program)"

    def info(self, a: Any) -> SparseInfo:
        fmt = type(a).__name__.lower()
        if a.ndim != 2 or a.n_batch or a.n_dense:
            raise ValueError(f"A must be a 2-D {type(a).__name__} without batch or dense dimensions; got shape {a.shape}")
        arrays = (a.data, a.indices, *((a.indptr,) if fmt == "bcsr" else ()))
        nbytes = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in arrays)
        device = jax.default_backend() if _is_tracer(a.data) else next(iter(a.data.sharding.device_set)).platform
        return SparseInfo(fmt, tuple(a.shape), int(a.nse), np.dtype(a.indices.dtype), np.dtype(a.dtype), nbytes, device)

    def notes(self, info: SparseInfo) -> tuple[str, ...]:
        return (f"jax: one {info.format}_dot_general in a jitted program; values cast to the result dtype inside it",)

    def result_dtype(self, a: Any, x: Any) -> np.dtype:
        return np.dtype(jnp.result_type(a.data, x))

    def check_dtype(self, dtype: np.dtype) -> None:
        if dtype.kind not in "fc":
            raise TypeError(f"batchmv multiplies jax sparse matrices in floating and complex dtypes; the result would be {dtype}")

    def is_complex(self, dtype: np.dtype) -> bool:
        return dtype.kind == "c"

    def expression(self, a: Any, x: Any, axis: int, op: str) -> Any:
        return _spmm(a, x, axis, op)

    def tracks_graph(self, a: Any) -> bool:
        return _is_tracer(a.data)

    def layout_key(self, a: Any) -> Optional[tuple]:
        if _is_tracer(a.data):
            return None
        # (the leaves' shapes say the batch and dense dimensions, and jit compiles per shape anyway)
        data, indices = a.data, a.indices
        return (a.shape, data.shape, data.dtype, indices.shape, indices.dtype, a.indices_sorted, a.unique_indices)

    def expression_runner(self, call: Any) -> Callable[[Any, Any], Any]:
        """The program of :func:`_spmm` jitted on A's leaves (values and indices), with A's
        shape, format flags, the axis and op fixed: it skips flattening A as a pytree at
        each call (benchmarks/README.md, "Sparse A")."""
        a = call.a
        program = _leaves_program(type(a), a.shape, a.indices_sorted, a.unique_indices, call.axis, call.op)
        if type(a) is jsparse.BCSR:
            return lambda a, x: program(x, a.data, a.indices, a.indptr)
        return lambda a, x: program(x, a.data, a.indices)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _spmm(a: Any, x: Any, axis: int, op: str) -> Any:
    """op(A) @ x along ``axis``: the transpose is the choice of A's contracted dimension, the
    conjugate goes on x and y, ``conj(A)^T x == conj(A^T conj(x))``."""
    dtype = jnp.result_type(a.data, x)
    conj = op in ("H", "C") and jnp.issubdtype(a.dtype, jnp.complexfloating)
    a = a if a.dtype == dtype else _cast(a, dtype)
    x = x if x.dtype == dtype else x.astype(dtype)
    dims = (((0 if op in ("T", "H") else 1,), (axis,)), ((), ()))
    y = _DOT[type(a).__name__.lower()](a, jnp.conj(x) if conj else x, dimension_numbers=dims)
    return jnp.moveaxis(jnp.conj(y) if conj else y, 0, axis)


def _cast(a: Any, dtype: Any) -> Any:
    """A with its values cast to ``dtype`` (BCSR has no ``astype``: rebuilt on cast values)."""
    if isinstance(a, jsparse.BCSR):
        leaves = (a.data.astype(dtype), a.indices, a.indptr)
        return jsparse.BCSR(leaves, shape=a.shape, indices_sorted=a.indices_sorted, unique_indices=a.unique_indices)
    return a.astype(dtype)


@functools.lru_cache(maxsize=64)
def _leaves_program(kind: type, shape: tuple[int, int], indices_sorted: bool, unique_indices: bool, axis: int, op: str) -> Any:
    """``f(x, *leaves)``: :func:`_spmm` on the matrix of type ``kind`` that ``leaves`` make, jitted."""

    def program(x: Any, *leaves: Any) -> Any:
        a = kind(leaves, shape=shape, indices_sorted=indices_sorted, unique_indices=unique_indices)
        return _spmm.__wrapped__(a, x, axis, op)

    return jax.jit(program)


KIT = JaxSparse
