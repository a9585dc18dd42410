"""The task graphs of :mod:`batchmv.backends.dask`: which one a call gets, and the tasks in it.

Every product task is an ordinary :func:`batchmv.matvec` call on one block.  ``A`` is one key of
the graph that every block task depends on; a task that needs some of A's columns slices
them itself (a view), so A still travels once.

An x chunked along ``axis`` (K chunks there) has no block that holds whole vectors.  Two
graphs can multiply it, both keeping every block within
``limit = max(largest x chunk, dask.config "array.chunk-size")``:

* **per chunk** (no copy of x): each chunk times the matching columns of A, ``A[:, k0:k1]``,
  gives a partial product of the size of y's block; the K partial products of each block
  are summed in a tree, :data:`SPLIT_EVERY` at a time, never concatenated (as dask's own
  ``matmul`` does).
* **rechunk** (a copy of x): x gets one chunk along ``axis``; the batch axes are cut so
  that an x block and its y block both stay within ``limit``.

:func:`choose_per_chunk` picks per chunk when a partial product fits ``limit`` and the
partial products held at once are estimated to take less memory than the chunks and the
block a rechunk holds at once: that is, when m is small next to n.  When m is large the
partial products outgrow x, and the rechunk wins (its GEMMs also see all n columns at
once, and x is copied once instead of y being written K times).
"""

from __future__ import annotations

import math
from typing import Any

import dask
import dask.array as da
from dask.base import tokenize
from dask.utils import parse_bytes

from batchmv import _api

#: Partial products a sum task adds at once.  Two holds the fewest at once (one per level
#: of the tree) for one more addition task per chunk.
SPLIT_EVERY = 2


def matvec_block(x_block: Any, a: Any, *, axis: int, backend: str, copy: bool | None, op: str = "N") -> Any:
    """One block: the normal dispatch, on the engine captured when the graph was built."""
    return _matvec(a, x_block, axis, backend, copy, op)


def _matvec(a: Any, x: Any, axis: int, backend: str, copy: bool | None, op: str) -> Any:
    """``batchmv.matvec`` (repeated blocks remembered), or its checked path for op "C"
    (conj(A): an operator's op.T.H, which the public call does not name)."""
    if op == "C":
        return _api.compute(a, x, axis, None, backend, copy, op)
    return _api.matvec(a, x, axis=axis, backend=backend, copy=copy, op=op)


def op_columns(a: Any, start: int, stop: int, op: str) -> Any:
    """The columns ``start:stop`` of op(A) as a view of A: its rows for "T" and "H"."""
    return a[start:stop] if op in ("T", "H") else a[:, start:stop]


def matvec_columns(
    x_block: Any, columns: Any, a: Any, *, axis: int, backend: str, copy: bool | None, op: str = "N"
) -> Any:
    """One partial product: a chunk of x along ``axis`` (``columns``: its indices there)
    times the columns of op(A) it meets, with a leading axis of length 1 for the sum."""
    start = int(columns[0]) if len(columns) else 0
    a_columns = op_columns(a, start, start + x_block.shape[axis], op)  # a view: A is not copied
    return _matvec(a_columns, x_block, axis, backend, copy, op)[None]


def _keep(part: Any, axis: Any = None, keepdims: bool = True) -> Any:
    return part


def sum_partials(parts: Any, axis: Any = None, keepdims: bool = False) -> Any:
    """The sum of partial products (a list of them, nested lists flattened) along the
    leading axis, without concatenating them: one new array, added to in place."""
    flat = list(_flatten(parts))
    total = flat[0] if len(flat) == 1 else flat[0] + flat[1]
    for part in flat[2:]:
        total += part
    return total if keepdims else total[0]


def _flatten(parts: Any) -> Any:
    if isinstance(parts, (list, tuple)):
        for p in parts:
            yield from _flatten(p)
    else:
        yield parts


def block_limit(x: da.Array) -> int:
    """The largest block, in bytes, that a task may hold: x's largest chunk or dask's
    ``array.chunk-size``, whichever is larger."""
    chunk = math.prod(x.chunksize) * x.dtype.itemsize
    return max(chunk, parse_bytes(dask.config.get("array.chunk-size")))


def _rows(chunks: tuple[tuple[int, ...], ...], ax: int) -> int:
    """Vectors in the largest block of x (the product of its largest batch chunks)."""
    return math.prod(max(c, default=0) for i, c in enumerate(chunks) if i != ax)


def choose_per_chunk(x: da.Array, ax: int, m: int, y_itemsize: int, limit: int) -> bool:
    """Whether an x chunked along ``ax`` is multiplied per chunk (else rechunked): when a
    partial product fits ``limit`` and the partial products held at once are estimated to
    take no more memory than a rechunk holds.

    Summed in a tree, depth first, a block's partial products are held one group per level
    (``SPLIT_EVERY - 1`` waiting for a sibling), plus the one being made and the sum being
    formed.  A rechunk holds the K chunks that one block is assembled from, and the block.
    """
    rows = _rows(x.chunks, ax)
    partial = rows * m * y_itemsize
    depth = math.ceil(math.log(x.numblocks[ax], SPLIT_EVERY))
    held_per_chunk = ((SPLIT_EVERY - 1) * depth + 2) * partial
    held_by_rechunk = 2 * rows * x.shape[ax] * x.dtype.itemsize
    return partial <= limit and held_per_chunk <= held_by_rechunk


def rechunk_whole_vectors(x: da.Array, ax: int, m: int, y_itemsize: int, limit: int) -> da.Array:
    """x with one chunk along ``ax``, its batch chunks cut (never merged) so that a block of
    x and its block of y both stay within ``limit`` bytes."""
    row = max(x.shape[ax] * x.dtype.itemsize, m * y_itemsize, 1)  # bytes per vector, the larger side
    sizes = cut_batch(x.chunks, ax, max(1, limit // row))
    chunks = tuple(
        (x.shape[ax],) if i == ax else tuple(p for c in cs for p in _split(c, sizes[i]))
        for i, cs in enumerate(x.chunks)
    )
    return x.rechunk(chunks)


def cut_batch(chunks: tuple[tuple[int, ...], ...], ax: int, vectors: int) -> dict[int, int]:
    """The largest chunk per batch axis such that a block holds at most ``vectors`` vectors
    (at least one): the largest axes are cut first, each no more than needed.

    >>> cut_batch(((8192,), (4,) * 16), 1, 2048)
    {0: 2048}
    >>> cut_batch(((30,), (64,), (50,)), 1, 100)
    {0: 30, 2: 3}
    """
    sizes = {i: max(c, default=0) for i, c in enumerate(chunks) if i != ax}
    for i in sorted(sizes, key=lambda i: -sizes[i]):
        if math.prod(sizes.values()) <= vectors:
            break
        rest = math.prod(s for j, s in sizes.items() if j != i)
        sizes[i] = max(1, min(sizes[i], vectors // max(rest, 1)))
    return sizes


def _split(size: int, most: int) -> list[int]:
    """``size`` in as few near-equal pieces of at most ``most`` as possible."""
    if size <= most or most < 1:
        return [size]
    pieces = -(-size // most)
    q, r = divmod(size, pieces)
    return [q + 1] * r + [q] * (pieces - r)


def blockwise(
    x: da.Array, a_key: Any, ax: int, m: int, meta: Any, engine: str, copy: object, op: str = "N"
) -> da.Array:
    """y, one block task per block of x (x has one chunk along ``ax``)."""
    name = "batchmv-matvec-" + tokenize(x.name, a_key.key, ax, engine, copy, m, op)
    return da.blockwise(
        matvec_block, tuple(range(x.ndim)), x, tuple(range(x.ndim)), a_key, None,
        adjust_chunks={ax: m}, dtype=meta.dtype, meta=meta, name=name,
        axis=ax, backend=engine, copy=copy, op=op,
    )  # fmt: skip


def per_chunk(
    x: da.Array, a_key: Any, ax: int, m: int, meta: Any, engine: str, copy: object, op: str = "N"
) -> da.Array:
    """y as the tree sum of the partial products of x's chunks along ``ax``."""
    token = tokenize(x.name, a_key.key, ax, engine, copy, m, op)
    columns = da.arange(x.shape[ax], chunks=(x.chunks[ax],))  # each task's column indices
    x_ind = tuple(range(x.ndim))
    m_ind = x.ndim  # a new index: y's axis of length m
    partials = da.blockwise(
        matvec_columns, (ax, *(m_ind if i == ax else i for i in x_ind)),
        x, x_ind, columns, (ax,), a_key, None,
        new_axes={m_ind: m}, adjust_chunks={ax: 1}, dtype=meta.dtype, meta=meta[None],
        name="batchmv-partial-" + token, axis=ax, backend=engine, copy=copy, op=op,
    )  # fmt: skip
    return da.reduction(
        partials, _keep, sum_partials, axis=0, keepdims=False, dtype=meta.dtype,
        split_every=SPLIT_EVERY, concatenate=False, meta=meta, name="batchmv-sum-" + token,
    )  # fmt: skip
