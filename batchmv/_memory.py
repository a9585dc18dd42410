"""Aligned allocation, the one rule for buffers another library must be able to wrap.

JAX's CPU client wraps foreign memory without a copy only at 64-byte alignment, and a
block buffer that starts on a cache line behaves the same in every run and process.
"""

from __future__ import annotations

import math
from typing import Any

#: Byte alignment of every buffer batchmv allocates for another library to wrap.
ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...] | int, dtype: Any, alignment: int = ALIGNMENT) -> Any:
    """An uninitialised C-ordered numpy array whose data starts at an ``alignment``-byte
    boundary.

    >>> import numpy as np
    >>> aligned_empty((3, 5), np.float32).ctypes.data % ALIGNMENT
    0
    """
    import numpy as np

    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    raw = np.empty(size + alignment, np.uint8)
    skip = -raw.ctypes.data % alignment
    # through a memoryview, so that the array's buffer starts at the aligned address
    return np.frombuffer(memoryview(raw)[skip : skip + size], dtype=dtype).reshape(shape)
