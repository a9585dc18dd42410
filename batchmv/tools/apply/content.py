"""Content digests: what ``--resume`` trusts.

A is identified by a digest of its data (it is read whole anyway).  Each finished block is
recorded in the journal with a digest of the bytes of VECTORS it was computed from and of
the bytes written for it into ``OUT.partial``.  ``--resume`` reads both regions again and
continues only if every finished block still matches: a VECTORS, an ``OUT.partial`` or a
journal changed in place (even with the same size and mtime) is never trusted, while the
blocks not yet finished are read from VECTORS as it is now.  So a resumed run gives the
bytes of an uninterrupted run on the files as they are.

SHA-256: hashlib's fastest here (about 1.5 GB/s with the CPU's SHA instructions, against
0.8 GB/s for BLAKE2b, on the AMD EPYC of ``benchmarks/README.md``).  During a run the two
digests of a block are computed in a second thread while this one writes and syncs the
block (hashlib releases the GIL), so they cost little wall time.
"""

from __future__ import annotations

import hashlib
import threading
from typing import TYPE_CHECKING, Any, Callable

from .blockio import bytes_view, transfer_block

if TYPE_CHECKING:
    from .job import Job

ALGORITHM = "sha256"


def digest(arr: Any) -> str:
    """The digest of the bytes of ``arr`` in C order, as they lie in the file (a block is
    C-contiguous, or a slice of one whose last axis is contiguous).

    >>> import numpy as np
    >>> x = np.arange(12, dtype="<i2").reshape(2, 3, 2)
    >>> digest(x[:, :, :1]) == digest(np.ascontiguousarray(x[:, :, :1]))
    True
    """
    h = hashlib.new(ALGORITHM)
    if arr.flags.c_contiguous:
        h.update(bytes_view(arr))
    else:
        for o in range(arr.shape[0]):
            for j in range(arr.shape[1]):
                h.update(bytes_view(arr[o, j]))
    return h.hexdigest()


class Background:
    """One call at a time in a second thread: start it, do other work, then ``result()``."""

    def __init__(self, call: Callable[[], Any]):
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self._result = call()
        except BaseException as err:  # noqa: BLE001 - handed to the waiting thread
            self._error = err

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


def changed_block(job: Job, partial_fd: int, done: dict[int, tuple[str, str]], x_full: Any, y_full: Any) -> str | None:
    """Why the finished blocks ``done`` (block: (VECTORS digest, OUT digest)) cannot be
    trusted, or None when every one matches; reads each region into the block buffers."""
    for k in sorted(done):
        o0, o1, i0, i1 = loc = job.location(k)
        xb, yb = x_full[: o1 - o0, :, : i1 - i0], y_full[: o1 - o0, :, : i1 - i0]
        transfer_block(job.vectors.fd, job.vectors.offset, job.shape3, loc, xb, write=False)
        if digest(xb) != done[k][0]:
            return f"VECTORS {job.vectors.path} changed since the interrupted run (block {k} differs from the journal's digest)"
        transfer_block(partial_fd, len(job.header), job.y_shape3, loc, yb, write=False)
        if digest(yb) != done[k][1]:
            return f"{job.out}.partial changed since it was written (block {k} differs from the journal's digest)"
    return None
