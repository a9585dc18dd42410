""".npy headers: reading and checking those of MATRIX and VECTORS, writing OUT's.

Headers are parsed by numpy's public functions (``read_magic``, ``read_array_header_1_0``,
``read_array_header_2_0``) from a bounded copy of the file's first bytes, so that a header
that announces gigabytes is never read; then everything it says is checked, since numpy's
parser accepts some things apply cannot stream (bool or negative shape entries).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from typing import Any

from .errors import BadInput
from .files import identity, open_input

#: dtype kinds apply computes with: bool, signed and unsigned int, float, complex
NUMERIC_KINDS = frozenset("biufc")
#: numpy's own limit on the length of a header it reads (``max_header_size``), and the most
#: bytes apply reads to find one: the magic string, the version, the length field, the header
MAX_HEADER = 10_000
_PREFIX = 12 + MAX_HEADER
MAX_DIMS = 64  #: numpy's NPY_MAXDIMS


@dataclass
class NpyFile:
    label: str
    path: str
    shape: tuple[int, ...]
    dtype: Any
    fortran: bool
    offset: int  #: where the data starts
    device_inode: tuple[int, int]
    fd: int = -1  #: open read-only from the header check on: the file checked is the file read

    def fingerprint(self) -> dict:
        """What identifies the file in the journal (its content: :mod:`.content`)."""
        return {"shape": list(self.shape), "dtype": self.dtype.str, "fortran_order": self.fortran, "data_offset": self.offset}

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _parse(prefix: bytes) -> tuple[tuple[int, int], Any, Any, Any, int]:
    """(version, shape, fortran_order, dtype, data offset) as numpy's public readers see them."""
    import numpy as np

    f = io.BytesIO(prefix)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=MAX_HEADER)
    elif version in ((2, 0), (3, 0)):
        # 3.0 differs from 2.0 only in the header's encoding (UTF-8 instead of latin-1), and
        # only non-ASCII field names of structured dtypes need it: a numeric header is ASCII,
        # the same bytes in both.  A non-ASCII one comes out as a non-numeric dtype or an error.
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=MAX_HEADER)
    else:
        raise BadInput(f"unsupported .npy format version {version[0]}.{version[1]} (numpy writes 1.0, 2.0 and 3.0)")
    return version, shape, fortran, dtype, f.tell()


def read_header(path: str, label: str) -> NpyFile:
    """The header of a .npy file, checked; the file stays open (``fd``).  BadInput for
    anything apply cannot stream."""
    where = f"{label} {path}"
    fd, st = open_input(path, where)
    try:
        prefix = os.pread(fd, _PREFIX, 0)
        if not prefix.startswith(b"\x93NUMPY") or len(prefix) < 10:
            raise BadInput(f"{where}: not a .npy file (it does not start with the NumPy magic string)")
        try:
            version, shape, fortran, dtype, offset = _parse(prefix)
        except BadInput as err:
            raise BadInput(f"{where}: {err}") from None
        except Exception as err:  # noqa: BLE001 - numpy's parser of hostile bytes raises
            # ValueError, SyntaxError, tokenize.TokenError, RecursionError, MemoryError ...:
            # whatever it is, the header is damaged, and that is one line, not a traceback
            raise BadInput(f"{where}: damaged .npy header ({type(err).__name__}: {_short(err)})") from None
        _check(where, shape, fortran, dtype, offset, st.st_size)
        return NpyFile(label, path, tuple(shape), dtype, bool(fortran), offset, identity(st), fd)
    except BaseException:
        os.close(fd)
        raise


def _short(what: object) -> str:
    """``what`` as text on one line, cut to 160 characters (a hostile header can be long)."""
    text = " ".join(str(what).split()) if len(str(what)) < 10_000 else str(what)[:200]
    return text if len(text) <= 160 else text[:157] + "..."


def _amount(size: int) -> str:
    # (Python refuses to print integers of over 4300 digits, which a header can announce)
    return f"{size:,}" if size < 2**64 else "more than 2**64"


def _check(where: str, shape: Any, fortran: Any, dtype: Any, offset: int, size: int) -> None:
    """What the header says, as apply needs it: a tuple of at most 64 non-negative ints (not
    bools), a bool order, a numeric dtype, and data that fits in the file."""
    if not isinstance(shape, tuple) or any(type(s) is not int or s < 0 for s in shape):
        raise BadInput(f"{where}: damaged .npy header: the shape {_short(shape)} is not a tuple of non-negative integers")
    if len(shape) > MAX_DIMS:
        raise BadInput(f"{where}: damaged .npy header: {len(shape)} dimensions (numpy allows at most {MAX_DIMS})")
    if type(fortran) is not bool:
        raise BadInput(f"{where}: damaged .npy header: fortran_order is {fortran!r}, not True or False")
    if dtype.hasobject:
        raise BadInput(f"{where}: dtype {dtype} holds Python objects (pickled data); apply needs a numeric dtype")
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise BadInput(f"{where}: dtype {dtype.str} ({dtype}) is not numeric; apply needs bool, int, float or complex")
    expected = math.prod(shape) * dtype.itemsize
    if size - offset < expected:
        shown = f"{len(shape)}-D" if max(shape, default=0) >= 2**64 or len(shape) > 8 else str(shape)
        raise BadInput(
            f"{where}: truncated: its header announces {shown} {dtype} ({_amount(expected)} bytes of data) but the file "
            f"holds {max(size - offset, 0):,}"
        )


def header(shape: tuple[int, ...], dtype: Any, fortran: bool) -> bytes:
    """The header numpy.save writes for an array of this shape, dtype and order.

    >>> import numpy as np
    >>> header((2, 3), np.dtype("<f4"), False)[:10]
    b'\\x93NUMPY\\x01\\x00v\\x00'
    """
    import numpy as np

    d = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran, "shape": tuple(shape)}
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, d)
    except ValueError:  # more than 65535 bytes of header: format 2.0, as numpy.save does
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, d)
    return buf.getvalue()
