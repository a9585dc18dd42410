"""Dask arrays chunked along the vector axis (issue 10): multiplied per chunk with the
partial products summed, or rechunked to whole vectors; either way every block a task
computes stays within x's largest chunk or dask's ``array.chunk-size``, whichever is
larger, and A enters the graph once.  Also: masked chunks are refused."""

from __future__ import annotations

import doctest
import pickle
import tracemalloc

import numpy as np
import pytest

import batchmv

da = pytest.importorskip("dask.array")
import dask  # noqa: E402
from dask.callbacks import Callback  # noqa: E402

from batchmv.backends import _dask_graph  # noqa: E402


def _reference(A, xn, axis):
    """float64 numpy: every vector along ``axis`` times A."""
    xf = np.moveaxis(np.asarray(xn, np.float64), axis, -1)
    return np.moveaxis(xf @ np.asarray(A, np.float64).T, -1, axis)


def _way(plan):
    if any(c.startswith("x: rechunked") for c in plan.copies):
        return "rechunk"
    return "per chunk" if any("partial products" in nt for nt in plan.notes) else "blockwise"


def _task_results(y):
    """The sizes in bytes of every task's result when ``y`` is computed (synchronously),
    but for the final concatenation of all blocks into one array that ``compute`` adds."""
    sizes = []

    class Record(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            name = key[0] if isinstance(key, tuple) else key
            if not str(name).startswith("finalize"):
                sizes.append(getattr(result, "nbytes", 0))

    with Record():
        out = y.compute(scheduler="synchronous")
    return out, sizes


# -- results ----------------------------------------------------------------------------------

# (x shape, x chunks, axis): 1, 2 and 3 batch axes, every axis position, irregular chunks
LAYOUTS = [
    ((40,), ((7, 20, 13),), 0),  # one vector, no batch axis
    ((50, 40), ((10, 25, 15), (8, 16, 16)), 1),
    ((40, 50), ((13, 13, 14), (20, 30)), 0),
    ((6, 40, 7), ((2, 4), (5, 35), (3, 4)), 1),
    ((40, 6, 7), ((1, 39), (6,), (2, 5)), 0),
    ((6, 7, 40), ((6,), (3, 4), (16, 16, 8)), 2),
    ((3, 4, 5, 40), ((1, 2), (4,), (2, 3), (10, 10, 10, 10)), 3),
    ((3, 40, 4, 5), ((3,), (15, 25), (1, 3), (5,)), 1),
    ((40, 3, 4, 5), ((20, 20), (1, 1, 1), (4,), (5,)), 0),
    ((3, 4, 40, 5), ((2, 1), (2, 2), (9, 31), (5,)), 2),
]


@pytest.mark.parametrize("m, way", [(3, "per chunk"), (200, "rechunk")])
@pytest.mark.parametrize("shape, chunks, axis", LAYOUTS)
def test_chunked_along_axis_equals_numpy(rng, shape, chunks, axis, m, way):
    A = rng.standard_normal((m, 40))
    xn = rng.standard_normal(shape)
    x = da.from_array(xn, chunks=chunks)
    p = batchmv.plan(A, x, axis=axis)
    assert _way(p) == way, p
    y = batchmv.matvec(A, x, axis=axis)
    ref = _reference(A, xn, axis)
    assert y.shape == ref.shape and y.dtype == np.float64
    batch_chunks = [c for i, c in enumerate(y.chunks) if i != axis]
    assert y.chunks[axis] == (m,)
    if way == "per chunk":  # x is not rechunked: y keeps x's batch chunks
        assert batch_chunks == [c for i, c in enumerate(x.chunks) if i != axis]
    np.testing.assert_allclose(y.compute(scheduler="threads"), ref, rtol=1e-12, atol=1e-12)


def test_float32_and_int_inputs_promote_as_numpy(rng):
    A = rng.standard_normal((3, 40)).astype(np.float32)
    xn = rng.integers(-5, 5, (30, 40)).astype(np.int32)
    x = da.from_array(xn, chunks=(10, 8))
    y = batchmv.matvec(A, x)
    assert y.dtype == batchmv.matvec(A, xn).dtype == np.float64
    np.testing.assert_allclose(y.compute(), _reference(A, xn, -1), rtol=1e-6)


def test_empty_batch_chunked_along_axis(rng):
    A = rng.standard_normal((3, 40))
    y = batchmv.matvec(A, da.zeros((0, 40), chunks=(0, 10)))
    assert y.shape == (0, 3) and y.compute().shape == (0, 3)


def test_single_chunk_along_axis_is_unchanged(rng):
    A = rng.standard_normal((3, 40))
    xn = rng.standard_normal((50, 40))
    x = da.from_array(xn, chunks=(10, 40))
    y = batchmv.matvec(A, x)
    p = batchmv.plan(A, x, copy=False)
    assert _way(p) == "blockwise" and p.copies == () and p.blocks == 5
    layers = set(y.__dask_graph__().layers)
    assert not any(name.startswith(("rechunk", "batchmv-partial", "batchmv-sum")) for name in layers), layers
    assert y.numblocks == x.numblocks
    np.testing.assert_allclose(y.compute(), _reference(A, xn, -1), rtol=1e-12)


# -- the plan and copy=False ------------------------------------------------------------------


def test_per_chunk_plan_copies_nothing_and_reports_the_partial_products(rng):
    A = rng.standard_normal((4, 64))
    xn = rng.standard_normal((100, 64))
    x = da.from_array(xn, chunks=(50, 16))  # 4 chunks along the vector axis
    p = batchmv.plan(A, x, copy=False)
    assert p.copies == () and p.blocks == 8 and p.gemm_calls == 8
    assert p.flops == 2 * 4 * 64 * 100
    text = str(p)
    assert "4 chunks along axis 1" in text and "x is not copied" in text
    assert f"4 x {100 * 4 * 8:,} bytes" in text  # the partial products: y's size per chunk
    assert p.views[0].shape == (16, 4) and p.views[0].source == "A"  # A[:, k0:k1]: a view
    y = batchmv.matvec(A, x, copy=False)
    np.testing.assert_allclose(y.compute(), _reference(A, xn, -1), rtol=1e-12)


def test_rechunk_plan_reports_the_copy_and_copy_false_refuses(rng):
    A = rng.standard_normal((256, 64))
    x = da.from_array(rng.standard_normal((100, 64)), chunks=(50, 16))
    p = batchmv.plan(A, x)
    (copy,) = p.copies
    assert copy.startswith("x: rechunked from 4 chunks along axis 1 to one") and "a copy of x" in copy
    assert any("rechunked rather than multiplied per chunk" in nt for nt in p.notes)
    for call in (batchmv.matvec, batchmv.plan):
        with pytest.raises(batchmv.CopyRequiredError, match="rechunked"):
            call(A, x, copy=False)


# -- memory: blocks within max(x's largest chunk, array.chunk-size) ---------------------------

REPORT = ((4, 64), (8192, 64), (8192, 4), -1, "1MiB")  # issue 10's report: 16 chunks of 256 KiB


def _limit(x):
    chunk = np.prod(x.chunksize) * x.dtype.itemsize
    return max(chunk, dask.utils.parse_bytes(dask.config.get("array.chunk-size")))


@pytest.mark.parametrize(
    "a_shape, x_shape, chunks, axis, chunk_size",
    [
        REPORT,  # per chunk
        ((512, 64), (8192, 64), (8192, 4), -1, "1MiB"),  # rechunk: x and y blocks cut to 1 MiB
        ((3, 64), (64, 32, 64), (64, 32, 8), -1, "64KiB"),  # two batch axes, per chunk
        ((300, 64), (32, 64, 48), (8, 16, 48), 1, "64KiB"),  # the middle axis, rechunk
        ((2, 64), (64, 6, 5, 7), (8, 3, 5, 7), 0, "16KiB"),  # three batch axes, per chunk
    ],
)
def test_every_task_result_within_the_limit(rng, a_shape, x_shape, chunks, axis, chunk_size):
    A = rng.standard_normal(a_shape)
    x = da.random.default_rng(0).random(x_shape, chunks=chunks)
    with dask.config.set({"array.chunk-size": chunk_size}):
        limit = _limit(x)
        y = batchmv.matvec(A, x, axis=axis)
        out, sizes = _task_results(y)
        old, old_sizes = _task_results(batchmv.matvec(A, x.rechunk({axis: -1}), axis=axis))
    assert max(sizes) <= limit, (max(sizes), limit)
    assert max(old_sizes) > limit  # the positive control: one chunk along the axis exceeds it
    np.testing.assert_allclose(out, old, rtol=1e-12, atol=1e-12)


def _peak(y):
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    y.compute(scheduler="synchronous")
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak


def test_peak_memory_of_the_reported_case(rng):
    a_shape, x_shape, chunks, _, chunk_size = REPORT
    A = rng.standard_normal(a_shape)
    x = da.random.default_rng(0).random(x_shape, chunks=chunks)
    da.ones(2).sum().compute(scheduler="synchronous")  # dask's first compute imports modules
    with dask.config.set({"array.chunk-size": chunk_size}):
        new = _peak(batchmv.matvec(A, x))
        old = _peak(batchmv.matvec(A, x.rechunk({1: -1})))
        dasks = _peak(x @ A.T)
    assert new < old / 2, (new, old)  # x (4 MiB) no longer held whole, twice
    assert new <= 1.25 * dasks, (new, dasks)
    assert new < 2 * _limit(x)


# -- A enters the graph once ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["numpy", "torch", "dask"])
def test_A_enters_the_graph_once_per_chunk(rng, kind):
    An = rng.standard_normal((4, 60_000))  # 1.9 MB, wide: x is chunked along n
    A = An
    if kind == "torch":
        torch = pytest.importorskip("torch")
        A = torch.from_numpy(An)
    elif kind == "dask":
        A = da.from_array(An, chunks=An.shape)
    sizes = {}
    for chunks in (2, 60):
        x = da.random.default_rng(0).random((8, 60_000), chunks=(8, 60_000 // chunks))
        y = batchmv.matvec(A, x)
        assert _way(batchmv.plan(A, x)) == "per chunk"
        graph = dict(y.__dask_graph__())
        sizes[chunks] = len(pickle.dumps(graph))
        assert sum(len(pickle.dumps(v)) >= An.nbytes // 2 for v in graph.values()) == 1  # one key holds A
    assert sizes[60] - sizes[2] < An.nbytes / 8  # the graph grows by tasks only, not by A
    np.testing.assert_allclose(y.compute(), _reference(An, x.compute(), -1), rtol=1e-12)


# -- masked chunks ----------------------------------------------------------------------------


def test_masked_chunks_are_refused_when_the_graph_is_built(rng):
    A = rng.standard_normal((3, 4))
    xn = rng.standard_normal((10, 4))
    masked_x = da.ma.masked_equal(da.from_array(xn, chunks=5), xn[0, 0])
    masked_A = da.ma.masked_array(da.from_array(A), mask=A > 1)
    for a, x, label in [(A, masked_x, "x"), (masked_A, da.from_array(xn, chunks=5), "A")]:
        for call in (batchmv.matvec, batchmv.plan):
            with pytest.raises(TypeError, match=rf"{label} is a dask array of masked arrays.*ma\.filled\({label}, 0\)"):
                call(a, x)
    filled = batchmv.matvec(A, da.ma.filled(masked_x, 0))  # what the message says to do
    np.testing.assert_allclose(filled.compute(), _reference(A, np.where(xn == xn[0, 0], 0, xn), -1))


def test_graph_module_examples_run():
    assert doctest.testmod(_dask_graph).failed == 0
