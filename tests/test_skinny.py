"""Row blocks of A for skinny batches (:mod:`batchmv._skinny`): the rule, the schedule in
``plan``, results equal to the one-GEMM path for every layout, dtype and axis, bit-for-bit
the same with 1 and 2 threads, and A never copied (with positive controls).

The schedule is forced on small arrays (the rule's A-size threshold set to 0, OpenBLAS's
small-matrix limits scaled down so that a small A makes many blocks): no test here builds
a large array; the speed of the schedule is measured by ``batchmv bench --only skinny``.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import batchmv
import support
from batchmv import _cache, _skinny

M, N = 203, 64  # A's shape: blocks of uneven sizes


@pytest.fixture
def forced(monkeypatch):
    """Row blocks for any A, with blocks of a few rows (OpenBLAS's limits scaled down)."""
    monkeypatch.setattr(_skinny, "A_BYTES_MIN", 0)
    monkeypatch.setattr(_skinny, "SMALL_MNK", 8 * 17 * N)  # 17 rows at 8 vectors, 68 at 2
    monkeypatch.setattr(_skinny, "L2_BYTES", 2 * 13 * N * 8)  # 13 rows (float64) per block with several chunks
    monkeypatch.setattr(_skinny, "small_kernel", lambda: True)  # (the kernel's speed is not tested here)
    _cache.calls._runs.clear()
    yield
    _cache.calls._runs.clear()


def _threads(n: int):
    """Every engine's thread count set to n (numpy's OpenBLAS through threadpoolctl, torch's own)."""
    from contextlib import ExitStack, contextmanager

    from threadpoolctl import threadpool_limits

    @contextmanager
    def both():
        with ExitStack() as stack:
            stack.enter_context(threadpool_limits(n))
            if "torch" in support.testable():
                import torch

                before = torch.get_num_threads()
                torch.set_num_threads(n)
                stack.callback(torch.set_num_threads, before)
            yield

    return both()


# -- the rule ------------------------------------------------------------------------------
def test_the_block_sizes_follow_openblas_small_matrix_rule():
    for n, itemsize in ((4096, 4), (2048, 8), (1024, 4), (512, 8)):
        for batch in (2, 3, 4, 8):
            found = _skinny.blocks(8192, n, batch, itemsize, 2**20)
            assert found.chunks == 1 and found.chunk == batch
            assert batch * found.rows * n <= 1_000_000 and batch * found.rows <= 1200
            largest = min(1_000_000 // (batch * n), 1200 // batch)
            assert found.blocks == -(-8192 // largest)  # as few blocks as the rule allows, balanced
            assert found.blocks * found.rows >= 8192 > found.blocks * (found.rows - 1)
    wide = _skinny.blocks(8192, 4096, 32, 4, 2**20)  # 4 chunks of 8; blocks in half of L2
    assert (wide.chunk, wide.chunks, wide.rows) == (8, 4, 30) and wide.calls == 4 * wide.blocks
    assert _skinny.blocks(8192, 4096, 9, 4, 2**20)[4:] == (5, 2)  # chunks of 5 and 4, never of 1
    assert _skinny.blocks(64, 400_000, 2, 4, 2**20) is None  # single-row blocks: left to one GEMM


def test_the_rule_takes_skinny_batches_of_an_a_beyond_the_cache(monkeypatch):
    monkeypatch.setattr(_skinny, "small_kernel", lambda: True)
    monkeypatch.setattr(_skinny, "LLC_BYTES", 2 * 400 * 64 * 4)  # a small "cache": A of 400 x 64 float32 fills half

    def kernel(m, n, b, dtype="float32", order="C"):
        return batchmv.plan(np.ones((m, n), dtype, order=order), np.ones((b, n), dtype)).kernel

    assert kernel(401, 64, 2) == kernel(401, 64, 32) == "gemm row blocks"
    assert kernel(401, 64, 1) == kernel(401, 64, 33) == "gemm"  # one vector: GEMV; many: compute-bound
    assert kernel(201, 64, 16, dtype="float64") == "gemm row blocks"
    assert kernel(201, 64, 17, dtype="float64") == "gemm"  # float64: a packed GEMM from 17 vectors
    assert kernel(400, 64, 8) == "gemm"  # A fits in half the cache
    assert kernel(401, 64, 8, order="F") == "gemm"  # A's rows are not contiguous
    assert kernel(201, 64, 8, dtype="float64") == "gemm row blocks"
    assert kernel(401, 64, 8, dtype="complex64") == kernel(401, 64, 8, dtype="int32") == "gemm"
    assert kernel(1700, 16, 8) == "gemm"  # n < 32: the small-matrix kernel's TN case needs K >= 32
    monkeypatch.setattr(_skinny, "A_BYTES_MIN", 10**9)  # the threshold, when set, replaces the cache size
    assert kernel(401, 64, 8) == "gemm"
    monkeypatch.setattr(_skinny, "A_BYTES_MIN", None)
    monkeypatch.setattr(_skinny, "small_kernel", lambda: False)
    assert kernel(401, 64, 8) == "gemm"  # a BLAS without the kernel: one GEMM


def test_the_cache_sizes_are_read_from_the_system():
    l2, llc = _skinny._cache_bytes()
    assert 2**16 <= l2 <= llc and (_skinny.L2_BYTES, _skinny.LLC_BYTES) == (l2, llc)


# -- the plan ------------------------------------------------------------------------------
def test_plan_shows_the_blocks_calls_and_threads_and_no_copy(forced):
    A, X = np.ones((M, N), np.float32), np.ones((20, N), np.float32)
    with _threads(2):
        p = batchmv.plan(A, X, backend="numpy")
    assert p.kernel == "gemm row blocks" and p.copies == () and p.threads == 2
    # 20 vectors: 3 chunks of 7 (6); blocks of 19 rows (8 * 17 * 64 // (7 * 64)), 11 of them
    assert (p.block_rows, p.gemm_calls) == (19, 11 * 3)
    text = str(p)
    assert "kernel: gemm row blocks (33 calls)" in text and "copies: none" in text
    assert "11 blocks of 19 rows of A (views, read once) x 3 chunk(s) of 7 vectors" in text
    assert "2 thread(s), block j on thread j % 2" in text
    (a_view,) = [v for v in p.views if v.name == "A.T"]
    assert a_view.source == "A" and a_view.offset == 0  # A itself, not a copy
    assert "views" in text and "A.T" in text


def test_plan_without_the_schedule_is_unchanged(forced):
    p = batchmv.plan(np.ones((M, N)), np.ones((1, N)))
    assert p.kernel == "gemm" and p.block_rows is None and p.threads is None and p.gemm_calls == 1


# -- results -------------------------------------------------------------------------------
def _x(layout: str, b: int, dtype: str, rng) -> tuple[np.ndarray, int]:
    """x of ``b`` vectors in a layout whose GEMM view has rows of unit stride (or not)."""
    if layout == "C":
        return support.random_values(rng, (b, N), dtype), -1
    if layout == "batch axes":  # (2, b/2, N): one GEMM of b rows
        return support.random_values(rng, (2, b // 2, N), dtype), 2
    if layout == "axis 0":  # (N, b): the vectors are columns, X2's rows are strided
        return support.random_values(rng, (N, b), dtype), 0
    if layout == "row slice":  # every other vector of a larger x
        return support.random_values(rng, (2 * b, N + 3), dtype)[::2, :N], 1
    raise AssertionError(layout)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", ["C", "batch axes", "axis 0", "row slice"])
@pytest.mark.parametrize("a_order", ["C", "row slice", "F"])
@pytest.mark.parametrize("b", [2, 6, 12, 32])
def test_results_equal_the_one_gemm_path(xp_name, forced, dtype, layout, a_order, b, rng):
    if xp_name not in ("numpy", "torch", "jax"):
        pytest.skip("row blocks run on the CPU engines")
    if xp_name == "jax" and (a_order != "C" or layout != "C"):
        pytest.skip("jax arrays are C-ordered")
    base = support.random_values(rng, (M, N + 5), dtype)
    a_np = {"C": np.ascontiguousarray(base[:, :N]), "row slice": base[:, :N], "F": np.ascontiguousarray(base[:, :N].T).T}[a_order]
    x_np, axis = _x(layout, b, dtype, rng)
    A, x = support.to_lib(a_np, xp_name), support.to_lib(x_np, xp_name)
    p = batchmv.plan(A, x, axis=axis)
    blocked = a_order != "F" and layout != "axis 0" and b <= _skinny.MAX_BATCH[np.dtype(dtype).char]
    assert (p.kernel == "gemm row blocks") == blocked, str(p)
    y = batchmv.matvec(A, x, axis=axis)
    y_again = batchmv.matvec(A, x, axis=axis)  # the remembered kernel
    with monkeypatch_skinny_off():
        one = batchmv.matvec(A, x, axis=axis)
    ref, scale = support.reference(a_np, x_np, axis), support.magnitude(a_np, x_np, axis)
    for got in (y, y_again, one):
        support.assert_matvec_close(got, ref, scale, N, dtype)
    assert np.array_equal(support.to_numpy(y), support.to_numpy(y_again))


def monkeypatch_skinny_off():
    """The one-GEMM path, whatever the rule says (and the remembered calls forgotten)."""
    from contextlib import contextmanager

    @contextmanager
    def off():
        _skinny.ENABLED = False
        _cache.calls._runs.clear()
        try:
            yield
        finally:
            _skinny.ENABLED = True
            _cache.calls._runs.clear()

    return off()


@pytest.mark.parametrize("xp_name", ["numpy", "torch"])
def test_out_takes_the_blocks_in_place_and_in_any_layout(xp_name, forced, rng):
    support.need(xp_name)
    a_np, x_np = support.random_values(rng, (M, N), "float64"), support.random_values(rng, (6, N), "float64")
    A, x = support.to_lib(a_np, xp_name), support.to_lib(x_np, xp_name)
    ref, scale = support.reference(a_np, x_np, -1), support.magnitude(a_np, x_np, -1)
    for out_np in (np.zeros((6, M)), np.zeros((M, 6)).T, np.zeros((6, 2 * M))[:, ::2]):
        out = support.to_lib(out_np, xp_name)
        p = batchmv.plan(A, x, out=out)
        assert p.kernel == "gemm row blocks"
        assert batchmv.matvec(A, x, out=out) is out
        support.assert_matvec_close(out, ref, scale, N, "float64")


# -- threads -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_one_and_two_threads_give_the_same_bits(xp_name, forced, dtype, rng):
    if xp_name not in ("numpy", "torch", "jax"):
        pytest.skip("row blocks run on the CPU engines")
    a_np, x_np = support.random_values(rng, (M, N), dtype), support.random_values(rng, (12, N), dtype)  # 2 chunks
    A, x = support.to_lib(a_np, xp_name), support.to_lib(x_np, xp_name)
    results = {}
    for threads in (1, 2, 3):
        with _threads(threads):
            assert batchmv.plan(A, x).threads == threads
            results[threads] = support.to_numpy(batchmv.matvec(A, x)).copy()
    assert np.array_equal(results[1], results[2]) and np.array_equal(results[1], results[3])


def test_run_spreads_blocks_over_threads_by_index(monkeypatch):
    import threading

    real_dot, seen = np.dot, []

    def dot(x, block, out):
        seen.append((float(block[0, 0]), threading.current_thread().name))
        return real_dot(x, block, out=out)

    plan = _skinny.RowBlocks(m=40, batch=2, rows=10, blocks=4, chunk=2, chunks=1)
    A, X, Y = np.arange(40 * 32.0).reshape(40, 32), np.ones((2, 32)), np.empty((2, 40))
    monkeypatch.setattr(np, "dot", dot)
    _skinny.run(plan, A, X, Y, 2)
    np.testing.assert_array_equal(Y, X @ A.T)
    firsts = sorted(seen)  # block j starts at row 10 j, whose first element is 320 j
    assert [v for v, _ in firsts] == [0.0, 320.0, 640.0, 960.0]
    assert firsts[0][1] == firsts[2][1] != firsts[1][1] == firsts[3][1]  # block j on thread j % 2


def test_an_error_in_a_thread_reaches_the_caller(monkeypatch):
    plan = _skinny.RowBlocks(m=40, batch=2, rows=10, blocks=4, chunk=2, chunks=1)

    def dot(x, block, out):
        raise FloatingPointError("boom")

    monkeypatch.setattr(np, "dot", dot)
    with pytest.raises(FloatingPointError, match="boom"):
        _skinny.run(plan, np.ones((40, 32)), np.ones((2, 32)), np.empty((2, 40)), 2)


# -- no copy of A --------------------------------------------------------------------------
def test_every_block_is_a_view_of_a(xp_name, forced, monkeypatch, rng):
    if xp_name not in ("numpy", "torch", "jax"):
        pytest.skip("row blocks run on the CPU engines")
    a_np = support.random_values(rng, (M, N), "float64")
    A, x = support.to_lib(a_np, xp_name), support.to_lib(support.random_values(rng, (6, N), "float64"), xp_name)
    a_range = support.byte_range(_skinny_host(A))
    seen = []
    real_dot = np.dot
    monkeypatch.setattr(np, "dot", lambda x2, block, out: (seen.append(support.byte_range(block)), real_dot(x2, block, out=out))[1])
    batchmv.matvec(A, x)
    assert len(seen) == batchmv.plan(A, x).gemm_calls > 1
    assert all(a_range[0] <= lo and hi <= a_range[1] for lo, hi in seen)
    covered = sorted(seen)
    assert covered[0][0] == a_range[0] and covered[-1][1] == a_range[1]  # every row, once
    # positive control: a copy of A lies outside A's bytes
    copy = np.array(a_np)
    lo, hi = support.byte_range(copy)
    assert not (a_range[0] <= lo and hi <= a_range[1])


def _skinny_host(A):
    from batchmv import _registry

    return _registry.get_engine(support.library_of_array(A)).host(A)


def _extra_bytes(fn) -> int:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_numpy_allocates_no_copy_of_a(forced, rng):
    A = support.random_values(rng, (2000, N), "float64")  # 1 MB
    x = support.random_values(rng, (8, N), "float64")
    assert batchmv.plan(A, x).kernel == "gemm row blocks"
    extra = _extra_bytes(lambda: batchmv.matvec(A, x))
    assert extra < 8 * 2000 * 8 + 2**16  # the result (128 KB) and a block buffer
    # positive control: a float32 A with a float64 x is cast to float64, a copy the tracer sees
    A32 = A.astype(np.float32)
    assert _extra_bytes(lambda: batchmv.matvec(A32, x)) > A.nbytes


# -- where the schedule steps aside --------------------------------------------------------
def test_autograd_and_compile_keep_the_one_gemm(forced):
    support.need("torch")
    import torch

    A = torch.randn(M, N, dtype=torch.float64, requires_grad=True)
    x = torch.randn(6, N, dtype=torch.float64)
    assert batchmv.plan(A, x).kernel == "gemm"  # the graph needs torch's own mm
    y = batchmv.matvec(A, x)
    y.sum().backward()
    torch.testing.assert_close(A.grad, x.sum(0).expand(M, N))
    f = torch.compile(lambda a, v: batchmv.matvec(a, v), fullgraph=True, backend="eager")
    a = A.detach()
    torch.testing.assert_close(f(a, x), x @ a.T)


def test_jax_inside_jit_keeps_its_dot(forced):
    support.need("jax")
    import jax
    import jax.numpy as jnp

    A, x = jnp.ones((M, N)), jnp.ones((6, N))
    assert batchmv.plan(A, x).kernel == "gemm row blocks"
    y = jax.jit(lambda a, v: batchmv.matvec(a, v))(A, x)  # tracers: the expression
    np.testing.assert_allclose(np.asarray(y), np.full((6, M), float(N)))
    assert batchmv.plan(A, x[None]).kernel == "gemm row blocks"  # batch axes, vectors last
    assert batchmv.plan(A, x.T, axis=0).kernel == "dot_general"


@pytest.fixture
def block_runs(monkeypatch):
    """``block_runs[0]``: how many calls ran as row blocks since the test began."""
    count = [0]
    original = _skinny.run

    def counted(*args, **kwargs):
        count[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(_skinny, "run", counted)
    return count


def test_a_call_remembered_under_autograd_takes_row_blocks_when_repeated_without(forced, block_runs):
    """The key of a remembered call holds layouts, not autograd's state: a call first made
    on tensors that require grad (torch's own mm, for the graph) and repeated on tensors
    that do not runs row blocks, as its plan says, and the other way round keeps the graph."""
    support.need("torch")
    import torch

    A, x = torch.randn(M, N, dtype=torch.float64), torch.randn(6, N, dtype=torch.float64)
    for first_tracked in (True, False):
        _cache.calls._runs.clear()
        for tracked in (first_tracked, not first_tracked, first_tracked):
            v = x.clone().requires_grad_(tracked)
            before = block_runs[0]
            assert batchmv.plan(A, v).kernel == ("gemm" if tracked else "gemm row blocks")
            y = batchmv.matvec(A, v)
            assert block_runs[0] - before == (0 if tracked else 1)
            assert y.requires_grad == tracked
            torch.testing.assert_close(y, v.detach() @ A.T)
            if tracked:
                y.sum().backward()
                torch.testing.assert_close(v.grad, A.sum(0).expand(6, N))


def test_torch_forward_ad_and_torch_function_subclasses_keep_torch_s_product(forced, block_runs):
    """A numpy view of a tensor would drop a forward-mode AD tangent and bypass a subclass's
    ``__torch_function__``: such calls run torch's own GEMM (the plan says so), keep the
    tangent and the subclass, and another engine refuses them; plain tensors take row blocks."""
    support.need("torch")
    import torch
    import torch.autograd.forward_ad as fwAD

    A, x, t = (torch.randn(s, dtype=torch.float64) for s in ((M, N), (6, N), (6, N)))
    batchmv.matvec(A, x)  # (remembered on plain tensors: row blocks)
    assert block_runs[0] == 1
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, t)
        assert batchmv.plan(A, dual).kernel == "gemm"
        y = batchmv.matvec(A, dual)
        torch.testing.assert_close(fwAD.unpack_dual(y).tangent, t @ A.T)
        with pytest.raises(TypeError, match="forward-mode AD tangent"):
            batchmv.matvec(A, dual, backend="numpy")
    assert block_runs[0] == 1
    seen: list[str] = []
    Logged = support.logged_tensor_class(seen)

    AL, xL = A.as_subclass(Logged), x.as_subclass(Logged)
    assert batchmv.plan(AL, xL).kernel == "gemm"
    y = batchmv.matvec(AL, xL)
    assert type(y) is Logged and "linear" in seen and block_runs[0] == 1
    with pytest.raises(TypeError, match="overrides __torch_function__"):
        batchmv.matvec(AL, xL, backend="numpy")
    P = torch.nn.Parameter(A, requires_grad=False)  # (a subclass that changes nothing torch does)
    assert batchmv.plan(P, x).kernel == "gemm row blocks"


def test_torch_forward_ad_through_a_large_adjoint():
    """The adjoint of a complex A conjugates x into a temporary; a large one comes from
    numpy's allocator through ``conj_physical(out=)``, which has no forward-mode AD: a dual
    x takes torch's allocating form, and its tangent is the adjoint of the tangent."""
    support.need("torch")
    import torch
    import torch.autograd.forward_ad as fwAD

    A = torch.randn(600, 600, dtype=torch.complex128)
    x, t = torch.randn(1000, 600, dtype=torch.complex128), torch.randn(1000, 600, dtype=torch.complex128)
    with fwAD.dual_level():
        y = batchmv.rmatvec(A, fwAD.make_dual(x, t))
        primal, tangent = fwAD.unpack_dual(y)
    torch.testing.assert_close(primal, x @ A.conj())
    torch.testing.assert_close(tangent, t @ A.conj())


def test_jax_committed_or_weak_arrays_keep_jax_s_product(forced, block_runs):
    """jax's own product of arrays committed to a device is committed there, of weakly typed
    ones weakly typed; a numpy buffer adopted by jax is neither: such calls run jax's product
    (the plan says so), also when repeated after a remembered call on plain arrays."""
    support.need("jax")
    import jax
    import jax.numpy as jnp

    A, x = jnp.ones((M, N)), jnp.ones((6, N))
    batchmv.matvec(A, x)  # (remembered: row blocks)
    assert block_runs[0] == 1
    device = jax.devices()[0]
    committed = (jax.device_put(A, device), jax.device_put(x, device))
    weak = (jax.lax.broadcast(jnp.asarray(1.0), (M, N)), jax.lax.broadcast(jnp.asarray(2.0), (6, N)))
    for a, v in (committed, weak):
        assert batchmv.plan(a, v).kernel == "dot_general"
        y, expected = batchmv.matvec(a, v), v @ a.T
        assert (y.committed, y.weak_type) == (expected.committed, expected.weak_type)
        np.testing.assert_allclose(np.asarray(y), np.asarray(expected))
    assert (committed[0] @ committed[1].T).committed and (weak[1] @ weak[0].T).weak_type  # (what is kept)
    assert block_runs[0] == 1


def test_a_forked_child_runs_two_threads():
    """The pool's threads do not survive a fork: the child makes its own (in a fresh
    interpreter without jax, whose threads make a fork unsafe)."""
    done = support.run_python("""
        import os
        import numpy as np
        from threadpoolctl import threadpool_limits
        import batchmv
        from batchmv import _skinny
        _skinny.A_BYTES_MIN, _skinny.small_kernel = 0, lambda: True
        A, x = np.ones((3000, 64)), np.ones((6, 64))
        with threadpool_limits(2):
            assert batchmv.plan(A, x).threads == 2
            batchmv.matvec(A, x)  # the pool exists in the parent
            pid = os.fork()
            if pid == 0:
                os._exit(0 if np.array_equal(batchmv.matvec(A, x), np.full((6, 3000), 64.0)) else 1)
            _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
    """, timeout=120)
    assert done.returncode == 0 and "child 0" in done.stdout, done.stderr[-2000:]
