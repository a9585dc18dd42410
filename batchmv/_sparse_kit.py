"""What a library's sparse matrices must offer batchmv (:class:`SparseKit`), and the
description of one sparse A (:class:`SparseInfo`).  Each library's kit lives beside its
engine (``batchmv.backends._sparse_<library>``); :mod:`batchmv._sparse` uses them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Optional


class SparseInfo(NamedTuple):
    """One sparse matrix, as the plan reports it."""

    format: str  #: "csr", "csc", "coo", "bsr", "bsc", "bcoo", "bcsr", ...
    shape: tuple[int, int]
    nnz: int  #: stored entries: explicit zeros and (COO) duplicates included
    index_dtype: Any  #: dtype of the index arrays (the library's object: int32 or int64), None without any
    dtype: Any  #: dtype of the values, in the engine's terms
    nbytes: int  #: bytes of the values and index arrays together
    device: str


class Parts(NamedTuple):
    """A compressed (CSR/CSC/BSR) or COO matrix as its arrays, for crossing libraries.

    csr/csc/bsr: ``arrays = (indptr, indices, data)``; coo: ``(row, col, data)``; data of
    a bsr matrix has shape (nnz blocks, R, C)."""

    format: str
    shape: tuple[int, int]
    arrays: tuple[Any, Any, Any]
    canonical: bool = False  #: coo: sorted by row, then column, without duplicates (coalesced)


class SparseKit:
    """The sparse operations of one library.  The conversions come in pairs: a question
    (``conversion``, ``transpose_copy``: None, or why the step copies A) that the plan asks
    without computing, and the step itself, which only a run takes."""

    name: str = ""  #: the library ("scipy", "torch", "jax")
    engine: str = ""  #: the engine whose dense arrays the product takes and returns
    #: True: x reaches :meth:`spmm` as a 2-D view (n, k), vectors in columns; False: the kit's
    #: :meth:`expression` takes x and the axis as they are (no strides to read)
    strided: bool = True
    kernel: str = ""  #: the library's function that runs the product, for the plan
    layout_need: str = ""  #: what :meth:`reads` asks of x's (n, k) view, for the plan
    assembles: bool = False  #: whether :meth:`assemble` takes another library's arrays

    def is_sparse(self, a: Any) -> bool:
        """Whether ``a``, of one of the library's sparse types, is a sparse matrix."""
        return True

    def info(self, a: Any) -> SparseInfo:
        raise NotImplementedError

    def notes(self, info: SparseInfo) -> tuple[str, ...]:
        """What the plan says about the product on a matrix like this one."""
        return ()

    # -- dtypes ---------------------------------------------------------------------------
    def result_dtype(self, a: Any, x: Any) -> Any:
        raise NotImplementedError

    def check_dtype(self, dtype: Any) -> None:
        """TypeError for a result dtype the library's product does not compute."""
        raise NotImplementedError

    def is_complex(self, dtype: Any) -> bool:
        raise NotImplementedError

    def dtype_name(self, dtype: Any) -> str:
        return str(dtype)

    def astype(self, a: Any, dtype: Any) -> Any:
        """A with its values cast to ``dtype`` (a copy)."""
        raise NotImplementedError

    # -- the operand ----------------------------------------------------------------------
    def conversion(self, a: Any, op: str = "N") -> Optional[str]:
        """None when the product takes A's format (for op "T"/"H": when it takes A^T's,
        which :meth:`transpose_copy` answers for), else why A is converted (a copy)."""
        return None

    def converted_format(self, a: Any) -> str:
        raise NotImplementedError

    def convert(self, a: Any) -> Any:
        raise NotImplementedError

    def product_copies(self, a: Any, fmt: str, fresh: bool = False) -> tuple[str, ...]:
        """What the library's product copies of A by itself on every call, computing in
        format ``fmt`` (of op(A), after the steps), each said as a copy of A.  ``fresh``: A's
        arrays reach the product as new ones, made by a reported step (a conversion, a
        transposing copy, a cast), not as they are stored."""
        return ()

    def transposed_format(self, fmt: str) -> str:
        raise NotImplementedError

    def transpose_copy(self, a: Any) -> Optional[str]:
        """None when A^T is a view of A's arrays that the product reads as it is, else why
        it is a copy (made by the kit's :meth:`transpose`, or by the library's product)."""
        return None

    def transpose(self, a: Any) -> Any:
        raise NotImplementedError

    # -- the product ----------------------------------------------------------------------
    def reads(self, xc: Any, fmt: str) -> bool:
        """Whether :meth:`spmm` reads this (n, k) view of x in place when it computes in
        format ``fmt`` (of op(A), after the steps: "csr", "coo", ...)."""
        return True

    def spmm(self, a: Any, xc: Any) -> Any:
        """``A @ xc``: one sparse-times-dense product, a new dense (m, k) array."""
        raise NotImplementedError

    def expression(self, a: Any, x: Any, axis: int, op: str) -> Any:
        """``op(A) @ x`` along ``axis`` for a kit that is not strided."""
        raise NotImplementedError

    def tracks_graph(self, a: Any) -> bool:
        """Whether A's values are part of an autograd graph."""
        return False

    # -- remembered calls (batchmv._cache) -------------------------------------------------
    def layout_key(self, a: Any) -> Optional[tuple]:
        """What a repeated product on A depends on besides its values (shape, the dtypes
        of its values and indices, format flags; the type is keyed apart), hashable; None
        when calls on A are not remembered (tracers, arrays under a compiler)."""
        return None

    def layout_keys(self, a: Any, x: Any, engine: Any) -> Optional[tuple]:
        """(:meth:`layout_key` of A, ``engine.layout_key`` of x), x an array of this kit's
        engine; None when either is None."""
        layout_a = self.layout_key(a)
        if layout_a is None:
            return None
        layout_x = engine.layout_key(x)
        return None if layout_x is None else (layout_a, layout_x)

    def product(self, call: Any) -> Callable[[Any, Any], Any]:
        """Strided kits: ``f(a, xc)``, the product of a remembered call
        (:class:`batchmv._sparse.SparseCall` without conversions of A): ``op(A) @ xc`` for
        op "N" ("T" and "H": A^T, a view of A's arrays), on A's arrays as they are at each
        call.  By default the steps :func:`batchmv._sparse.execute` takes."""
        if call.op in ("T", "H"):
            return lambda a, xc: self.spmm(self.transpose(a), xc)
        return self.spmm

    def vector_product(self, call: Any) -> Optional[Callable[[Any, Any], Any]]:
        """Strided kits, a call on one vector without conjugation: ``f(a, v)``, ``op(A) @ v``
        for a 1-D v of length n, a new 1-D array, by the library's sparse matrix-vector
        kernel; None where the library has none faster than :meth:`product`."""
        return None

    def expression_runner(self, call: Any) -> Callable[[Any, Any], Any]:
        """Kits that are not strided: ``f(a, x)``, the whole result of a remembered call."""
        return lambda a, x: self.expression(a, x, call.axis, call.op)

    # -- crossing libraries ---------------------------------------------------------------
    def parts(self, a: Any) -> Optional[Parts]:
        """A's arrays, shared, for another library (None: this kit cannot give them)."""
        return None

    def assemble(self, parts: Parts) -> tuple[Any, Optional[str]]:
        """(a sparse matrix of this library on ``parts`` -- arrays of this kit's engine --,
        None or why it copies some of them)."""
        raise NotImplementedError
