"""The linear-operator side of a prepared operator: SciPy's ``LinearOperator`` protocol
(``shape``, ``dtype``, ``matvec``, ``rmatvec``, ``matmat``, ``rmatmat``, ``T``, ``H``,
``@``) and the registration of the operator class as a JAX pytree.

Nothing here imports SciPy or JAX.  SciPy's ``aslinearoperator`` (which every
``scipy.sparse.linalg`` solver calls on its operator argument) accepts any object with
``shape`` and ``matvec`` and takes ``rmatvec``, ``rmatmat`` and ``dtype`` from it;
:meth:`LinearOperatorMixin.aslinearoperator` imports SciPy when it is called, to pass
``matmat`` as well.  The JAX registration happens when an operator is prepared while
``jax`` is imported already (:func:`register_with_jax`): a jax array can only exist then,
so every operator that holds one is registered, and importing batchmv changes nothing in
JAX.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

_registered: set[type] = set()
_lock = threading.Lock()


def _shape(x: Any) -> tuple[int, ...]:
    """The shape of an array of any library, or of a Python sequence (as numpy sees it)."""
    shape = getattr(x, "shape", None)
    if shape is None:
        import numpy as np

        return np.shape(x)
    return tuple(shape)


class LinearOperatorMixin:
    """SciPy's ``LinearOperator`` interface on top of ``self(x, axis=...)``, ``shape``,
    ``T`` and ``H`` (the prepared operator, :class:`batchmv.MatVec`, provides them).

    Shapes follow SciPy: ``matvec`` takes (n,) or (n, 1) and returns (m,) or (m, 1);
    ``matmat`` takes (n, k), vectors in its COLUMNS, and returns (m, k); ``rmatvec`` and
    ``rmatmat`` are the same with the adjoint A^H (shape (n, m)).  Any other shape raises
    ValueError.  Every call is one batchmv call: one GEMM on
    views of A and x (``self.plan`` shows them), A never copied, the result in x's library;
    a result numpy holds read-only (jax's buffer, for a jax A) is copied, since SciPy's
    solvers write into it.  There is no operator algebra (``*``, ``+``, scaling, products
    of operators: TypeError); :meth:`aslinearoperator` gives SciPy's, which has it.
    """

    ndim = 2
    #: numpy defers ``ndarray @ op`` to :meth:`__rmatmul__` instead of making op an object array
    __array_ufunc__ = None

    def matvec(self, x: Any) -> Any:
        """``A @ x`` for one vector: x of shape (n,) or (n, 1)."""
        return self._vector(x, "matvec")

    def rmatvec(self, x: Any) -> Any:
        """``A^H @ x`` for one vector: x of shape (m,) or (m, 1)."""
        return self.H._vector(x, "rmatvec")

    def matmat(self, X: Any) -> Any:
        """``A @ X`` for X of shape (n, k) (vectors in columns): one GEMM, shape (m, k)."""
        return self._block(X, "matmat")

    def rmatmat(self, X: Any) -> Any:
        """``A^H @ X`` for X of shape (m, k): one GEMM, shape (n, k)."""
        return self.H._block(X, "rmatmat")

    def _vector(self, x: Any, name: str) -> Any:
        m, n = self.shape
        if _shape(x) not in ((n,), (n, 1)):
            raise ValueError(f"{name} takes x of shape ({n},) or ({n}, 1); got {_shape(x)}")
        return _writable(self(x, axis=0))

    def _block(self, X: Any, name: str) -> Any:
        m, n = self.shape
        shape = _shape(X)
        if len(shape) != 2 or shape[0] != n:
            raise ValueError(f"{name} takes X of shape ({n}, k), vectors in columns; got {shape}")
        return _writable(self(X, axis=0))

    def __matmul__(self, x: Any) -> Any:
        """``op @ x``: ``matvec`` for 1-D x, ``matmat`` for 2-D x; for more dimensions,
        numpy's matmul rule (a stack of (n, k) matrices: vectors along axis -2)."""
        if hasattr(x, "matvec") and not hasattr(x, "__array_namespace__"):
            _no_algebra()
        if not hasattr(x, "shape"):
            return NotImplemented
        ndim = len(x.shape)
        if ndim == 0:
            raise ValueError("op @ x: x must be at least 1-D (matmul does not take scalars)")
        return self.matvec(x) if ndim == 1 else self.matmat(x) if ndim == 2 else self(x, axis=-2)

    def __rmatmul__(self, x: Any) -> Any:
        """``x @ op`` = ``(op.T @ x.T).T``: the vectors along x's last axis, times A^T."""
        if hasattr(x, "matvec") and not hasattr(x, "__array_namespace__"):
            _no_algebra()
        if not hasattr(x, "shape"):
            return NotImplemented
        if len(x.shape) == 0:
            raise ValueError("x @ op: x must be at least 1-D (matmul does not take scalars)")
        return self.T(x, axis=-1)

    dot = __matmul__

    def __mul__(self, other: Any) -> Any:
        _no_algebra()

    __rmul__ = __add__ = __radd__ = __sub__ = __rsub__ = __truediv__ = __mul__

    def __neg__(self) -> Any:
        _no_algebra()

    def adjoint(self) -> Any:
        """The adjoint A^H (same as :attr:`H`; a view: A is not copied)."""
        return self.H

    def transpose(self) -> Any:
        """The transpose A^T (same as :attr:`T`; a view: A is not copied)."""
        return self.T

    def aslinearoperator(self) -> Any:
        """This operator as a ``scipy.sparse.linalg.LinearOperator`` with all four products
        (``scipy.sparse.linalg.aslinearoperator(op)`` takes ``matvec``, ``rmatvec`` and
        ``rmatmat`` but not ``matmat``, which it then computes one column at a time) and
        numpy's name of the dtype (SciPy refuses ``torch.float64``: a torch operator goes
        to SciPy's solvers this way, computing on their numpy vectors in place).  Imports
        SciPy (ImportError when it is not installed)."""
        from scipy.sparse.linalg import LinearOperator

        return LinearOperator(
            self.shape, matvec=self.matvec, rmatvec=self.rmatvec, matmat=self.matmat, rmatmat=self.rmatmat,
            dtype=_numpy_dtype(self.dtype),
        )  # fmt: skip


def _no_algebra() -> None:
    raise TypeError(
        "batchmv operators multiply arrays (op @ x, op(x)) and have no operator algebra (op * x, op + op2, "
        "2 * op, op @ op2): op.aslinearoperator() gives SciPy's LinearOperator, which has it"
    )


def _writable(y: Any) -> Any:
    """``y``, or a copy of it where numpy holds it read-only (another library's buffer:
    jax's): SciPy's solvers write into the vectors their operator returns (gmres)."""
    flags = getattr(y, "flags", None)
    return y.copy() if flags is not None and not getattr(flags, "writeable", True) else y


def _numpy_dtype(dtype: Any) -> Any:
    """numpy's dtype of the same name (SciPy's LinearOperator takes numpy dtypes only;
    ``torch.float32`` is ``float32``)."""
    import numpy as np

    try:
        return np.dtype(dtype)
    except TypeError:
        return np.dtype(str(dtype).removeprefix("torch."))


def register_with_jax(cls: type) -> None:
    """Make ``cls`` a JAX pytree node, once, when ``jax`` is imported already; otherwise
    nothing (no import of JAX).  ``cls`` provides ``_tree_flatten`` (children: A alone;
    auxiliary data: hashable settings) and ``_tree_unflatten``."""
    if cls in _registered:
        return
    jax = sys.modules.get("jax")
    tree_util = getattr(jax, "tree_util", None)
    if tree_util is None:
        return
    with _lock:
        if cls not in _registered:
            tree_util.register_pytree_node(cls, cls._tree_flatten, cls._tree_unflatten)
            _registered.add(cls)
