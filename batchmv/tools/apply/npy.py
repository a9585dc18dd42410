""".npy headers: reading and checking those of MATRIX and VECTORS, writing OUT's."""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from typing import Any

from .errors import BadInput

#: dtype kinds apply computes with: bool, signed and unsigned int, float, complex
NUMERIC_KINDS = frozenset("biufc")


@dataclass
class NpyFile:
    label: str
    path: str
    shape: tuple[int, ...]
    dtype: Any
    fortran: bool
    offset: int  #: where the data starts
    size: int  #: of the file
    mtime_ns: int
    device_inode: tuple[int, int]

    def fingerprint(self) -> dict:
        return {
            "shape": list(self.shape), "dtype": self.dtype.str, "fortran_order": self.fortran,
            "data_offset": self.offset, "size": self.size, "mtime_ns": self.mtime_ns,
        }  # fmt: skip


def read_header(path: str, label: str) -> NpyFile:
    """The header of a .npy file, checked: BadInput for anything apply cannot stream."""
    import numpy as np

    where = f"{label} {path}"
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise BadInput(f"{where}: no such file") from None
    except OSError as err:
        raise BadInput(f"{where}: cannot read it: {err.strerror or err}") from None
    with f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(f"{where}: not a regular file")
        try:
            version = np.lib.format.read_magic(f)
        except (ValueError, OSError):
            raise BadInput(f"{where}: not a .npy file (it does not start with the NumPy magic string)") from None
        try:
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                shape, fortran, dtype = np.lib.format._read_array_header(f, version)
        except (ValueError, OSError, SyntaxError) as err:
            raise BadInput(f"{where}: damaged .npy header ({err})") from None
        offset = f.tell()
    if dtype.hasobject:
        raise BadInput(f"{where}: dtype {dtype} holds Python objects (pickled data); apply needs a numeric dtype")
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise BadInput(f"{where}: dtype {dtype.str} ({dtype}) is not numeric; apply needs bool, int, float or complex")
    expected = math.prod(shape) * dtype.itemsize
    if st.st_size - offset < expected:
        raise BadInput(
            f"{where}: truncated: its header announces {shape} {dtype} ({expected:,} bytes of data) but the file "
            f"holds {max(st.st_size - offset, 0):,}"
        )
    return NpyFile(label, path, tuple(shape), dtype, bool(fortran), offset, st.st_size, st.st_mtime_ns, (st.st_dev, st.st_ino))


def header(shape: tuple[int, ...], dtype: Any, fortran: bool) -> bytes:
    """The header numpy.save writes for an array of this shape, dtype and order.

    >>> import numpy as np
    >>> header((2, 3), np.dtype("<f4"), False)[:10]
    b'\\x93NUMPY\\x01\\x00v\\x00'
    """
    import io

    import numpy as np

    d = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran, "shape": tuple(shape)}
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, d)
    except ValueError:  # more than 65535 bytes of header: format 2.0, as numpy.save does
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, d)
    return buf.getvalue()
