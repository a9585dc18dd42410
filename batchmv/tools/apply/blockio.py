"""Blocks in and out of files: ``pread`` into a buffer and ``pwrite`` from one.

No memory map, so no file-backed pages accumulate in the process; the pages of a stretch
that will not be read again are dropped from the page cache too.
"""

from __future__ import annotations

import os
from typing import Any

from .errors import RunFailed

def read_exact(fd: int, buf: Any, offset: int) -> None:
    """Fill the writable bytes-like ``buf`` from ``fd`` at ``offset``."""
    view = memoryview(buf).cast("B")
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise RunFailed(f"unexpected end of file at byte {offset + done:,}: did the file change during the run?")
        done += got


def write_exact(fd: int, buf: Any, offset: int) -> None:
    view = memoryview(buf).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def bytes_view(arr: Any) -> Any:
    import numpy as np

    return arr.reshape(-1, copy=False).view(np.uint8)  # never a copy: I/O goes straight to the array


def transfer_block(fd: int, base: int, shape3: tuple[int, int, int], loc: tuple[int, int, int, int], buf: Any, write: bool) -> None:
    """Read (or write) the block ``buf`` = arr3[o0:o1, :, i0:i1] of the C-order array ``arr3``
    (shape ``shape3``) stored at byte ``base`` of ``fd``: one contiguous range when the block
    spans the whole last axis, else one range per (o, j)."""
    outer, n, inner = shape3
    o0, o1, i0, i1 = loc
    size = buf.dtype.itemsize
    io = write_exact if write else read_exact
    if i0 == 0 and i1 == inner:
        io(fd, bytes_view(buf), base + o0 * n * inner * size)
        return
    for o in range(o0, o1):
        for j in range(n):
            io(fd, bytes_view(buf[o - o0, j]), base + ((o * n + j) * inner + i0) * size)


def drop_pages(fd: int, start: int, length: int) -> None:
    """Tell the kernel we are done with these pages (they leave the page cache, not our RSS:
    apply never maps files)."""
    if hasattr(os, "posix_fadvise") and length > 0:
        try:
            os.posix_fadvise(fd, start, length, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
