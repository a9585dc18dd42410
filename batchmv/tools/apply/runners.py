"""Where the blocks run: here, one after another, or as tasks of a Dask cluster.

Here: each block of VECTORS is read into one reusable buffer, multiplied by A with
:func:`batchmv.matvec` into a second reusable buffer, and written out.

With ``--scheduler ADDRESS`` the same blocks run on a Dask cluster through batchmv's Dask
path (A enters the graph once); the workers read VECTORS and write their blocks into
``OUT.partial`` themselves, so they must see the same files (same machine or a shared file
system), and the journal is kept by this process as blocks finish.  The memory budget then
sizes the blocks, so it holds per running task.  Workers' BLAS may run with another number
of threads than a local run, so the last bits of a result can differ between the two ways;
the journal's fingerprint records which way ran, and a resumed run must use the same one.
"""

from __future__ import annotations

import os
from typing import Any

from batchmv._memory import aligned_empty

from .blockio import drop_pages, transfer_block
from .errors import BadInput, RunFailed
from .job import Job
from .journal import Output
from .npy import NpyFile

CONNECT_TIMEOUT = 10  #: seconds to reach the Dask scheduler of --scheduler


def run_local(job: Job, output: Output, pending: list[int], bar: Any) -> None:
    import batchmv

    (ob, ib), (outer, n, inner), m = job.block, job.shape3, job.y_shape3[1]
    # block buffers start on a cache line, the same in every run and every process
    x_full = aligned_empty((ob, n, ib), job.vectors.dtype)
    y_full = aligned_empty((ob, m, ib), job.result_dtype)
    fd_x = os.open(job.vectors.path, os.O_RDONLY)
    try:
        _check_unchanged(fd_x, job.vectors)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd_x, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        # Every GEMM has the full block's shape: a short last block is padded with zeros.  The
        # engine's working memory then stays the same all run long (OpenBLAS touches other
        # pages of its buffers for another shape), and each block runs the same kernel.
        for k in pending:
            o0, o1, i0, i1 = loc = job.location(k)
            xb, yb = x_full[: o1 - o0, :, : i1 - i0], y_full[: o1 - o0, :, : i1 - i0]
            if (o1 - o0, i1 - i0) != (ob, ib):
                x_full[o1 - o0 :] = 0
                x_full[:, :, i1 - i0 :] = 0
            transfer_block(fd_x, job.vectors.offset, job.shape3, loc, xb, write=False)
            batchmv.matvec(job.a, x_full, axis=1, out=y_full, backend=job.engine)
            transfer_block(output.fd, len(job.header), job.y_shape3, loc, yb, write=True)
            os.fdatasync(output.fd)
            if i1 == inner:  # the pages of this stretch of both files will not be read again
                drop_pages(fd_x, job.vectors.offset + o0 * n * inner * xb.itemsize, (o1 - o0) * n * inner * xb.itemsize)
                drop_pages(output.fd, len(job.header) + o0 * m * inner * yb.itemsize, (o1 - o0) * m * inner * yb.itemsize)
            output.journal.block_done(k, loc)
            output.done.add(k)
            if bar is not None:
                bar.update(job.vectors_in(k))
    finally:
        os.close(fd_x)


def _check_unchanged(fd: int, f: NpyFile) -> None:
    st = os.fstat(fd)
    if (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns):
        raise RunFailed(f"{f.label} {f.path} changed while apply was starting; run it again")


def dask_read_block(block_info: Any = None, *, path: str, base: int, shape3: tuple, file_dtype: str) -> Any:
    """A block of VECTORS (as (outer, n, inner)), read on a Dask worker."""
    (o0, o1), _, (i0, i1) = block_info[None]["array-location"]
    buf = aligned_empty((o1 - o0, shape3[1], i1 - i0), file_dtype)
    fd = os.open(path, os.O_RDONLY)
    try:
        transfer_block(fd, base, tuple(shape3), (o0, o1, i0, i1), buf, write=False)
    finally:
        os.close(fd)
    return buf


def dask_write_block(y: Any, *, path: str, base: int, shape3: tuple, loc: tuple, index: int) -> int:
    """Write one result block into OUT.partial on a Dask worker, durably; returns its index.
    Idempotent: a retried task writes the same bytes to the same place."""
    import numpy as np

    y = np.ascontiguousarray(y)
    fd = os.open(path, os.O_WRONLY)
    try:
        transfer_block(fd, base, tuple(shape3), tuple(loc), y, write=True)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return index


def run_on_dask(job: Job, output: Output, pending: list[int], address: str, bar: Any) -> None:
    try:
        import dask.array as da
        from dask import delayed
        from dask.base import tokenize
        from distributed import Client, as_completed
    except ImportError as err:
        raise BadInput(f"--scheduler needs dask and distributed: pip install 'batchmv[dask]' ({err})") from None
    import numpy as np

    import batchmv

    try:
        client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as err:
        raise BadInput(f"cannot reach the Dask scheduler at {address}: {err}") from None
    with client:
        (ob, ib), (outer, n, inner) = job.block, job.shape3
        chunks = (_sizes(outer, ob), (n,), _sizes(inner, ib))
        x3 = da.map_blocks(
            dask_read_block, chunks=chunks, dtype=job.vectors.dtype, meta=np.empty((0, 0, 0), job.vectors.dtype),
            name="batchmv-read-" + tokenize(job.fingerprint["vectors"], job.vectors.path, job.block),
            path=os.path.abspath(job.vectors.path), base=job.vectors.offset, shape3=job.shape3,
            file_dtype=job.vectors.dtype.str,
        )  # fmt: skip
        y3 = batchmv.matvec(job.a, x3, axis=1, backend=job.engine)  # the Dask path: A enters the graph once
        parts = y3.to_delayed()
        writes = []
        for k in pending:
            bo, bi = divmod(k, job.grid[1])
            writes.append(
                delayed(dask_write_block, pure=False)(
                    parts[bo, 0, bi], path=output.partial, base=len(job.header), shape3=job.y_shape3,
                    loc=job.location(k), index=k,
                )  # fmt: skip
            )
        futures = client.compute(writes)
        try:
            for future in as_completed(futures, loop=client.loop):
                k = future.result()
                output.journal.block_done(k, job.location(k))
                output.done.add(k)
                if bar is not None:
                    bar.update(job.vectors_in(k))
        except (OSError, RunFailed, KeyboardInterrupt):
            raise
        except Exception as err:  # KilledWorker, a lost scheduler, ...: the finished blocks are kept
            raise RunFailed(
                f"the Dask computation failed ({type(err).__name__}: {err}); {len(output.done)} of {job.blocks} "
                f"blocks are done and kept in {output.partial}: rerun with --resume to continue"
            ) from None
        finally:
            client.cancel(futures)


def _sizes(total: int, step: int) -> tuple[int, ...]:
    return tuple(min(step, total - start) for start in range(0, total, step)) or (0,)
