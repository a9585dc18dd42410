"""Sparse A: ``y = op(A) @ x`` with A a sparse matrix (scipy.sparse, torch sparse layouts,
jax.experimental.sparse) and x dense, as one sparse-times-dense product (SpMM) per call.

A separate path from the dense stride schedule.  The library's kit (``_registry.SPARSE``)
does what is library-specific; here are the rules:

* A is multiplied in its own format, or, for op "T"/"H", in its transpose's (CSR^T is a
  CSC view of the same arrays).  A conversion (a format the library has no product for, a
  transpose that is not a view, values cast to the result dtype) is a copy of A: reported,
  refused by ``copy=False``.  A is never densified.
* x reaches the product as one 2-D view (n, k), its vectors in columns (x permuted so
  that its vector axis comes first, the batch axes flattened); where no such view exists or
  the library's product cannot read it, x is copied into one (reported).
* The adjoint conjugates x and y, never A: ``conj(A)^T x == conj(A^T conj(x))``.
* The result is a view of the product's (m, k) array with the vector axis back at ``axis``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple, Optional

from . import _arrays, _registry, _select, _sparse_kits
from ._checks import SEQUENCES, check_copy, check_shapes, op_shape, refuse_copies
from ._errors import CopyRequiredError
from ._plan import OperandView, Plan
from ._sparse_kit import SparseInfo

_OP_TEXT = {"N": "A", "T": "A^T", "H": "A^H", "C": "conj(A)"}


class SparseCall(NamedTuple):
    """One checked call with a sparse A, ready to plan or run."""

    home: Any  #: engine of the library that owns the result (x's)
    engine: Any  #: engine of the dense arrays the product takes
    kit: Any  #: the sparse kit that computes
    a: Any  #: A as the kit's sparse matrix (before the conversions listed in ``steps``)
    x: Any  #: x as the engine's array
    xc: Any  #: x as the (n, k) view the product reads, or None: x is copied into one (or not strided)
    out: Any
    axis: int
    dtype: Any  #: result dtype, in the engine's terms
    y_shape: tuple[int, ...]
    info: SparseInfo  #: A as it is computed
    steps: tuple[str, ...]  #: what is done to A before the product: "convert", "transpose", "cast"
    fmt: str  #: the format the product computes in, described
    conj: bool  #: x and y conjugated (op "H"/"C" on complex A)
    tracks_graph: bool
    copies: tuple[str, ...]
    notes: tuple[str, ...]
    temporaries: tuple[str, ...]
    op: str

    def report(self) -> Plan:
        """The plan of this call (:func:`batchmv._plan.describe` asks for it)."""
        return describe(self)

    @property
    def columns(self) -> int:
        """k: the number of vectors in x, the columns of the product's (n, k) view of x."""
        return _batch(self.engine.shape(self.x), self.axis)


def home_of(kit: Any, x: Any) -> str:
    """The library of the result: x's; for a Python sequence, the one of A's kit."""
    lib = _registry.library_of(x)
    if lib is not None:
        return lib
    if hasattr(x, "__dlpack__"):
        return _registry.DLPACK_HOME
    if isinstance(x, SEQUENCES):
        return kit.engine
    raise TypeError(
        f"x must be a dense array (numpy, torch, jax or cupy, or any object with __dlpack__) or a "
        f"Python sequence; got {type(x).__module__}.{type(x).__qualname__}"
    )


def refuse_sparse_x(x: Any) -> None:
    """TypeError for a sparse x: the vectors are dense, whatever A is."""
    kit = _sparse_kits.kit_of(x)
    if kit is not None:
        raise TypeError(
            f"x must be dense: batchmv multiplies A by dense vectors, and x is a {kit.name} sparse matrix "
            f"({kit.info(x).format}); densify it yourself (a copy) if that is what you mean"
        )


def build(
    kit: Any, a: Any, x: Any, axis: Any, out: Any, backend: Optional[str], copy: object, op: str = "N",
    engine_name: Optional[str] = None,
) -> SparseCall:
    """Check ``y = op(A) @ x`` for a sparse A (of ``kit``'s library) and decide everything
    about it; nothing is computed.  Raises TypeError for a sparse x, dtypes or engines the
    product cannot take, ValueError for shapes, CopyRequiredError with ``copy=False``."""
    allow_copy = check_copy(copy)
    refuse_sparse_x(x)
    copies: list[str] = []
    notes: list[str] = []
    home_name = home_of(kit, x)
    name = engine_name or _select.requested(backend)
    if name == "fastest":
        name = home_name
        notes.append(f"fastest: {home_name}, the home library's engine (batchmv measures no engines for a sparse A)")
    elif name == "auto":
        name = home_name
    home, engine = _registry.get_engine(home_name), _registry.get_engine(name)
    x_h = _arrays.to_home(x, "x", home, allow_copy, copies)
    x_e = x_h if engine is home else _arrays.share(engine, x_h, home, "x", allow_copy, copies)
    # (before A is looked at: torch's transforms refuse that too)
    if engine.strided and engine.in_transform(x_e, *((a,) if kit.engine == engine.name else ())):
        raise TypeError(f"a sparse A cannot be multiplied under a {engine.name} transform (vmap/grad of x or A)")
    kit_e, a_e = cross(kit, a, engine, allow_copy, copies)
    info = kit_e.info(a_e)
    ax, y_shape = check_shapes(op_shape(info.shape, op), engine.shape(x_e), axis)
    if info.device != engine.device(x_e):
        raise TypeError(f"A is on {info.device} and x on {engine.device(x_e)}; batchmv never moves data between devices")
    dtype = kit_e.result_dtype(a_e, x_e)
    kit_e.check_dtype(dtype)
    if out is not None:
        _arrays.check_out(home, out, y_shape, _home_dtype(engine, home, dtype, x_e), home.device(x_h))
        copies.append(f"out: {kit_e.kernel} returns a new array; the result is copied into out")

    steps, fmt = _operand_steps(kit_e, a_e, info, op, dtype, copies)
    conj = op in ("H", "C") and kit_e.is_complex(info.dtype)
    tracks = engine.tracks_graph(x_e) or kit_e.tracks_graph(a_e)
    if tracks and out is not None:
        raise ValueError("out= cannot be used when A or x requires grad: the result must stay in the autograd graph")
    xc, temporaries = None, []
    if kit_e.strided:
        xc, why = _columns_view(engine, kit_e, x_e, ax, dtype, fmt)
        if why:
            n, k = engine.shape(x_e)[ax], _batch(engine.shape(x_e), ax)
            copies.insert(0, f"x: copied into a C-ordered ({n}, {k}) array, vectors in columns: {why}")
        if conj:
            temporaries = [
                "x: its copy (above) is conjugated in place" if xc is None else
                f"x: conjugated into a new buffer of the vectors' size ({kit_e.name} has no conjugate flag); "
                "conj(A)^T x is computed as conj(A^T conj(x)), A is not copied",
                "y: conjugated in place after the product",
            ]  # fmt: skip
    elif conj:
        notes.append("the adjoint conjugates x and y inside the program, never A")
    refuse_copies(copies, allow_copy)
    if conj and xc is not None and not allow_copy:
        raise CopyRequiredError(f"copy=False, but this call needs a temporary: {temporaries[0]}. Pass copy=None to allow it")
    notes.extend(kit_e.notes(info))
    if engine is not home:  # (the product allocates y; jax, for one, wraps only 64-byte-aligned memory)
        notes.append(f"y: allocated by {kit_e.name}'s product, handed to {home.name} as it is where {home.name} can hold it, "
                     "else copied (a result-sized copy)")
    return SparseCall(
        home, engine, kit_e, a_e, x_e, xc, out, ax, dtype, y_shape, info, tuple(steps), fmt, conj, tracks,
        tuple(copies), tuple(notes), tuple(temporaries), op,
    )  # fmt: skip


def _batch(shape: tuple[int, ...], ax: int) -> int:
    return math.prod(s for i, s in enumerate(shape) if i != ax)


def _home_dtype(engine: Any, home: Any, dtype: Any, x_e: Any) -> Any:
    """The result dtype in the home library's terms (the engine's ``dtype``), for ``out``."""
    if engine is home:
        return dtype
    probe = engine.empty((1,), dtype, x_e)
    return home.dtype_of(home.adopt_result(probe, allow_copy=True, writable=False, source=engine)[0])


def _operand_steps(kit: Any, a: Any, info: SparseInfo, op: str, dtype: Any, copies: list[str]) -> tuple[list[str], str]:
    """What is done to A before the product (each a reported copy unless it is a view), and
    the format the product computes in, described."""
    steps, fmt = [], info.format
    if not kit.strided:  # one program: the transpose is the choice of A's contracted dimension
        return steps, (f"{fmt} (A^T: A's rows contracted, nothing transposed)" if op in ("T", "H") else fmt)
    converted = kit.conversion(a, op)
    if converted:
        steps.append("convert")
        copies.append(f"A: {converted}")
        fmt = kit.converted_format(a)
    transposed = None  # why A^T is a copy
    if op in ("T", "H"):
        steps.append("transpose")
        transposed = kit.transpose_copy(a) if not converted else None
        if transposed:
            copies.append(f"A: {transposed}")
        fmt = f"{kit.transposed_format(fmt)} (A^T: {'a copy' if transposed else 'a view of'} A's {fmt} arrays)"
    fresh = bool(converted or transposed or info.dtype != dtype)
    copies.extend(f"A: {why}" for why in kit.product_copies(a, fmt.split(" ")[0], fresh))
    if info.dtype != dtype:
        steps.append("cast")
        copies.append(f"A: values cast from {kit.dtype_name(info.dtype)} to the result dtype {kit.dtype_name(dtype)} (a copy of A)")
    return steps, fmt


def _columns_view(engine: Any, kit: Any, x: Any, ax: int, dtype: Any, fmt: str) -> tuple[Any, Optional[str]]:
    """(x as the (n, k) view the product reads, None) or (None, why x is copied into one);
    ``fmt``: the format the product computes in, described."""
    if engine.dtype_of(x) != dtype:
        return None, f"cast from {engine.dtype_name(x)} to the result dtype {dtype}"
    shape = engine.shape(x)
    perm = (ax, *(i for i in range(len(shape)) if i != ax))
    moved = engine.permute(x, perm) if perm != tuple(range(len(shape))) else x
    try:
        xc = engine.view(moved, (shape[ax], _batch(shape, ax)))
    except (ValueError, RuntimeError):  # numpy and torch: the batch axes cannot be viewed as one
        return None, "the batch axes of x cannot be viewed as one"
    if not kit.reads(xc, fmt.split(" ")[0]):
        return None, kit.layout_need
    return xc, None


def cross(kit: Any, a: Any, engine: Any, allow_copy: bool, copies: list[str]) -> tuple[Any, Any]:
    """(the kit of ``engine``'s library, A as its sparse matrix): A itself, or A's index and
    value arrays shared with that library (copies reported), as dense arrays cross."""
    if kit.engine == engine.name:
        return kit, a
    target = next((_sparse_kits.get(s.name) for s in _registry.SPARSE.values() if s.engine == engine.name), None)
    parts = kit.parts(a)
    if target is None or parts is None or not target.assembles:
        raise TypeError(
            f"the {engine.name} engine cannot take a {kit.name} sparse A ({kit.info(a).format}); use backend='{kit.engine}' "
            "(A's own engine: x is shared with it, and the result handed back to x's library)"
        )
    source = _registry.get_engine(kit.engine)
    names = ("row", "col", "data") if parts.format == "coo" else ("indptr", "indices", "data")
    arrays = tuple(
        _arrays.share(engine, arr, source, f"A's {label}", allow_copy, copies) for label, arr in zip(names, parts.arrays)
    )
    a_e, why = target.assemble(parts._replace(arrays=arrays))
    if why:
        copies.append(f"A: {why}")
        refuse_copies(copies, allow_copy)
    return target, a_e


def execute(call: SparseCall) -> Any:
    """Run a checked sparse call; the result (``out`` itself when given)."""
    kit, eng, a, x = call.kit, call.engine, call.a, call.x
    if "convert" in call.steps:
        a = kit.convert(a)
    if "transpose" in call.steps:
        a = kit.transpose(a)
    if "cast" in call.steps:
        a = kit.astype(a, call.dtype)
    if not kit.strided:
        y = kit.expression(a, x, call.axis, call.op)
    else:
        shape, ax = eng.shape(x), call.axis
        perm = (ax, *(i for i in range(len(shape)) if i != ax))
        xc = call.xc
        if xc is None:
            moved = eng.permute(x, perm) if perm != tuple(range(len(shape))) else x
            xc = eng.view(eng.c_order_copy(moved, call.dtype), (shape[ax], _batch(shape, ax)))
        if call.conj:
            xc = eng.conj_copy(xc) if call.xc is not None else eng.conj_inplace(xc, call.tracks_graph)
        yc = kit.spmm(a, xc)
        if call.conj:
            yc = eng.conj_inplace(yc, call.tracks_graph)
        if len(shape) != 2:  # (a 2-D x: the product's (m, k) is already the moved shape)
            yc = eng.view(yc, (call.y_shape[ax], *(shape[i] for i in perm[1:])))
        y = yc
        if perm != tuple(range(len(shape))):
            y = eng.permute(y, tuple(sorted(range(len(perm)), key=perm.__getitem__)))
    if call.engine is not call.home:  # (the plan's notes say so)
        y = call.home.adopt_result(y, allow_copy=True, writable=False, source=call.engine)[0]
    if call.out is None:
        return y
    call.home.assign(call.out, y)
    return call.out


def runner(call: SparseCall) -> Optional[Callable[[Any, Any], Any]]:
    """``run(A, x)``, which repeats ``call`` on any A and x whose layouts have the same keys
    (the kit's ``layout_key`` of A, the engine's of x): for a call on the engine of its home
    library, without ``out``, that converts nothing of A (its transpose a view).  x's
    copies and temporaries are made again by each run, as :func:`execute` makes them.  None
    for any other call."""
    kit, eng, a = call.kit, call.engine, call.a
    if eng is not call.home or call.out is not None or "convert" in call.steps or "cast" in call.steps:
        return None
    if "transpose" in call.steps and kit.transpose_copy(a) is not None:
        return None
    if not kit.strided:
        return kit.expression_runner(call)
    dtype, conj, copy_x = call.dtype, call.conj, call.xc is None
    shape, ax = eng.shape(call.x), call.axis
    vector = kit.vector_product(call) if call.columns == 1 and not (conj or copy_x) else None
    if vector is not None:  # one vector: x and y are viewed as 1-D whatever their shapes
        n, y_shape = (shape[ax],), call.y_shape
        view_v, view_y = shape != n, len(y_shape) != 1
        view = eng.known_view
        if not view_y:
            return (lambda a, x: vector(a, view(x, n))) if view_v else vector
        if not view_v:
            return lambda a, x: view(vector(a, x), y_shape)
        return lambda a, x: view(vector(a, view(x, n)), y_shape)
    product = kit.product(call)
    perm = (ax, *(i for i in range(len(shape)) if i != ax))
    permute = perm != tuple(range(len(shape)))
    nk = (shape[ax], call.columns)
    view_x = tuple(shape[i] for i in perm) != nk
    y_moved = (call.y_shape[ax], *(shape[i] for i in perm[1:]))
    view_y = y_moved != (call.y_shape[ax], nk[1])
    unperm = tuple(sorted(range(len(perm)), key=perm.__getitem__)) if permute else None
    if not (view_x or copy_x or conj or view_y):
        if not permute:
            return product  # x is the product's (n, k) view and its result is y
        if perm == (1, 0):  # vectors in the rows of a matrix: the product on x's transpose, transposed
            transpose = eng.permute
            return lambda a, x: transpose(product(a, transpose(x, perm)), perm)
    view = eng.known_view

    def run(a: Any, x: Any) -> Any:
        xc = eng.permute(x, perm) if permute else x
        if copy_x:
            xc = eng.c_order_copy(xc, dtype)
        if view_x:
            xc = view(xc, nk)
        if conj:
            tracked = eng.tracks_graph(x) or kit.tracks_graph(a)
            xc = eng.conj_inplace(xc, tracked) if copy_x else eng.conj_copy(xc)
        y = product(a, xc)
        if conj:
            y = eng.conj_inplace(y, tracked)
        if view_y:
            y = view(y, y_moved)
        return eng.permute(y, unperm) if permute else y

    return run


def describe(call: SparseCall) -> Plan:
    """The public report of a checked sparse call."""
    eng, info = call.engine, call.info
    x_shape = eng.shape(call.x)
    k, n, m = _batch(x_shape, call.axis), x_shape[call.axis], call.y_shape[call.axis]
    itemsize = eng.itemsize(eng.empty((1,), call.dtype, call.x))
    views: tuple[OperandView, ...] = ()
    if call.kit.strided:
        xc = call.xc
        views = (
            OperandView("Xc", (n, k), eng.strides(xc) if xc is not None else (k, 1), None,
                        eng.address(xc)[1] if xc is not None else None, "x" if xc is not None else "copy of x"),
            OperandView("Yc", (m, k), (k, 1), None, None, "y"),
        )  # fmt: skip
    return Plan(
        backend=eng.name, kernel="spmm", copies=call.copies, flops=2 * info.nnz * k,
        bytes=info.nbytes + itemsize * k * (n + m), home=call.home.name, dtype=str(call.dtype),
        views=views, notes=call.notes, op=call.op, temporaries=call.temporaries,
        gemm=f"Yc = {_OP_TEXT[call.op]} @ Xc ({call.kit.kernel}, A in {call.fmt})",
        nnz=info.nnz, format=call.fmt, index_dtype=str(info.index_dtype).removeprefix("torch."),
    )  # fmt: skip
