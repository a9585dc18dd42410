"""Prepared operators: :func:`prepare` checks A and shares it with its engine once; the
operator it returns is a linear operator (:mod:`batchmv._linop`): ``T``, ``H``, SciPy's
products, ``@``, and a JAX pytree whose one leaf is A."""

from __future__ import annotations

import functools
from typing import Any, Optional

from . import _arrays, _cache, _call, _linop, _registry, _run, _select, _sparse, _sparse_kits
from ._checks import ADJOINT_OF, TRANSPOSE_OF, check_copy, check_shapes, op_shape
from ._plan import Plan, describe

#: Kinds of call (layouts of x) a prepared operator remembers, at most.
_MAX_LAYOUTS = 64
_OP_NAMES = {"N": "A", "T": "A^T", "H": "A^H", "C": "conj(A)"}


class MatVec(_linop.LinearOperatorMixin):
    """``x -> op(A) @ x`` along an axis, for one fixed A (see :func:`prepare`): a linear
    operator of shape ``op(A).shape`` and dtype ``A.dtype`` (A's own library's dtype).

    The engine is chosen when the operator is prepared, and A is checked then, once.  A
    call on an array of the engine's own library, with no ``out``, that runs as one kernel
    without a copy is remembered per layout of x (``Engine.layout_key``: shape, strides,
    dtype, lazy bits); its repeats run that kernel directly: one dictionary look-up, the
    views and one GEMM (GEMV for one vector), on A's current memory.  Changing A's layout
    in place after ``prepare`` (torch's ``t_``/``resize_``/``set_``, numpy's ``A.shape =``)
    is not checked again: the library's own kernel then reads A as it is (and may copy
    it): prepare again instead.

    ``op.T`` and ``op.H`` are the transpose and the adjoint: operators on the same prepared
    A (nothing is copied; ``op.H.H is op``).  ``matvec``, ``rmatvec``, ``matmat``,
    ``rmatmat`` and ``@`` follow SciPy (:class:`batchmv._linop.LinearOperatorMixin`), so
    ``scipy.sparse.linalg`` solvers take the operator as it is.  When JAX is imported, the
    class is a JAX pytree: A is its leaf, the engine, ``copy`` and the op its static data,
    so ``jax.jit``, ``vmap`` and ``grad`` take operators as arguments.
    """

    def __init__(self, A: Any, *, backend: Optional[str] = None, copy: Optional[bool] = None) -> None:
        check_copy(copy)
        home_name, engine_name = _select.route(type(A), type(A), backend)
        if engine_name == "fastest":
            raise ValueError('prepare() needs a fixed engine; "fastest" measures each kind of call: use matvec')
        # check A, and share it with the engine (refusing what would lose its meaning)
        engine = _registry.get_engine(engine_name)
        home = _registry.get_engine(home_name)
        a_h = _arrays.to_home(A, "A", home, copy is None, [])
        shape = home.shape(a_h)
        check_shapes(shape, shape[-1:], -1)
        shared = a_h if engine is home else _arrays.share(engine, a_h, home, "A", copy is None, [])
        self._set(A, engine, shared, copy, "N", {})
        _linop.register_with_jax(type(self))

    def _set(self, A: Any, engine: Any, shared: Any, copy: Optional[bool], op: str, family: dict) -> None:
        self.A = A
        self.backend = engine.name
        self.copy = copy
        self.op = op  #: "N", "T", "H" or "C": this operator is op(A)
        self._engine = engine
        self._shared = shared
        self._runners = _cache.Runners(_MAX_LAYOUTS)
        self._remembered = self._runners.get
        self._layout_key = self._x_key(engine, shared)
        self._family = family  # the operators on this A, one per op (T and H return them)
        family[op] = self

    @staticmethod
    def _x_key(engine: Any, shared: Any) -> Any:
        """``key(x)``: the layouts a call on x is remembered under (None: not remembered).
        x's alone: A's layout is checked once, when it is prepared."""
        return engine.layout_key

    @property
    def _lazy_a(self) -> Any:
        """A as a lazy collection's adapter (dask) takes it: A itself."""
        return self.A

    def _with_op(self, op: str) -> MatVec:
        other = self._family.get(op)
        if other is None:
            other = object.__new__(type(self))
            other._set(self.A, self._engine, self._shared, self.copy, op, self._family)
        return other

    @property
    def T(self) -> MatVec:
        """The transpose A^T: the same prepared A, nothing copied."""
        return self._with_op(TRANSPOSE_OF[self.op])

    @property
    def H(self) -> MatVec:
        """The adjoint (conjugate transpose) A^H: the same prepared A, nothing copied."""
        return self._with_op(ADJOINT_OF[self.op])

    @property
    def shape(self) -> tuple[int, int]:
        """op(A)'s shape; ValueError for an A that is not a matrix (a stack of them, as
        ``jax.vmap`` returns operators: call them inside the ``vmap``)."""
        dims = tuple(getattr(self._shared, "shape", ()))
        if len(dims) != 2:
            raise ValueError(f"this operator holds an A of shape {dims}, not a matrix (a stack of operators has no shape)")
        return op_shape(self._engine.shape(self._shared), self.op)  # type: ignore[return-value]

    @property
    def dtype(self) -> Any:
        return self._engine.dtype_of(self._shared)

    def __repr__(self) -> str:
        try:
            shape = "shape ({}, {})".format(*self.shape)
        except (ValueError, TypeError):  # (what JAX builds: stacks, placeholders)
            shape = f"A {type(self._shared).__name__} of shape {getattr(self._shared, 'shape', '?')}"
        return f"<batchmv.MatVec {_OP_NAMES[self.op]}, {shape}, on the {self.backend} engine>"

    def __copy__(self) -> MatVec:
        return self  # (immutable: a copy would be another family, whose op.H.H is not the copy)

    def __reduce__(self) -> tuple:
        # A, the engine and the op: a new operator is prepared from them (the remembered
        # calls, which hold functions, are not pickled); an array-API library's own engine
        # has no name for backend=: the rules choose it again where the operator is loaded
        return _unpickle, (self.A, self._nameable, self.copy, self.op)

    def __call__(self, x: Any, *, axis: int = -1, out: Any = None) -> Any:
        """``matvec(A, x, axis=axis, out=out, op=self.op)`` on the prepared engine."""
        key = None
        if out is None and type(axis) is int:
            layout = self._layout_key(x)
            if layout is not None:
                key = (type(x), layout, axis)
                run = self._remembered(key)
                if run is not None:
                    try:
                        return run(self._shared, x)
                    except Exception:  # noqa: BLE001 - what the key leaves out (devices): the checks say
                        pass
        shared = self._shared
        adapter = _registry.adapter_for(type(x))
        if adapter is not None:  # a lazy collection (dask): its adapter takes the whole call
            return adapter.matvec(self._lazy_a, x, axis=axis, out=out, backend=self._nameable, copy=self.copy, op=self.op)
        tracer = _call.compiling_engine(self.A, x)
        if tracer is not None:  # two libraries under a compiler: this call runs eagerly, as matvec's
            return tracer.run_eagerly(self, x, axis=axis, out=out)
        call = self._build(x, axis, out)
        run = self._runners.remember(key, call, shared, x) if key is not None else None
        return run(shared, x) if run is not None else _run.execute(call)

    def plan(self, x: Any, *, axis: int = -1, out: Any = None) -> Plan:
        """What ``self(x, axis=axis, out=out)`` does, computing nothing."""
        adapter = _registry.adapter_for(type(x))
        if adapter is not None:
            return adapter.plan(self._lazy_a, x, axis=axis, out=out, backend=self._nameable, copy=self.copy, op=self.op)
        return describe(self._build(x, axis, out))

    def _build(self, x: Any, axis: int, out: Any) -> Any:
        a = self._shared if _registry.library_of(x) == self.backend else self.A
        return _call.build(a, x, axis, out, None, self.copy, op=self.op, engine=self.backend)

    @property
    def _nameable(self) -> Optional[str]:
        """The engine as ``backend=`` names it (None for an array-API library's own engine)."""
        return self.backend if self.backend in _registry.ENGINES else None

    # -- JAX pytree (registered by _linop.register_with_jax) ----------------------------------
    def _tree_flatten(self) -> tuple[tuple[Any], tuple]:
        return (self._shared,), (self.backend, self.copy, self.op)

    @classmethod
    def _tree_unflatten(cls, aux: tuple, children: tuple) -> MatVec:
        # (JAX passes any objects as leaves here, tracers and placeholders: nothing is checked)
        backend, copy, op = aux
        (leaf,) = children
        obj = object.__new__(cls)
        obj._set(leaf, _registry.get_engine(backend), leaf, copy, op, {})
        return obj


class SparseMatVec(MatVec):
    """:class:`MatVec` for a sparse A (scipy.sparse, torch sparse, jax BCOO/BCSR): the same
    operator API, each call one sparse-times-dense product (:mod:`batchmv._sparse`).  A call
    is remembered under the layouts of A (its kit's ``layout_key``: a sparse A can change in
    place) and x, as ``matvec`` remembers.  A is shared with the engine once, here: another
    library's engine gets A's index and value arrays."""

    def __init__(self, A: Any, kit: Any, *, backend: Optional[str] = None, copy: Optional[bool] = None) -> None:
        check_copy(copy)
        name = _select.requested(backend)
        if name == "fastest":
            raise ValueError('prepare() needs a fixed engine; "fastest" is not measured for a sparse A: use "auto"')
        engine = _registry.get_engine(kit.engine if name == "auto" else name)
        kit, shared = _sparse.cross(kit, A, engine, copy is None, [])
        kit.info(shared)  # (ValueError for a sparse A that is not a matrix)
        self._set(A, engine, shared, copy, "N", {})
        _linop.register_with_jax(type(self))

    @staticmethod
    def _x_key(engine: Any, shared: Any) -> Any:
        """A's layout with x's: a sparse A can change its layout in place (scipy's
        ``resize``, ``sum_duplicates``)."""
        return functools.partial(_cache.sparse_layouts, shared)

    @property
    def _lazy_a(self) -> Any:
        """A as shared with the engine (its index and value arrays in the engine's library)."""
        return self._shared

    def _build(self, x: Any, axis: int, out: Any) -> Any:
        return _call.build(self._shared, x, axis, out, None, self.copy, op=self.op, engine=self.backend)


def _unpickle(A: Any, backend: Optional[str], copy: Optional[bool], op: str) -> MatVec:
    return prepare(A, backend=backend, copy=copy)._with_op(op)


def prepare(A: Any, *, backend: Optional[str] = None, copy: Optional[bool] = None) -> MatVec:
    """Check ``A`` once and share it with its engine once; call the result like ``matvec``.

    For the time-series use: one matrix applied thousands of times to small batches, and
    for solvers: the result is a linear operator (:class:`MatVec`: ``op.T``, ``op.H``,
    ``matvec``/``rmatvec``/``matmat``/``rmatmat``, ``@``) that ``scipy.sparse.linalg``
    takes as it is (``lobpcg``, which calls a callable operator on column blocks, and
    SciPy with a torch operator: ``op.aslinearoperator()``), and a JAX pytree when JAX is
    imported.  A sparse A (scipy.sparse,
    torch sparse, jax BCOO/BCSR) gives a :class:`SparseMatVec`, the same API.  Raises what :func:`matvec`
    raises for A (ValueError when A is not 2-D, TypeError for arrays no engine takes,
    :class:`CopyRequiredError` with ``copy=False`` where sharing A with the engine needs a
    copy), and ValueError for ``backend="fastest"``.

    >>> import numpy as np, batchmv
    >>> op = batchmv.prepare(np.array([[1.0, 2.0], [3.0, 4.0]]))
    >>> op(np.array([[1.0, 0.0], [0.0, 1.0]])).tolist()
    [[1.0, 3.0], [2.0, 4.0]]
    >>> op.plan(np.ones(2)).kernel, op.plan(np.ones((5, 2))).kernel  # one vector: numpy's GEMV
    ('gemv', 'gemm')
    >>> op.T @ np.array([1.0, 0.0]), op.H.H is op, op.shape
    (array([1., 2.]), True, (2, 2))
    """
    kit = _sparse_kits.kit_of(A)
    if kit is not None:
        return SparseMatVec(A, kit, backend=backend, copy=copy)
    return MatVec(A, backend=backend, copy=copy)
