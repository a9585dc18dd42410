"""Where the blocks run: here, one after another, or as tasks of a Dask cluster.

Here: each block of VECTORS is read into one reusable buffer, multiplied by A with
:func:`batchmv.matvec` into a second reusable buffer, and written out.

With ``--scheduler ADDRESS`` the same blocks run on a Dask cluster through batchmv's Dask
path (A enters the graph once); the workers read VECTORS and write their blocks into
``OUT.partial`` themselves, so they must see the same files (same machine or a shared file
system; each checks it opened the very files this process checked), and the journal is
kept by this process as blocks finish.  The memory budget then
sizes the blocks, so it holds per running task.  Workers' BLAS may run with another number
of threads than a local run, so the last bits of a result can differ between the two ways;
the journal's fingerprint records which way ran, and a resumed run must use the same one.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Iterable

from batchmv._memory import aligned_empty

from .blockio import drop_pages, transfer_block
from .content import Background, digest
from .errors import BadInput, RunFailed
from .files import identity
from .job import Job
from .output import Output

CONNECT_TIMEOUT = 10  #: seconds to reach the Dask scheduler of --scheduler


def block_buffers(job: Job) -> tuple[Any, Any]:
    """The reusable buffers of a full block of VECTORS and of the result, each starting on a
    cache line, the same in every run and every process (none when there are no blocks)."""
    (ob, ib), n, m = job.block, job.shape3[1], job.y_shape3[1]
    ob, ib = (ob, ib) if job.blocks else (0, 0)
    return aligned_empty((ob, n, ib), job.vectors.dtype), aligned_empty((ob, m, ib), job.result_dtype)


def run_local(job: Job, output: Output, pending: Iterable[int], bar: Any, x_full: Any, y_full: Any) -> None:
    import batchmv

    (ob, ib), (outer, n, inner), m = job.block, job.shape3, job.y_shape3[1]
    fd_x = job.vectors.fd
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
        # the digests in two more threads while this one writes and syncs (all only read the
        # buffers; hashlib and the system calls release the GIL, and fdatasync mostly waits)
        x_digest, y_digest = Background(lambda xb=xb: digest(xb)), Background(lambda yb=yb: digest(yb))
        try:
            transfer_block(output.fd, len(job.header), job.y_shape3, loc, yb, write=True)
            os.fdatasync(output.fd)
        finally:  # the buffers are reused only once both are done
            block_digests = (x_digest.result(), y_digest.result())
        if i1 == inner:  # the pages of this stretch of both files will not be read again
            drop_pages(fd_x, job.vectors.offset + o0 * n * inner * xb.itemsize, (o1 - o0) * n * inner * xb.itemsize)
            drop_pages(output.fd, len(job.header) + o0 * m * inner * yb.itemsize, (o1 - o0) * m * inner * yb.itemsize)
        output.journal.block_done(k, loc, block_digests)
        output.done.add(k)
        if bar is not None:
            bar.update(job.vectors_in(k))


def _open_same(path: str, flags: int, device_inode: tuple) -> int:
    """Open ``path`` on a worker, without blocking or following a symlink, and check it is the
    very file this process checked (a worker might see another file by that name)."""
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    if identity(os.fstat(fd)) != tuple(device_inode):
        os.close(fd)
        raise RuntimeError(f"{path} on this worker is not the file batchmv apply checked")
    return fd


def dask_read_block(block_info: Any = None, *, path: str, base: int, shape3: tuple, file_dtype: str, device_inode: tuple) -> Any:
    """A block of VECTORS (as (outer, n, inner)), read on a Dask worker."""
    (o0, o1), _, (i0, i1) = block_info[None]["array-location"]
    buf = aligned_empty((o1 - o0, shape3[1], i1 - i0), file_dtype)
    fd = _open_same(path, os.O_RDONLY, device_inode)
    try:
        transfer_block(fd, base, tuple(shape3), (o0, o1, i0, i1), buf, write=False)
    finally:
        os.close(fd)
    return buf


def dask_write_block(y: Any, x: Any, *, path: str, base: int, shape3: tuple, loc: tuple, index: int,
                     device_inode: tuple) -> tuple[int, tuple[str, str]]:  # fmt: skip
    """Write one result block into OUT.partial on a Dask worker, durably; returns its index
    and the digests of its input ``x`` and result.  Idempotent: a retried task writes the
    same bytes to the same place."""
    import numpy as np

    y = np.ascontiguousarray(y)
    fd = _open_same(path, os.O_WRONLY, device_inode)
    try:
        transfer_block(fd, base, tuple(shape3), tuple(loc), y, write=True)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return index, (digest(np.ascontiguousarray(x)), digest(y))


def connect(address: str) -> Any:
    """A client of the Dask scheduler at ``address``, before any file is made; BadInput if
    it cannot be reached."""
    try:
        from distributed import Client
        from distributed.comm import get_address_host, parse_address
        from distributed.comm.registry import get_backend
    except ImportError as err:
        raise BadInput(f"--scheduler needs dask and distributed: pip install 'batchmv[dask]' ({err})") from None
    try:
        # the address first: a Client that fails on a bad one leaves a half-made object whose
        # __del__ prints a traceback 20 s later (a removed protocol also warns, on several lines)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            get_backend(parse_address(address)[0])
            get_address_host(address)
    except Exception as err:  # noqa: BLE001 - distributed's parsers raise ValueError, TypeError, warnings ...
        raise BadInput(f"--scheduler {address!r} is not a Dask scheduler address ({' '.join(str(err).split())})") from None
    try:
        return Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError, TypeError) as err:
        raise BadInput(f"cannot reach the Dask scheduler at {address}: {' '.join(str(err).split())}") from None


def run_on_dask(job: Job, output: Output, pending: Iterable[int], client: Any, bar: Any) -> None:
    import dask.array as da
    import numpy as np
    from dask import delayed
    from dask.base import tokenize
    from distributed import as_completed

    import batchmv

    (ob, ib), (outer, n, inner) = job.block, job.shape3
    chunks = (_sizes(outer, ob), (n,), _sizes(inner, ib))
    x3 = da.map_blocks(
        dask_read_block, chunks=chunks, dtype=job.vectors.dtype, meta=np.empty((0, 0, 0), job.vectors.dtype),
        name="batchmv-read-" + tokenize(job.fingerprint["vectors"], job.vectors.path, job.vectors.device_inode, job.block),
        path=os.path.abspath(job.vectors.path), base=job.vectors.offset, shape3=job.shape3,
        file_dtype=job.vectors.dtype.str, device_inode=job.vectors.device_inode,
    )  # fmt: skip
    y3 = batchmv.matvec(job.a, x3, axis=1, backend=job.engine)  # the Dask path: A enters the graph once
    parts, x_parts = y3.to_delayed(), x3.to_delayed()
    writes = []
    for k in pending:
        bo, bi = divmod(k, job.grid[1])
        writes.append(
            delayed(dask_write_block, pure=False)(
                parts[bo, 0, bi], x_parts[bo, 0, bi], path=output.partial, base=len(job.header),
                shape3=job.y_shape3, loc=job.location(k), index=k, device_inode=identity(output.stat),
            )  # fmt: skip
        )
    futures = client.compute(writes)
    try:
        for future in as_completed(futures, loop=client.loop):
            k, block_digests = future.result()
            output.journal.block_done(k, job.location(k), block_digests)
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
