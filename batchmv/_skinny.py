"""Skinny batches: ``Y2 = X2 @ A.T`` for a few vectors and an A beyond half the last-level
cache, as row blocks of A that read A once, at the rate of a matrix-vector product.

Such a product is bound by reading A, yet a GEMM of 2 to 64 vectors runs far below that
rate: OpenBLAS packs its operands, and MKL (torch) and XLA (jax) fall off the same way
(benchmarks/README.md, "Skinny batches").  OpenBLAS's small-matrix kernel reads its
operands in place, but takes only small products: on its AVX-512 core types, the ``TN``
case (``X2 @ A[r0:r1].T`` seen column-major) when M*N*K <= 1e6, M*N <= 1200 and K >= 32
(M: rows of the block, N: vectors, K: n).  So A is cut into row blocks (views, never
copied) sized to that rule, and the batch into chunks of at most :data:`CHUNK` vectors
(with several chunks, a block also fits in half the L2 cache, where the chunks after the
first read it).  Each ``numpy.dot(X2[c0:c1], A[r0:r1].T)`` writes a per-thread buffer,
copied into ``Y2[c0:c1, r0:r1]``: ``numpy.dot`` writes only C-ordered results, and
``numpy.matmul``, which would write the slice, holds the GIL on products this small.

Threads: ``numpy.dot`` releases the GIL in BLAS, so a small pool of Python threads runs
block j on thread j % T.  Blocks, chunks and calls depend on shapes and dtype only, and
each result element is written by one call: results are the same bit for bit whatever T
is (the engine's threads, torch's ``get_num_threads``, else numpy's OpenBLAS pool's as
``threadpoolctl`` sets it).  The engines share their arrays with numpy without a copy
(:meth:`batchmv._engine.Engine.host`), so torch and jax run the same kernel.

The rule (:func:`_rule`; :func:`plan_for` adds what each run checks): float32 (float64) with 2 to 32 (16) vectors, A with unit
stride along n, n >= 32, A larger than :data:`A_BYTES_MIN` (None: half the last-level
cache), and numpy's BLAS an OpenBLAS whose core type has the kernel.  Else one GEMM.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from typing import Any, NamedTuple, Optional

from ._memory import aligned_empty

#: Whether the rule may take a call at all (the bench's "before" and tests switch it off),
#: read when a call is built: a remembered call keeps the kernel it was built with.
ENABLED = True
#: Largest batch that runs as row blocks, per dtype (numpy's type character): beyond it the
#: product is compute-bound, and a packed GEMM (torch's MKL first) computes as fast as the
#: small-matrix kernel or faster (benchmarks/README.md, "Skinny batches").
MAX_BATCH = {"f": 32, "d": 16}
#: Most vectors per block call: more would shrink the blocks below a useful size.
CHUNK = 8
#: A must take more bytes than this; None: half the last-level cache, which A shares with x,
#: y and everything else, so that a larger A comes from memory again on every call (tests
#: set a small value).
A_BYTES_MIN: Optional[int] = None
#: OpenBLAS's small-matrix rule for the TN case (``*_small_kernel_permit_skylakex.c``).
SMALL_MNK, SMALL_MN, SMALL_K = 1_000_000, 1200, 32
#: OpenBLAS core types whose kernels include the small-matrix TN kernel.
SMALL_KERNEL_CORES = frozenset({"skylakex", "cooperlake", "sapphirerapids"})
KERNEL = "gemm row blocks"


def _cache_bytes(root: str = "/sys/devices/system/cpu/cpu0/cache") -> tuple[int, int]:
    """(L2 cache of one core, last-level cache) in bytes, from sysfs, else ``os.sysconf``,
    else guesses (1 MiB, 32 MiB)."""
    def read(path: str) -> str:
        with open(path) as fh:
            return fh.read().strip()

    sizes: dict[int, int] = {}
    try:
        for entry in sorted(e for e in os.listdir(root) if e.startswith("index")):
            size = read(f"{root}/{entry}/size")
            if read(f"{root}/{entry}/type") != "Instruction":
                sizes[int(read(f"{root}/{entry}/level"))] = int(size.rstrip("KMG")) * {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1:], 1)
    except (OSError, ValueError):
        for level, name in ((2, "SC_LEVEL2_CACHE_SIZE"), (3, "SC_LEVEL3_CACHE_SIZE")):
            try:
                sizes[level] = os.sysconf(name)
            except (ValueError, OSError, AttributeError):
                pass
    sizes = {k: v for k, v in sizes.items() if v > 0}
    return sizes.get(2, 2**20), sizes[max(sizes)] if sizes else 32 * 2**20


#: (L2 per core, last-level cache) in bytes, read once at import.
L2_BYTES, LLC_BYTES = _cache_bytes()


class RowBlocks(NamedTuple):
    """The row-block schedule of one product: the same whatever the thread count."""

    m: int
    batch: int
    rows: int  #: rows of A per block (the largest; blocks differ by at most one row)
    blocks: int
    chunk: int  #: vectors per call (the largest; chunks differ by at most one vector)
    chunks: int

    @property
    def calls(self) -> int:
        return self.blocks * self.chunks

    def describe(self, threads: int, a_bytes: int) -> str:
        return (
            f"{KERNEL}: A ({a_bytes / 2**20:.1f} MiB) is larger than "
            + (f"half the last-level cache ({LLC_BYTES / 2**20:.0f} MiB)" if A_BYTES_MIN is None else f"{A_BYTES_MIN} bytes")
            + f" and the batch small ({self.batch}): {self.blocks} blocks of "
            f"{self.rows} rows of A (views, read once) x {self.chunks} chunk(s) of {self.chunk} vectors, "
            f"each Y2[c0:c1, r0:r1] = X2[c0:c1] @ A[r0:r1].T by numpy.dot (OpenBLAS's small-matrix "
            f"kernel, no packing) into a {self.chunk}x{self.rows} buffer per thread; {threads} thread(s), "
            f"block j on thread j % {threads}"
        )


def blocks(m: int, n: int, batch: int, itemsize: int, l2_bytes: int) -> Optional[RowBlocks]:
    """The row blocks of ``Y2 (batch, m) = X2 @ A.T`` for a row-major A (m, n), sized to
    OpenBLAS's small-matrix rule and the L2 cache; None where they would be single rows
    (OpenBLAS hands those to its threaded GEMV).

    >>> blocks(8192, 4096, 2, 4, 2**20)  # 2 vectors: at most 122 rows (2 * 122 * 4096 <= 1e6)
    RowBlocks(m=8192, batch=2, rows=121, blocks=68, chunk=2, chunks=1)
    >>> blocks(8192, 4096, 32, 4, 2**20)  # 4 chunks of 8: 30 rows (480 KiB, half of L2)
    RowBlocks(m=8192, batch=32, rows=30, blocks=274, chunk=8, chunks=4)
    """
    chunks = math.ceil(batch / CHUNK)
    chunk = math.ceil(batch / chunks)
    rows = min(SMALL_MNK // (chunk * n), SMALL_MN // chunk, m)
    if chunks > 1:  # a block is read once per chunk: from L2 after the first
        rows = min(rows, max(2, l2_bytes // 2 // (n * itemsize)))
    if rows < 2:
        return None
    count = math.ceil(m / rows)
    return RowBlocks(m, batch, math.ceil(m / count), count, chunk, chunks)


# -- numpy's OpenBLAS --------------------------------------------------------------------
_blas: list[Any] = []  # [threadpoolctl's controller of numpy's OpenBLAS, or None], once found


def _openblas() -> Any:
    if not _blas:
        found = None
        try:
            import numpy  # noqa: F401 - its BLAS must be loaded to be found
            from threadpoolctl import ThreadpoolController

            libs = [lib for lib in ThreadpoolController().lib_controllers if lib.internal_api == "openblas"]
            ours = [lib for lib in libs if "numpy" in lib.filepath] or (libs if len(libs) == 1 else [])
            found = ours[0] if ours else None
        except Exception:  # noqa: BLE001 - threadpoolctl cannot tell: no row blocks
            found = None
        _blas.append(found)
    return _blas[0]


def small_kernel() -> bool:
    """Whether numpy's BLAS is an OpenBLAS (>= 0.3.17) whose core type has the
    small-matrix TN kernel."""
    lib = _openblas()
    if lib is None or str(getattr(lib, "architecture", "")).lower() not in SMALL_KERNEL_CORES:
        return False
    try:
        return tuple(int(v) for v in str(lib.version).split(".")[:3]) >= (0, 3, 17)
    except ValueError:
        return False


def threads_of(eng: Any) -> int:
    """The threads of a row-block call: the engine's count (torch's), else numpy's OpenBLAS
    pool's, as ``threadpoolctl`` sets it."""
    own = eng.threads()
    if own:
        return own
    lib = _openblas()
    return max(1, int(lib.num_threads)) if lib is not None else 1


# -- the schedule of a checked call --------------------------------------------------------
def plan_for(call: Any) -> Optional[RowBlocks]:
    """The row blocks of a checked call (:class:`batchmv._call.Call`), or None where it
    runs as one GEMM: the rule in the module's docstring (:func:`_rule`), for arrays that
    numpy can read as they are now, outside autograd's graph."""
    plan = _rule(call)
    if plan is None or call.tracks_graph:
        return None
    views = [call.engine.host(v) for v in (call.a, call.x)]  # (the rule has checked their strides)
    return plan if all(v is not None and v.flags.aligned for v in views) else None


def _rule(call: Any) -> Optional[RowBlocks]:
    """The row blocks of a call on arrays of these layouts (what a remembered call's key
    holds), or None.  A run built from it checks the rest as it goes (:func:`gemm_for`,
    :func:`expression_for`): a call remembered while autograd recorded it, or on arrays
    numpy cannot read, takes row blocks when it is repeated on arrays that allow them.
    Shapes are compared first, so that small calls take none of the other steps (a large
    call traced by torch.compile builds the row-block run, which then steps aside as it
    runs: numpy cannot read a traced tensor).  ``ENABLED`` and ``A_BYTES_MIN`` are read
    here, when a call is built."""
    eng, sched = call.engine, call.schedule
    if not ENABLED or call.op != "N" or call.conj is not None:
        return None  # (an adjoint's GEMM reads A as it is, with its own conjugations)
    m, n = eng.shape(call.a)
    if sched is not None:  # a strided engine's one GEMM, A read through its row-major rows
        if sched.loop_shape or sched.zero_axes or sched.a_copy or sched.x2_strides[1] != 1:
            return None
        batch, unit = sched.rows, eng.strides(call.a)[1] == 1
    else:  # an expression engine (jax): vectors along the last axis
        shape = eng.shape(call.x)
        batch, unit = math.prod(shape[:-1]), call.axis == len(shape) - 1
    itemsize = eng.itemsize(call.a)
    limit = LLC_BYTES // 2 if A_BYTES_MIN is None else A_BYTES_MIN
    if not (unit and 2 <= batch <= max(MAX_BATCH.values()) and n >= SMALL_K and m * n * itemsize > limit):
        return None
    char = {"float32": "f", "float64": "d"}.get(str(call.dtype).rsplit(".", 1)[-1])
    if char is None or batch > MAX_BATCH[char]:
        return None
    if eng.dtype_of(call.a) != call.dtype or eng.dtype_of(call.x) != call.dtype:
        return None  # (strided engines cast x in a copy, which is then the GEMM's x)
    if eng.device(call.a) != "cpu" or not small_kernel():  # (numpy reads host memory only; torch's key holds the device)
        return None
    return blocks(m, n, batch, itemsize, L2_BYTES)


# -- running -----------------------------------------------------------------------------
_pool: list[Any] = []  # [ThreadPoolExecutor], replaced by a larger one when more threads are asked for
_pool_lock = threading.Lock()


def _executor(workers: int) -> Any:
    from concurrent.futures import ThreadPoolExecutor

    with _pool_lock:
        if not _pool or _pool[0]._max_workers < workers:
            _pool[:] = [ThreadPoolExecutor(workers, thread_name_prefix="batchmv-rowblocks")]
        return _pool[0]


if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's threads
    os.register_at_fork(after_in_child=_pool.clear)


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    """``range(total)`` as ``parts`` spans whose lengths differ by at most one."""
    edges = [total * k // parts for k in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def run(plan: RowBlocks, A: Any, X: Any, Y: Any, threads: int) -> None:
    """``Y[...] = X @ A.T`` on numpy views: A (m, n) and X (batch, n) with unit stride along
    n, Y (batch, m) writable with any strides; block j on thread j % ``threads``."""
    import numpy as np

    spans, chunks = _split(plan.m, plan.blocks), _split(plan.batch, plan.chunks)
    threads = max(1, min(threads, plan.blocks))

    def work(first: int) -> None:
        scratch = np.empty(plan.chunk * plan.rows, Y.dtype)
        for r0, r1 in spans[first::threads]:
            block = A[r0:r1].T
            for c0, c1 in chunks:
                buf = scratch[: (c1 - c0) * (r1 - r0)].reshape(c1 - c0, r1 - r0)
                np.dot(X[c0:c1], block, out=buf)  # releases the GIL while BLAS runs
                Y[c0:c1, r0:r1] = buf

    if threads == 1:
        work(0)
        return
    futures = [_executor(threads - 1).submit(work, k) for k in range(1, threads)]
    try:
        work(0)
    finally:
        errors = [f.exception() for f in futures]  # (waits for every thread)
    for err in errors:
        if err is not None:
            raise err


def _host(eng: Any, a: Any, x: Any) -> Optional[tuple[Any, Any]]:
    """A and X as numpy views that numpy.dot reads without a copy, or None."""
    A, X = eng.host(a), eng.host(x)
    if A is None or X is None or A.dtype != X.dtype or A.dtype.char not in "fd":
        return None
    if not (A.flags.aligned and X.flags.aligned and A.strides[1] == A.itemsize and X.strides[-1] == X.itemsize):
        return None
    return A, X


def gemm_for(call: Any) -> Optional[Callable[..., Any]]:
    """``gemm(x2, a, out=None)``, the engine's GEMM as row blocks, for a checked call of a
    strided engine; None where the call runs as one GEMM.  It falls back to the engine's
    GEMM where the arrays cannot be shared with numpy as they are."""
    plan = _rule(call)
    if plan is None:
        return None
    eng = call.engine

    def gemm(x2: Any, a: Any, out: Any = None) -> Any:
        # (a remembered call may repeat on tensors that autograd must see: the engine's GEMM)
        views = None if eng.tracks_graph(a, x2) else _host(eng, a, x2)
        if views is None:
            return eng.gemm(x2, a, out)
        y = eng.empty((plan.batch, plan.m), call.dtype, x2) if out is None else out
        Y = eng.host(y, writable=True)
        if Y is None:
            return eng.gemm(x2, a, out)
        run(plan, *views, Y, threads_of(eng))
        return y

    return gemm


def expression_for(call: Any) -> Optional[Callable[[Any, Any], Any]]:
    """``run(a, x)`` computing an expression engine's call (jax) as row blocks on numpy
    views of its arrays, the result wrapped by the engine without a copy; None where the
    engine's expression runs.  It falls back to the expression where the arrays cannot
    be shared with numpy as they are."""
    plan = _rule(call)
    if plan is None:
        return None
    eng, axis, y_shape = call.engine, call.axis, call.y_shape

    def run_(a: Any, x: Any) -> Any:
        views = _host(eng, a, x)
        if views is None or not views[1].flags.c_contiguous:
            return eng.expression(a, x, axis)
        A, X = views
        Y = aligned_empty((plan.batch, plan.m), A.dtype)
        run(plan, A, X.reshape(plan.batch, -1), Y, threads_of(eng))
        return eng.adopt_result(Y.reshape(y_shape), allow_copy=True, writable=False)[0]

    return run_
