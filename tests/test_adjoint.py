"""``y = A^T x`` and ``y = A^H x`` (issue 12): values, adjoint identities, and no copy of A.

* ``test_op_layouts`` / ``test_op_dtypes``: the pattern of test_matrix.py for op "T" and
  "H": every A layout x x layout x batch x axis (complex128, where the conjugate shows),
  and every dtype on fewer layouts, for every (home library, engine) pair, against an
  independent float64/complex128 numpy reference.
* ``test_adjoint_identity``: ``<A x, y> == <x, A^H y>`` to the dtype's tolerance.
* No copy of A, each check with a positive control that fails on a real copy: the A
  operand the engine's GEMM receives lies in A's memory (numpy, torch); numpy's
  allocations (tracemalloc) stay below A's size; torch's allocations (the profiler, which
  sees the copies torch.mm makes inside its kernel) include no copy of A, and batchmv's
  rule for when torch.mm keeps the conjugate flag agrees with what torch does; the
  compiled XLA program holds no conjugated or transposed A.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

import batchmv
import support
from batchmv import _registry
from test_matrix import A_LAYOUTS, AXES, X_LAYOUTS, M, N, _pair_cases, make_a, make_x, valid

OPS = ("T", "H")
BATCHES = {"none": (), "one": (7,), "several": (3, 4, 2)}
DTYPES = ("float32", "float64", "complex64", "complex128", "int32", "int64", "float16", "bfloat16")


def op_matrix(A, op: str) -> np.ndarray:
    """op(A) in float64/complex128 numpy (a copy, for the reference only)."""
    a = support.to_numpy(A)
    return a.T if op == "T" else a.conj().T if op == "H" else a


def x_shape(batch: str, axis_kind: str, k: int) -> tuple[tuple[int, ...], int]:
    dims = BATCHES[batch]
    pos = {"last": len(dims), "first": 0, "middle": 1}[axis_kind]
    shape = dims[:pos] + (k,) + dims[pos:]
    return shape, {"last": -1, "first": 0, "middle": pos - len(shape)}[axis_kind]


def run_case(home, engine, dtype, a_layout, x_layout, batch, axis_kind, op, out_kind="none", seed=0):
    rng = np.random.default_rng(seed)
    a_root, a_view = make_a(a_layout, rng, dtype)
    (A,) = support.in_lib(a_root, [a_view], home, dtype)
    shape, axis = x_shape(batch, axis_kind, M)  # op(A) is (N, M): vectors of length M
    x_root, x_view = make_x(x_layout, shape, axis, rng, dtype)
    (x,) = support.in_lib(x_root, [x_view], home, dtype)
    y_shape = tuple(N if i == axis % len(shape) else s for i, s in enumerate(shape))
    ref = support.reference(op_matrix(A, op), x, axis)
    scale = support.magnitude(op_matrix(A, op), x, axis)
    a_before, x_before = support.to_numpy(A), support.to_numpy(x)
    out = None
    if out_kind == "contiguous":
        out = support.to_lib(np.zeros(y_shape), home, dtype)
    elif out_kind == "strided":
        out_root = np.zeros(tuple(2 * s for s in y_shape))
        out = support.in_lib(out_root, [out_root[tuple(slice(None, None, 2) for _ in y_shape)]], home, dtype)[0]
    if engine == "numpy" and dtype == "bfloat16":
        with pytest.raises(TypeError, match="bfloat16"):
            batchmv.matvec(A, x, axis=axis, backend=engine, op=op)
        return
    y = batchmv.matvec(A, x, axis=axis, out=out, backend=engine, op=op)
    assert support.library_of_array(y) == home
    assert tuple(y.shape) == y_shape
    assert support.dtype_name(y.dtype) == dtype
    if out is not None:
        assert y is out
    support.assert_matvec_close(y, ref, scale, M, dtype)
    np.testing.assert_array_equal(support.to_numpy(A), a_before, err_msg="A was modified")
    np.testing.assert_array_equal(support.to_numpy(x), x_before, err_msg="x was modified")
    if op == "H":  # rmatvec is matvec with op="H"
        support.assert_matvec_close(batchmv.rmatvec(A, x, axis=axis, backend=engine), ref, scale, M, dtype)


ARGS = "home, engine, dtype, a_layout, x_layout, batch, axis_kind, op, out_kind"


def _layout_cases(home, engine):
    outs = ("none", "contiguous", "strided") if home == engine and home != "jax" else ("none",)  # (jax: immutable)
    for a_layout, x_layout, batch, axis_kind, op, out_kind in itertools.product(
        A_LAYOUTS, X_LAYOUTS, BATCHES, AXES, OPS, outs
    ):
        if valid(home, a_layout, x_layout, batch, axis_kind, out_kind) and (out_kind == "none" or batch == "several"):
            yield ("complex128", a_layout, x_layout, batch, axis_kind, op, out_kind)


@pytest.mark.parametrize(ARGS, _pair_cases(_layout_cases))
def test_op_layouts(home, engine, dtype, a_layout, x_layout, batch, axis_kind, op, out_kind):
    run_case(home, engine, dtype, a_layout, x_layout, batch, axis_kind, op, out_kind)


def _dtype_cases(home, engine):
    for dtype in DTYPES:
        if dtype == "bfloat16" and home != "torch" or dtype == "float16" and home in support.ARRAY_API_ONLY:
            continue  # (the array API standard has no float16)
        for a_layout, x_layout, axis_kind in itertools.product(("C", "F", "sliced"), ("contiguous", "permuted"), AXES):
            for op in OPS:
                if valid(home, a_layout, x_layout, "several", axis_kind):
                    yield (dtype, a_layout, x_layout, "several", axis_kind, op, "none")


@pytest.mark.parametrize(ARGS, _pair_cases(_dtype_cases))
def test_op_dtypes(home, engine, dtype, a_layout, x_layout, batch, axis_kind, op, out_kind):
    run_case(home, engine, dtype, a_layout, x_layout, batch, axis_kind, op, out_kind, seed=1)


def test_op_cases_cover_every_pair():
    ids = [p.id for p in _pair_cases(_layout_cases) if not p.marks]
    for home, engine in itertools.product(support.testable(), repeat=2):
        if not support.cross_device_reason(home, engine):
            assert any(i.startswith(f"{home}-on-{engine}-") for i in ids)


@pytest.mark.parametrize("dtype", ("float32", "float64", "complex64", "complex128"))
def test_adjoint_identity(xp_name, dtype):
    """<A x, y> == <x, A^H y> (and A^T: <A x, y>_bilinear == <x, A^T y>_bilinear)."""
    rng = np.random.default_rng(7)
    m, n = 37, 23
    A = support.to_lib(support.random_values(rng, (m, n), dtype), xp_name)
    x = support.to_lib(support.random_values(rng, (5, n), dtype), xp_name)
    y = support.to_lib(support.random_values(rng, (5, m), dtype), xp_name)
    ax = support.to_numpy(batchmv.matvec(A, x))
    ahy = support.to_numpy(batchmv.rmatvec(A, y))
    aty = support.to_numpy(batchmv.matvec(A, y, op="T"))
    x64, y64 = support.to_numpy(x), support.to_numpy(y)
    lhs, rhs = np.sum(np.conj(y64) * ax, axis=-1), np.sum(np.conj(ahy) * x64, axis=-1)
    bound = 10 * (m + n) * support.FLOAT_EPS[dtype] * np.linalg.norm(support.to_numpy(A)) * (
        np.linalg.norm(x64, axis=-1) * np.linalg.norm(y64, axis=-1)
    )
    assert np.all(np.abs(lhs - rhs) <= bound), (lhs, rhs)
    assert np.all(np.abs(np.sum(y64 * ax, axis=-1) - np.sum(aty * x64, axis=-1)) <= bound)
    if dtype.startswith("complex"):  # the conjugate matters: A^T y differs from A^H y
        assert not np.allclose(ahy, aty)


def test_op_errors():
    A, x = np.ones((3, 4)), np.ones((2, 3))
    with pytest.raises(ValueError, match="op must be"):
        batchmv.matvec(A, x, op="C")  # conj(A) alone is reached through MatVec.T.H only
    with pytest.raises(ValueError, match="op must be"):
        batchmv.plan(A, x, op="h")
    with pytest.raises(TypeError, match="op must be a string"):
        batchmv.matvec(A, x, op=None)
    with pytest.raises(ValueError, match="x.shape\\[axis\\] must equal n"):
        batchmv.rmatvec(A, np.ones((2, 4)))  # A^H is (4, 3): vectors of length 3


# ---------------------------------------------------------------------------------------
# no copy of A
# ---------------------------------------------------------------------------------------
NO_COPY_A = ("C", "F", "transposed", "sliced")


def a_view(name: str, m: int, n: int, dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if name == "C":
        return support.random_values(rng, (m, n), dtype)
    if name == "F":
        return support.random_values(rng, (n, m), dtype).T
    if name == "transposed":
        return support.random_values(rng, (n + 1, m + 3), dtype)[1:, 2 : m + 2].T
    if name == "sliced":
        return support.random_values(rng, (m + 2, n + 5), dtype)[1 : m + 1, 3 : n + 3]
    if name == "every-other":
        return support.random_values(rng, (2 * m, 2 * n), dtype)[::2, ::2]
    raise ValueError(name)


class GemmRecorder:
    """Records the byte ranges an engine's kernels receive (GEMMs and GEMVs:
    :func:`support.record_kernels`) and their conjugate flag."""

    def __init__(self, engine_name, monkeypatch):
        self.calls: list[dict] = []

        def note(kind, x2, a, out, conj):
            self.calls.append({"a": support.byte_range(a), "conj": conj, "x2": support.byte_range(x2)})

        support.record_kernels(_registry.get_engine(engine_name), monkeypatch, note)


def within(inner, outer) -> bool:
    return outer[0] <= inner[0] and inner[1] <= outer[1]


strided_engines = [p for p in support.lib_params() if p.values[0] in ("numpy", "torch")]


@pytest.mark.parametrize("engine_name", strided_engines)
@pytest.mark.parametrize("a_name", NO_COPY_A)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", ("float64", "complex128"))
@pytest.mark.parametrize("axis", (-1, 0))
def test_gemm_reads_a_in_place(engine_name, a_name, op, dtype, axis, monkeypatch):
    A = support.to_lib(a_view(a_name, 9, 11, dtype), engine_name)
    x = support.to_lib(support.random_values(np.random.default_rng(1), (40, 9) if axis == -1 else (9, 40), dtype), engine_name)
    plan = batchmv.plan(A, x, axis=axis, op=op)
    assert plan.copies == () and plan.views[0].source == "A" and plan.op == op, plan
    rec = GemmRecorder(engine_name, monkeypatch)
    if plan.temporaries:  # conj(x): an input-sized temporary, which copy=False refuses like a copy
        with pytest.raises(batchmv.CopyRequiredError, match="temporary"):
            batchmv.matvec(A, x, axis=axis, op=op, copy=False)
        assert not rec.calls
        y = batchmv.matvec(A, x, axis=axis, op=op)
    else:
        assert batchmv.plan(A, x, axis=axis, op=op, copy=False).copies == ()
        y = batchmv.matvec(A, x, axis=axis, op=op, copy=False)
    assert len(rec.calls) == 1 and within(rec.calls[0]["a"], support.byte_range(A)), rec.calls
    conj = op == "H" and dtype == "complex128"
    flag = plan.views[0].conj
    assert rec.calls[0]["conj"] == flag
    # torch.mm keeps the conjugate flag for A^H when A's memory is column-major (A = B.T):
    # it reads conj(A) transposed; for a row-major A it would copy, so x and y are conjugated
    assert flag == (conj and engine_name == "torch" and a_name in ("F", "transposed")), plan
    if flag:
        assert plan.gemm == "Y2 = X2 @ conj(A)"
    if conj and not flag:  # conj(A^T conj(x)): x's conjugate is a temporary, y conjugated in place
        assert plan.views[1].source == "conj(x)" and len(plan.temporaries) == 2, plan
        assert not within(rec.calls[0]["x2"], support.byte_range(x))
    else:
        assert plan.temporaries == () and within(rec.calls[0]["x2"], support.byte_range(x))
    if engine_name == "numpy":
        assert not flag  # numpy's matmul has no conjugate flag
    ref = support.reference(op_matrix(A, op), x, axis)
    support.assert_matvec_close(y, ref, support.magnitude(op_matrix(A, op), x, axis), 9, dtype)


@pytest.mark.parametrize("engine_name", strided_engines)
def test_gemm_pointer_check_positive_control(engine_name, monkeypatch):
    """The pointer check sees a copy: a user-made copy, and a layout batchmv must copy."""
    A = support.to_lib(a_view("C", 9, 11, "complex128"), engine_name)
    x = support.to_lib(support.random_values(np.random.default_rng(1), (40, 9), "complex128"), engine_name)
    rec = GemmRecorder(engine_name, monkeypatch)
    copied = support.to_lib(support.to_numpy(A).conj().copy(), engine_name)  # what SciPy's dense adjoint does
    batchmv.matvec(copied, x, op="T")
    assert not within(rec.calls[-1]["a"], support.byte_range(A))
    B = support.to_lib(a_view("every-other", 9, 11, "complex128"), engine_name)
    plan = batchmv.plan(B, x, op="H")
    assert plan.views[0].source == "copy of A" and any(t.startswith("A: its copy") for t in plan.temporaries)
    with pytest.raises(batchmv.CopyRequiredError):
        batchmv.rmatvec(B, x, copy=False)
    y = batchmv.rmatvec(B, x)
    assert not support.overlaps(rec.calls[-1]["a"], support.byte_range(B))
    support.assert_matvec_close(y, support.reference(op_matrix(B, "H"), x, -1), support.magnitude(op_matrix(B, "H"), x, -1), 9, "complex128")


@support.needs("numpy")
@pytest.mark.parametrize("a_name", NO_COPY_A)
@pytest.mark.parametrize("op", OPS)
def test_numpy_allocates_no_copy_of_a(a_name, op):
    A = a_view(a_name, 400, 300, "complex128")
    x = support.random_values(np.random.default_rng(1), (16, 400), "complex128")
    batchmv.matvec(A, x, op=op)  # warm up
    extra, y = support.traced_extra(lambda: batchmv.matvec(A, x, op=op))
    temps = x.nbytes if op == "H" else 0  # conj(x), the one temporary numpy needs
    assert extra - y.nbytes - temps < 0.05 * A.nbytes, f"{extra} bytes for y {y.nbytes} and x {x.nbytes}: A {A.nbytes}"


@support.needs("numpy")
def test_numpy_tracemalloc_positive_control():
    A = a_view("C", 400, 300, "complex128")
    x = support.random_values(np.random.default_rng(1), (16, 400), "complex128")
    extra, y = support.traced_extra(lambda: x @ A.conj())  # the native adjoint: conj(A) is a copy
    assert extra - y.nbytes >= 0.95 * A.nbytes


# -- torch: what torch.mm does with a lazily conjugated operand ---------------------------
def torch_copies(fn, min_bytes: int) -> tuple[list, object]:
    """(allocations of at least ``min_bytes`` made while ``fn`` runs, by op, including those
    inside torch.mm's kernel, such as resolving a conjugate bit; fn's result)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    return [(e.name, e.cpu_memory_usage) for e in prof.events() if e.cpu_memory_usage >= min_bytes], result


@support.needs("torch")
@pytest.mark.parametrize("a_name", NO_COPY_A)
@pytest.mark.parametrize("matrix", ("rmatvec(A)", "matvec(A.conj())", "matvec(A.mH)", "prepare(A).H"))
@pytest.mark.parametrize("rows", (1, 40))
def test_torch_never_copies_a(a_name, matrix, rows):
    import torch

    A = support.to_lib(a_view(a_name, 200, 150, "complex128"), "torch")
    k = 150 if matrix == "matvec(A.conj())" else 200
    x = torch.randn(rows, k, dtype=torch.complex128)
    calls = {
        "rmatvec(A)": lambda: batchmv.rmatvec(A, x),
        "matvec(A.conj())": lambda: batchmv.matvec(A.conj(), x),
        "matvec(A.mH)": lambda: batchmv.matvec(A.mH, x),
        "prepare(A).H": lambda: batchmv.prepare(A).H(x),
    }
    big, y = torch_copies(calls[matrix], A.shape[0] * A.shape[1] * 16)
    assert not big, f"allocations of A's size: {big}"
    a_np = support.to_numpy(A)
    ref = support.reference(a_np.conj() if matrix == "matvec(A.conj())" else a_np.conj().T, x, -1)
    support.assert_matvec_close(y, ref, np.abs(ref) + 1, k, "complex128")
    plan = batchmv.plan(A.conj(), x) if matrix == "matvec(A.conj())" else batchmv.plan(A, x, op="H")
    assert plan.copies == ()


@support.needs("torch")
def test_torch_profiler_positive_control():
    """The profiler sees the copy torch.mm makes of a conjugated operand it reads as it is."""
    import torch

    A = torch.randn(200, 150, dtype=torch.complex128)
    x = torch.randn(40, 200, dtype=torch.complex128)
    big, _ = torch_copies(lambda: torch.mm(x, A.conj()), A.numel() * 16)
    assert any("resolve_conj" in name or "clone" in name for name, _ in big), big


@support.needs("torch")
@pytest.mark.parametrize("rows, m, n", [(1, 5, 4), (7, 5, 4), (7, 1, 4), (7, 5, 1), (1, 1, 4), (3, 3, 3), (40, 6, 9)])
@pytest.mark.parametrize("a_order", ("C", "F"))
@pytest.mark.parametrize("y_order", ("C", "F"))
def test_torch_conj_flag_rule_matches_torch(rows, m, n, a_order, y_order):
    """TorchEngine.conj_flag predicts exactly when torch.mm(x2, conj(a.T), out=y2) keeps
    the conjugate bit for BLAS (no copy of A) and when it resolves it (a copy of A)."""
    import torch

    engine = _registry.get_engine("torch")
    a = torch.randn(m, n, dtype=torch.complex128)
    a = a if a_order == "C" else a.T.contiguous().T
    x2 = torch.randn(rows, n, dtype=torch.complex128)
    y2 = torch.empty(rows, m, dtype=torch.complex128) if y_order == "C" else torch.empty(m, rows, dtype=torch.complex128).T
    predicted = engine.conj_flag(rows, tuple(x2.stride()), a, tuple(y2.stride()))
    events, _ = torch_copies(lambda: torch.mm(x2, a.t().conj(), out=y2), 1)
    copied = [e for e in events if "resolve_conj" in e[0] or "clone" in e[0] or "conj_physical" in e[0]]
    assert predicted == (not copied), (predicted, events)
    torch.testing.assert_close(y2, x2 @ a.t().conj().resolve_conj())


@support.needs("torch")
def test_torch_mm_rule_examples():
    import doctest
    import importlib

    assert doctest.testmod(importlib.import_module("batchmv.backends._torch_mm")).failed == 0


@support.needs("torch")
def test_torch_compile_traces_the_adjoint():
    import torch

    A = torch.randn(6, 4, dtype=torch.complex64)
    x = torch.randn(5, 6, dtype=torch.complex64)
    f = torch.compile(lambda a, v: batchmv.rmatvec(a, v), fullgraph=True, backend="eager")
    torch.testing.assert_close(f(A, x), x @ A.conj())
    g = torch.compile(lambda a, v: batchmv.matvec(a.conj(), v, op="T"), fullgraph=True, backend="eager")
    torch.testing.assert_close(g(A, x), x @ A.conj())


@support.needs("torch")
def test_torch_autograd_and_vmap_through_the_adjoint():
    import torch

    A = torch.randn(6, 4, dtype=torch.complex128, requires_grad=True)
    x = torch.randn(5, 6, dtype=torch.complex128, requires_grad=True)
    y = batchmv.rmatvec(A, x)
    torch.testing.assert_close(y, x @ A.conj())
    ga, gx = torch.autograd.grad(y.abs().sum(), (A, x))
    ra, rx = torch.autograd.grad((x @ A.conj()).abs().sum(), (A, x))
    torch.testing.assert_close(ga, ra)
    torch.testing.assert_close(gx, rx)
    B = A.detach()
    v = torch.func.vmap(lambda row: batchmv.rmatvec(B, row))(x.detach())
    torch.testing.assert_close(v, x.detach() @ B.conj())


# -- jax: the compiled program holds A as it is ---------------------------------------------
def hlo_values_of_shape(text: str, shape: str) -> list[str]:
    """Instructions of a compiled HLO module that produce a value of ``shape`` (e.g.
    "c128[60,40]"), parameters aside."""
    return [line.strip() for line in text.splitlines() if f"= {shape}" in line and "parameter(" not in line]


@support.needs("jax")
@pytest.mark.parametrize("op", OPS)
def test_jax_program_keeps_a_as_is(op):
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    A = jnp.asarray(support.random_values(rng, (60, 40), "complex128"))
    x = jnp.asarray(support.random_values(rng, (5, 60), "complex128"))
    text = jax.jit(lambda a, v: batchmv.matvec(a, v, op=op)).lower(A, x).compile().as_text()
    assert hlo_values_of_shape(text, "c128[60,40]") == [] and hlo_values_of_shape(text, "c128[40,60]") == [], text
    assert text.count(" dot(") == 1
    y = batchmv.matvec(A, x, op=op)
    ref = support.reference(op_matrix(A, op), x, -1)
    support.assert_matvec_close(y, ref, support.magnitude(op_matrix(A, op), x, -1), 60, "complex128")
    # positive control: the native adjoint x @ conj(A) conjugates A inside the program
    native = jax.jit(lambda a, v: v @ jnp.conj(a)).lower(A, x).compile().as_text()
    assert hlo_values_of_shape(native, "c128[60,40]"), native


# -- dask: op passes to every block ---------------------------------------------------------
@support.needs("numpy")
@pytest.mark.parametrize("chunks", ((3, 2), (3, -1)))
def test_dask_adjoint(chunks):
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(3)
    A = support.random_values(rng, (5, 8), "complex128")
    x = support.random_values(rng, (6, 5), "complex128")
    xd = da.from_array(x, chunks=chunks)
    for op, ref in (("T", x @ A), ("H", x @ A.conj())):
        y = batchmv.matvec(A, xd, op=op)
        np.testing.assert_allclose(y.compute(scheduler="synchronous"), ref, rtol=1e-12)
        plan = batchmv.plan(A, xd, op=op)
        assert plan.op == op and plan.views[0].source == "A"
    assert batchmv.plan(A, xd, op="H").temporaries  # numpy blocks: conj(x) per block


# -- GPU (marked gpu: skipped without a CUDA device; not run by the sessions that wrote it) --
@pytest.mark.gpu
@pytest.mark.parametrize("a_order", ("C", "F"))
@pytest.mark.parametrize("dtype", ("float32", "complex64", "complex128"))
def test_cupy_adjoint_reads_a_in_place(a_order, dtype):
    """cuBLAS op C where it reads A's memory transposed (the adjoint of a Fortran-ordered A
    into a row-major y), x and y conjugated otherwise; the memory pool grows by at most x's
    size beyond y."""
    from test_gpu import _need_cupy_gpu

    _need_cupy_gpu()
    import cupy as cp

    rng = np.random.default_rng(4)
    A = cp.asarray(support.random_values(rng, (1024, 768), dtype))
    A = A if a_order == "C" else cp.asfortranarray(A)
    x = cp.asarray(support.random_values(rng, (512, 1024), dtype))
    for op in OPS:
        plan = batchmv.plan(A, x, op=op)
        assert plan.copies == () and plan.views[0].source == "A"
        assert plan.views[0].conj == (op == "H" and dtype != "float32" and a_order == "F"), plan
        batchmv.matvec(A, x, op=op)  # warm-up
        y, grown = support.pool_growth(cp, lambda op=op: batchmv.matvec(A, x, op=op))
        assert grown <= (x.nbytes if plan.temporaries else 0) + 0.02 * A.nbytes, (op, grown)
        support.assert_matvec_close(y, support.reference(op_matrix(A, op), x, -1), support.magnitude(op_matrix(A, op), x, -1), 1024, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ("float32", "complex64"))
def test_torch_cuda_adjoint_makes_no_copy_of_a(dtype):
    from test_gpu import _need_torch_cuda

    _need_torch_cuda()
    import torch

    A = support.to_lib(support.random_values(np.random.default_rng(5), (2048, 1536), dtype), "torch").cuda()
    x = support.to_lib(support.random_values(np.random.default_rng(6), (256, 2048), dtype), "torch").cuda()
    for call in (lambda: batchmv.rmatvec(A, x), lambda: batchmv.matvec(A.mH, x), lambda: batchmv.prepare(A).H(x)):
        call()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        y = call()
        torch.cuda.synchronize()
        grown = torch.cuda.max_memory_allocated() - base - y.numel() * y.element_size()
        assert grown <= x.numel() * x.element_size() + 0.02 * A.numel() * A.element_size(), grown
        ref = support.reference(op_matrix(A, "H"), x, -1)
        support.assert_matvec_close(y, ref, support.magnitude(op_matrix(A, "H"), x, -1), 2048, dtype)


@support.needs("numpy")
@pytest.mark.slow
def test_bench_adjoint_script_runs(tmp_path):
    """benchmarks/bench_adjoint.py on a tiny grid: it checks every adjoint's values itself."""
    script = support.REPO_ROOT / "benchmarks" / "bench_adjoint.py"
    out = tmp_path / "r.json"
    proc = support.run_python(
        f"import runpy, sys; sys.argv = ['bench_adjoint', '--m', '12', '--n', '8', '--batch', '3', '--rounds', '2', "
        f"'--libs', 'numpy', '--dtype', 'complex64', '--json', {str(out)!r}]; runpy.run_path({str(script)!r}, run_name='__main__')"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())["results"][0]
    assert result["best_native"] in result["median_s"] and "| numpy | complex64 | 3 |" in proc.stdout
