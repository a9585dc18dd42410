"""Dask arrays: lazy results, blockwise through the normal dispatch, A in the graph once,
the engine captured when the graph is built, and a real distributed LocalCluster (results,
A sent to each worker once, a worker killed mid-computation)."""

from __future__ import annotations

import faulthandler
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import batchmv
import support

da = pytest.importorskip("dask.array")
import dask  # noqa: E402


def _ref(A, x, axis=-1):
    """The in-memory result of the same call."""
    return batchmv.matvec(np.asarray(A), np.asarray(x), axis=axis)


def _compute(y):
    return y.compute(scheduler="threads")


# -- lazy results ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, chunks, axis",
    [
        ((300, 40), (37, 40), -1),  # vectors in rows, ragged last block
        ((40, 300), (40, 64), 0),  # vectors in columns
        ((6, 40, 50), (2, 40, 25), 1),  # a middle axis, blocks on both batch axes
        ((5, 7, 40), (5, 3, 40), 2),
        ((40,), (40,), 0),  # one vector
        ((0, 40), (0, 40), 1),  # no vectors
    ],
)
def test_lazy_result_equals_in_memory(rng, shape, chunks, axis):
    A = rng.standard_normal((30, 40))
    xn = rng.standard_normal(shape)
    x = da.from_array(xn, chunks=chunks)
    y = batchmv.matvec(A, x, axis=axis)
    assert isinstance(y, da.Array)
    ref = _ref(A, xn, axis)
    assert y.shape == ref.shape and y.dtype == ref.dtype
    assert y.numblocks == x.numblocks  # blockwise: one output block per block of x
    out = _compute(y)
    assert type(out) is np.ndarray
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


def test_dtypes_follow_numpy_promotion(rng):
    A = rng.standard_normal((8, 5)).astype(np.float32)
    xn = rng.integers(-5, 5, (20, 5)).astype(np.int32)
    y = batchmv.matvec(A, da.from_array(xn, chunks=(7, 5)))
    ref = _ref(A, xn)
    assert y.dtype == ref.dtype == np.float64
    np.testing.assert_allclose(_compute(y), ref, rtol=1e-6)


def test_x_chunked_along_axis_is_rechunked_and_reported(rng):
    A = rng.standard_normal((60, 40))  # m > n: partial products per chunk would outgrow x
    xn = rng.standard_normal((50, 40))
    x = da.from_array(xn, chunks=(10, 15))  # 3 chunks along the vector axis
    p = batchmv.plan(A, x)
    assert any(c.startswith("x: rechunked from 3 chunks along axis 1") for c in p.copies), p.copies
    assert p.home == "dask" and p.blocks == 5
    np.testing.assert_allclose(_compute(batchmv.matvec(A, x)), _ref(A, xn), rtol=1e-12, atol=1e-12)
    with pytest.raises(batchmv.CopyRequiredError, match="rechunked"):
        batchmv.matvec(A, x, copy=False)
    with pytest.raises(batchmv.CopyRequiredError, match="rechunked"):
        batchmv.plan(A, x, copy=False)


def test_plan_describes_the_per_block_kernel(rng):
    A = np.asfortranarray(rng.standard_normal((16, 24)))
    x = da.from_array(rng.standard_normal((100, 24)), chunks=(30, 24))
    p = batchmv.plan(A, x, copy=False)
    assert (p.backend, p.kernel, p.copies, p.blocks, p.gemm_calls) == ("numpy", "gemm", (), 4, 4)
    assert p.flops == 2 * 16 * 24 * 100
    assert [v.name for v in p.views] == ["A.T", "X2", "Y2"]
    assert p.views[1].shape == (30, 24)  # the first block
    assert p.views[0].source == "A"  # A.T is a view of A in every block: not copied
    text = str(p)
    assert "4 blocks" in text and "A enters the graph once" in text and "captured" in text


def test_errors_are_raised_when_the_graph_is_built(rng):
    A = rng.standard_normal((4, 5))
    x = da.ones((10, 6), chunks=(5, 6))
    with pytest.raises(ValueError, match="A has shape"):
        batchmv.matvec(A, x)
    with pytest.raises(ValueError, match="out of range"):
        batchmv.matvec(A, da.ones((10, 5)), axis=2)
    with pytest.raises(ValueError, match="2-D"):
        batchmv.matvec(np.ones(5), da.ones((10, 5)))
    with pytest.raises(TypeError, match="out= cannot be used with dask"):
        batchmv.matvec(A, da.ones((10, 5)), out=np.empty((10, 4)))
    with pytest.raises(TypeError, match="dask.array.from_array"):
        batchmv.matvec(da.from_array(A), np.ones((10, 5)))
    with pytest.raises(ValueError, match="unknown backend"):
        batchmv.matvec(A, da.ones((10, 5)), backend="dask")  # dask is a home library, not an engine
    with pytest.raises(TypeError, match="numpy"):
        batchmv.matvec(A, da.ones((10, 5), dtype="U3"))
    with pytest.raises(ValueError, match="copy must be None"):
        batchmv.matvec(A, da.ones((10, 5)), copy=True)


def test_dask_is_not_an_engine_name():
    assert "dask" not in batchmv.available_backends()
    from batchmv import _select

    assert "dask" not in _select.VALID_NAMES


# -- A: numpy, torch, dask -------------------------------------------------------------------


def test_torch_A(rng):
    torch = pytest.importorskip("torch")
    An = rng.standard_normal((9, 7))
    xn = rng.standard_normal((40, 7))
    y = batchmv.matvec(torch.from_numpy(An), da.from_array(xn, chunks=(16, 7)))
    np.testing.assert_allclose(_compute(y), xn @ An.T, rtol=1e-12)
    with pytest.raises(TypeError, match="grad"):  # refused when the graph is built, not in a worker
        batchmv.matvec(torch.from_numpy(An).requires_grad_(), da.from_array(xn, chunks=(16, 7)), backend="numpy")


@pytest.mark.parametrize("kind", ["numpy", "torch", "csr"])
@pytest.mark.parametrize("chunks", [(16, 7), (16, 3)])
def test_every_op_of_a_prepared_operator(rng, kind, chunks):
    """op, op.T, op.H and op.T.H (conj(A), the one op the public call does not name) of a
    prepared operator on a dask x, chunked along the vectors or not: lazy, and equal to the
    complex128 reference."""
    An = rng.standard_normal((9, 7)) + 1j * rng.standard_normal((9, 7))
    if kind == "torch":
        torch = pytest.importorskip("torch")
        A = torch.from_numpy(An)
    else:
        A = pytest.importorskip("scipy.sparse").csr_array(An) if kind == "csr" else An
    op = batchmv.prepare(A)
    for operator, matrix in ((op, An), (op.T, An.T), (op.H, An.conj().T), (op.T.H, An.conj())):
        xn = rng.standard_normal((40, matrix.shape[1])) + 1j * rng.standard_normal((40, matrix.shape[1]))
        x = da.from_array(xn, chunks=(chunks[0], min(chunks[1], matrix.shape[1])))
        y = operator(x)
        assert isinstance(y, da.Array) and operator.plan(x).kernel in ("gemm", "spmm")
        np.testing.assert_allclose(_compute(y), xn @ matrix.T, rtol=1e-12)


@pytest.mark.parametrize("a_chunks", [(9, 7), (3, 7)])
def test_dask_A(rng, a_chunks):
    An = rng.standard_normal((9, 7))
    xn = rng.standard_normal((40, 7))
    A = da.from_array(An, chunks=a_chunks)
    x = da.from_array(xn, chunks=(16, 7))
    p = batchmv.plan(A, x)
    assert bool(p.copies) == (a_chunks != (9, 7))  # several chunks: concatenated once, reported
    np.testing.assert_allclose(_compute(batchmv.matvec(A, x)), xn @ An.T, rtol=1e-12)
    if a_chunks != (9, 7):
        with pytest.raises(batchmv.CopyRequiredError, match="concatenated"):
            batchmv.matvec(A, x, copy=False)


def test_sequence_x_with_dask_A(rng):
    An = rng.standard_normal((3, 4))
    y = batchmv.matvec(da.from_array(An), [1.0, 2.0, 3.0, 4.0])
    assert isinstance(y, da.Array)
    np.testing.assert_allclose(_compute(y), An @ np.array([1.0, 2.0, 3.0, 4.0]))


# -- the graph: A once -----------------------------------------------------------------------


def _graph(y):
    return dict(y.__dask_graph__())


@pytest.mark.parametrize("kind", ["numpy", "torch", "dask"])
def test_A_enters_the_graph_once(rng, kind):
    An = rng.standard_normal((1000, 600))  # 4.8 MB
    if kind == "torch":
        torch = pytest.importorskip("torch")
        A = torch.from_numpy(An)
    elif kind == "dask":
        A = da.from_array(An, chunks=An.shape)
    else:
        A = An
    sizes, y, x = support.graph_sizes(A, An.nbytes)
    assert sizes[200] < An.nbytes * 1.2  # A once, not per block
    assert sizes[200] - sizes[2] < An.nbytes / 8  # the graph grows by tasks only, not by A
    np.testing.assert_allclose(_compute(y)[:5], x[:5].compute() @ An.T, rtol=1e-12)


# -- the engine is captured when the graph is built ------------------------------------------


def _count_gemms(monkeypatch, engine):
    from batchmv import _registry

    eng = type(_registry.get_engine(engine))
    calls = []
    original = eng.gemm

    def gemm(self, *args, **kwargs):
        calls.append(threading.get_ident())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(eng, "gemm", gemm)
    return calls


def test_use_backend_is_captured_at_graph_construction(rng, monkeypatch):
    pytest.importorskip("torch")
    calls = _count_gemms(monkeypatch, "torch")
    A = rng.standard_normal((6, 8))
    xn = rng.standard_normal((40, 8))
    with batchmv.use_backend("torch"):
        y = batchmv.matvec(A, da.from_array(xn, chunks=(10, 8)))
        assert batchmv.plan(A, da.from_array(xn, chunks=(10, 8))).backend == "torch"
    calls.clear()  # (building the graph ran the engine on an empty block, for dask's meta)
    out = _compute(y)  # outside the block, in dask's worker threads
    assert len(calls) == 4  # every block ran on torch
    assert threading.get_ident() not in calls
    np.testing.assert_allclose(out, xn @ A.T, rtol=1e-12)
    assert type(out) is np.ndarray  # the blocks' home is numpy: numpy blocks back


def test_environment_is_captured_and_explicit_backend_wins(rng, monkeypatch):
    pytest.importorskip("torch")
    import batchmv._select as select

    calls = _count_gemms(monkeypatch, "torch")
    monkeypatch.setattr(select, "_env_value", "torch")
    A, xn = rng.standard_normal((6, 8)), rng.standard_normal((20, 8))
    y_env = batchmv.matvec(A, da.from_array(xn, chunks=(10, 8)))
    y_np = batchmv.matvec(A, da.from_array(xn, chunks=(10, 8)), backend="numpy")
    monkeypatch.setattr(select, "_env_value", "")  # later changes do not reach the graph
    calls.clear()
    _compute(y_env)
    assert len(calls) == 2
    _compute(y_np)
    assert len(calls) == 2


def test_import_batchmv_imports_no_array_library_but_numpy_for_dask():
    code = (
        "import sys, batchmv\n"
        "bad = [m for m in ('torch', 'jax', 'cupy', 'dask', 'scipy', 'array_api_compat', 'array_api_strict') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "import numpy as np\n"
        "batchmv.matvec(np.eye(2), np.ones((3, 2)))\n"
        "assert not {'dask', 'torch', 'jax', 'scipy', 'array_api_compat'} & set(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- a real distributed cluster ---------------------------------------------------------------

distributed = pytest.importorskip("distributed")


def _cluster():
    return distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )


@pytest.fixture
def watchdog():
    """Abort the test run (with tracebacks) if a cluster test hangs."""
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.mark.slow
def test_local_cluster_results_and_A_sent_once(rng, watchdog):
    An = rng.standard_normal((500, 400))  # 1.6 MB
    x = da.random.default_rng(1).random((4000, 400), chunks=(100, 400))  # 40 blocks
    y = batchmv.matvec(An, x)
    ref = _compute(y)
    np.testing.assert_allclose(ref, _compute(x) @ An.T, rtol=1e-10, atol=1e-10)
    (a_key,) = [k for k in support.keys_holding(_graph(y), An.nbytes // 2)]
    A_small = rng.standard_normal((8, 400))  # x chunked along n: multiplied per chunk
    y_per_chunk = batchmv.matvec(A_small, x.rechunk((500, 100)))
    (small_key,) = [k for k in _graph(y_per_chunk) if str(k).startswith("batchmv-A-")]
    with _cluster() as cluster, distributed.Client(cluster) as client:
        out = client.compute(y).result(timeout=60)
        np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-10)  # (workers: single-threaded BLAS)
        out = client.compute(y_per_chunk).result(timeout=60)
        np.testing.assert_allclose(out, _compute(x) @ A_small.T, rtol=1e-10, atol=1e-10)

        def transfers_of(key, dask_worker):
            return sum(key in t.get("keys", ()) for t in dask_worker.transfer_incoming_log)

        # A is made on one worker and fetched by the other at most once (never once per task)
        for key in (a_key, small_key):
            received = client.run(transfers_of, key)
            assert sum(received.values()) <= 1, received
    assert client.status == "closed"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Sending large graph:UserWarning")  # A (18 MB) is in it, once
def test_local_cluster_survives_a_killed_worker(rng, watchdog):
    An = rng.standard_normal((1500, 1500))
    x = da.random.default_rng(2).random((24_000, 1500), chunks=(800, 1500))  # 30 blocks, long enough to kill a worker mid-way
    y = batchmv.matvec(An, x)
    with _cluster() as cluster, distributed.Client(cluster) as client:
        client.wait_for_workers(2, timeout=30)
        pids = client.run(os.getpid)
        future = client.compute(y)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until work is really under way on both workers
            processing = client.processing()
            if sum(map(len, processing.values())) >= 2 and all(processing.values()):
                break
            time.sleep(0.05)
        time.sleep(0.3)
        assert not future.done()
        victim = next(iter(pids.values()))
        os.kill(victim, signal.SIGKILL)
        out = future.result(timeout=90)
        assert victim not in client.run(os.getpid).values()  # the nanny started a new worker
    np.testing.assert_allclose(out, _compute(x) @ An.T, rtol=1e-10, atol=1e-10)
