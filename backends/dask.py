"""Dask arrays: ``matvec(A, x)`` with ``x`` a dask array returns a lazy dask array.

Dask is a *home* library (the result is a dask array) but not an engine: every block of
``x`` goes through the normal dispatch, ``batchmv.matvec(A, block)``, so numpy-backed and
cupy-backed dask arrays both work, each block as one GEMM on views.  The registry lists
dask in ``ADAPTERS``; :func:`batchmv.matvec` and :func:`batchmv.plan` hand the whole call to
:class:`DaskAdapter`, which sits above the public API (like xarray's chunk managers) and
imports batchmv as any client would.

* The graph is blockwise over x's chunks.  An x chunked along ``axis`` is either multiplied
  chunk by chunk, its partial products summed (x is not copied), or rechunked to whole
  vectors (a copy, reported by ``plan``; ``copy=False`` raises
  :class:`batchmv.CopyRequiredError`); either way every block stays within x's largest
  chunk or dask's ``array.chunk-size``, whichever is larger (:mod:`._dask_graph` says which
  graph a call gets and why).  With a sparse A, x chunked along ``axis`` is always
  rechunked: the columns of a sparse matrix are no view of it.
* ``A`` enters the graph once, as one key on which every block task depends (a numpy or
  torch array, or a sparse matrix of scipy.sparse, torch or jax, as a literal, a dask array
  as its single chunk), so the pickled graph does
  not grow with the number of blocks and a distributed scheduler sends A to each worker
  once.  A dask ``A`` in several chunks is first concatenated into one (a reported copy).
* The engine is captured when the graph is built: the ``backend`` argument, else the
  innermost ``use_backend`` block, else ``BATCHMV_BACKEND``, else ``"auto"`` -- whatever is
  in force at the ``matvec`` call -- is written into every block task.  Blocks run later,
  on other threads or processes, where neither the context nor the caller's environment
  exist, so nothing is read there.
* Errors (shapes, dtypes, devices, engines, ``copy=False``, masked chunks) are raised when
  the graph is built: each distinct block shape is planned against a block of zeros of x's
  block type (numpy's from calloc: nothing is computed and no page is touched).

>>> import numpy as np, dask.array as da, batchmv
>>> x = da.ones((6, 4), chunks=(3, 2))          # two chunks along the vector axis
>>> y = batchmv.matvec(np.eye(4)[:2], x)
>>> y.chunks, y.compute(scheduler="synchronous")[0]
(((3, 3), (2,)), array([1., 1.]))
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed, delayed

from batchmv import _api, _registry, _select, _sparse_kits
from batchmv._checks import SEQUENCES, check_copy, check_shapes, op_shape, refuse_copies, require_copy
from batchmv._plan import Plan
from batchmv.backends import _dask_graph as graphs


@dataclass(frozen=True)
class _Graph:
    """A checked call on dask arrays: the lazy result and its report."""

    array: Any
    report: Plan


@dataclass(frozen=True)
class _BlockReport:
    """The report of one distinct block shape, and how many blocks have it."""

    shape: tuple[int, ...]
    count: int
    report: Plan


def _block_shapes(chunks: tuple[tuple[int, ...], ...]) -> Counter:
    """How many blocks of each shape the chunk grid has (few distinct shapes, however many blocks)."""
    per_axis = [Counter(c) for c in chunks]
    shapes: Counter = Counter()
    for combo in itertools.product(*(list(c.items()) for c in per_axis)):
        shapes[tuple(size for size, _ in combo)] = math.prod(count for _, count in combo)
    return shapes


def _template(meta: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    """Zeros in ``meta``'s library (numpy, cupy, ...) for planning.  numpy's come from calloc:
    pages nobody reads are never touched, so a large one costs address space only."""
    if type(meta) is np.ndarray:
        return np.zeros(shape, dtype)
    return np.zeros_like(meta, shape=shape, dtype=dtype)


def _check_dask(arr: da.Array, label: str) -> None:
    """Refuse what no block task could multiply correctly: unknown chunk sizes, masked chunks."""
    if any(math.isnan(s) for s in arr.shape):
        raise ValueError(f"{label} has unknown chunk sizes (shape {arr.shape}); call {label}.compute_chunk_sizes() first")
    if isinstance(arr._meta, np.ma.MaskedArray):
        raise TypeError(
            f"{label} is a dask array of masked arrays: batchmv multiplies the data and would ignore the "
            f"mask. Fill the masked values first, e.g. dask.array.ma.filled({label}, 0)"
        )


def _from_sequence(obj: Any, label: str, allow_copy: bool, copies: list[str]) -> np.ndarray:
    """A Python sequence as a numpy array (a copy, reported as the engines report it)."""
    reason = f"{label}: Python {type(obj).__name__} converted to an array with numpy.asarray"
    require_copy(f"{reason}; copy=False forbids it", allow_copy)
    copies.append(reason)
    return np.asarray(obj)


class DaskAdapter:
    name = "dask"

    def matvec(
        self, a: Any, x: Any, *, axis: Any = -1, out: Any = None, backend: str | None = None, copy: object = None,
        op: str = "N",
    ) -> Any:  # fmt: skip
        """The lazy result of ``batchmv.matvec(a, x, ...)`` (a dask array)."""
        return self._graph(a, x, axis, out, backend, copy, op).array

    def plan(
        self, a: Any, x: Any, *, axis: Any = -1, out: Any = None, backend: str | None = None, copy: object = None,
        op: str = "N",
    ) -> Plan:  # fmt: skip
        """The report of ``batchmv.plan(a, x, ...)``: the whole graph, views of its first block."""
        return self._graph(a, x, axis, out, backend, copy, op).report

    def _graph(self, a: Any, x: Any, axis: Any, out: Any, backend: str | None, copy: object, op: str) -> _Graph:
        allow_copy = check_copy(copy)
        engine_name = _select.requested(backend)  # read now; the engine it gives goes into the graph
        if engine_name in _registry.ENGINES:
            _registry.get_engine(engine_name)  # ImportError now rather than in a worker
        if out is not None:
            raise TypeError(
                "out= cannot be used with dask arrays (they are immutable); "
                "use dask.array.store to write the lazy result into an array"
            )
        copies: list[str] = []
        x = self._x_as_dask(x, allow_copy, copies)
        a_key, a_template = self._a_into_graph(a, allow_copy, copies)
        ax, _ = check_shapes(op_shape(a_template.shape, op), x.shape, axis)
        m, n = op_shape(a_template.shape, op)  # op(A): its columns meet x's chunks along the axis
        notes: list[str] = []
        per_chunk = False
        zero = tuple(0 if i != ax else n for i in range(x.ndim)) if x.ndim > 1 else (n,)
        if x.numblocks[ax] > 1:
            # y's dtype as the blocks' library promotes it (the home engine's, whichever computes);
            # a sparse A's, as the asked engine's kit computes it (A may cross to no other engine)
            sparse = _sparse_kits.kit_of(a_template) is not None
            y_dtype = _api.report(
                a_template, _template(x._meta, zero, x.dtype), ax, None, engine_name if sparse else "auto", None, op
            ).dtype
            y_itemsize = np.dtype(str(y_dtype).removeprefix("torch.")).itemsize  # (the plan names it in its engine's terms)
            if sparse:
                per_chunk = self._sparse_whole_vectors(x, ax, copies, notes)
            else:
                per_chunk = self._whole_vectors(x, ax, m, y_itemsize, copies, notes)
            refuse_copies(copies, allow_copy)
            if not per_chunk:
                x = graphs.rechunk_whole_vectors(x, ax, m, y_itemsize, graphs.block_limit(x))

        # Plan every distinct block shape on uninitialised blocks: errors surface now, not in a worker.
        block_reports = []
        for shape, count in _block_shapes(x.chunks).items():
            block = _template(x._meta, shape, x.dtype)
            a_block = graphs.op_columns(a_template, 0, shape[ax], op) if per_chunk else a_template
            report = _api.report(a_block, block, ax, None, engine_name, copy, op)
            block_reports.append(_BlockReport(shape, count, report))
        # The engine every block runs on, decided here ("auto": the blocks' library; "fastest":
        # measured once, here, not per block in each worker).
        engine = self._first_report(block_reports, x).backend
        meta = _api.compute(a_template, _template(x._meta, zero, x.dtype), ax, None, engine, copy, op)

        build = graphs.per_chunk if per_chunk else graphs.blockwise
        y = build(x, a_key, ax, m, meta, engine, copy, op)
        return _Graph(y, self._report(block_reports, copies, notes, x, engine_name, engine, a_key.key))

    @staticmethod
    def _whole_vectors(x: da.Array, ax: int, m: int, y_itemsize: int, copies: list[str], notes: list[str]) -> bool:
        """How an x chunked along ``ax`` is multiplied (True: per chunk), with what it costs
        in ``copies`` and ``notes``."""
        limit = graphs.block_limit(x)
        chunks = x.numblocks[ax]
        if graphs.choose_per_chunk(x, ax, m, y_itemsize, limit):
            y_bytes = math.prod(x.shape[:ax] + (m,) + x.shape[ax + 1 :]) * y_itemsize
            notes.append(
                f"x has {chunks} chunks along axis {ax}: each chunk is multiplied by its columns of A (a view "
                f"A[:, k0:k1], sliced in the task from the one key of A) and the {chunks} partial products of "
                f"each block are summed, {graphs.SPLIT_EVERY} at a time; x is not copied. The partial products "
                f"are temporaries of y's size per chunk: {chunks} x {y_bytes:,} bytes"
            )
            return True
        copies.append(
            f"x: rechunked from {chunks} chunks along axis {ax} to one (every vector must lie in one block), "
            f"blocks within {limit:,} bytes (x's largest chunk or array.chunk-size, whichever is larger): "
            "each block is assembled from its pieces, a copy of x"
        )
        notes.append(
            "x rechunked rather than multiplied per chunk: the partial products (y's size per chunk) would "
            "exceed the block limit, or take more memory while they are summed than a rechunk holds at once "
            "(m is large next to n)"
        )
        return False

    @staticmethod
    def _sparse_whole_vectors(x: da.Array, ax: int, copies: list[str], notes: list[str]) -> bool:
        """A sparse A and an x chunked along ``ax``: x is rechunked (False).  Multiplying per
        chunk would slice A's columns in every task, and a sparse matrix has no column views:
        each task would copy its part of A."""
        copies.append(
            f"x: rechunked from {x.numblocks[ax]} chunks along axis {ax} to one (every vector must lie in one "
            "block), blocks within x's largest chunk or array.chunk-size: each block is assembled from its "
            "pieces, a copy of x"
        )
        notes.append(
            "x rechunked rather than multiplied per chunk: A is sparse, and the columns of a sparse matrix "
            "that a chunk meets are no view of it (each task would copy its part of A)"
        )
        return False

    @staticmethod
    def _first_report(block_reports: list[_BlockReport], x: da.Array) -> Plan:
        """The report of the first block."""
        first_shape = tuple(c[0] for c in x.chunks)
        return next((b.report for b in block_reports if b.shape == first_shape), block_reports[0].report)

    # -- inputs ---------------------------------------------------------------------------
    @staticmethod
    def _x_as_dask(x: Any, allow_copy: bool, copies: list[str]) -> da.Array:
        if isinstance(x, da.Array):
            _check_dask(x, "x")
            return x
        if isinstance(x, SEQUENCES):  # x a Python sequence, A a dask array: dask is the home
            return da.from_array(_from_sequence(x, "x", allow_copy, copies), chunks=-1)
        raise TypeError(
            f"A is a dask array but x is a {type(x).__module__}.{type(x).__qualname__}: the result would "
            "belong to x's library. Pass x as a dask array (dask.array.from_array(x)) for a lazy result, "
            "or A.compute() for an eager one"
        )

    @staticmethod
    def _a_into_graph(a: Any, allow_copy: bool, copies: list[str]) -> tuple[Delayed, Any]:
        """(the one graph key that holds A, an array with A's type, shape and dtype for planning)."""
        if isinstance(a, da.Array):
            _check_dask(a, "A")
            if a.npartitions > 1:
                copies.append(f"A: its {a.npartitions} dask chunks concatenated into one (every block needs all of A)")
                refuse_copies(copies, allow_copy)
                a = a.rechunk(-1)
            (key,) = a.to_delayed().ravel()
            return key, _template(a._meta, a.shape, a.dtype)
        if isinstance(a, SEQUENCES):
            a = _from_sequence(a, "A", allow_copy, copies)
        if not hasattr(a, "shape"):
            raise TypeError(
                f"A must be an array (numpy, torch, jax or cupy) or a Python sequence; got "
                f"{type(a).__module__}.{type(a).__qualname__}"
            )
        try:
            token = tokenize(a)
        except Exception:  # an object dask cannot hash: a unique key still enters the graph once
            token = uuid.uuid4().hex
        return delayed(a, name=f"batchmv-A-{token}", pure=True), a

    # -- report ---------------------------------------------------------------------------
    @staticmethod
    def _report(
        block_reports: list[_BlockReport], copies: list[str], notes: list[str], x: da.Array,
        requested: str, engine: str, a_key: Any,
    ) -> Plan:  # fmt: skip
        first = DaskAdapter._first_report(block_reports, x)
        blocks = sum(b.count for b in block_reports)
        block_copies = list(dict.fromkeys(c for b in block_reports for c in b.report.copies))
        kernels = sorted({b.report.kernel for b in block_reports})
        all_notes = [
            f"dask: {blocks} block{'s' if blocks != 1 else ''} (grid {x.numblocks}, blocks of up to {x.chunksize}); "
            "each block is one batchmv.matvec call, run where dask schedules it; views above: the first block",
            *notes,
            f"engine captured when the graph was built: {engine!r} (from {requested!r}: the backend argument, "
            "use_backend or BATCHMV_BACKEND in force at the call), written into every block task",
            f"A enters the graph once, as the key {a_key!r}; every block task depends on it",
            *dict.fromkeys(nt for b in block_reports for nt in b.report.notes),
        ]
        return Plan(
            backend=first.backend,
            kernel=" / ".join(kernels),
            copies=(*copies, *(f"each block: {c}" for c in block_copies)),
            flops=sum(b.count * b.report.flops for b in block_reports),
            bytes=sum(b.count * b.report.bytes for b in block_reports),
            home="dask",
            dtype=first.dtype,
            gemm_calls=sum(b.count * b.report.gemm_calls for b in block_reports),
            views=first.views,
            notes=tuple(all_notes),
            blocks=blocks,
            op=first.op,
            temporaries=tuple(dict.fromkeys(f"each block: {t}" for b in block_reports for t in b.report.temporaries)),
            gemm=first.gemm,
            format=first.format,
            nnz=first.nnz,
            index_dtype=first.index_dtype,
        )


ADAPTER_CLASS = DaskAdapter
