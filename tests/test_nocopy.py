"""No copy of A, one GEMM: checked from four sides, each with a positive control that
shows the check fails on a real copy.

1. The views that reach the kernel point into A's and x's buffers (``plan.views`` and
   the arguments the engine's ``gemm`` actually receives).
2. Memory: numpy allocations seen by tracemalloc (numpy reports them there); torch's
   aten op census (TorchDispatchMode) and, in a child process, the peak RSS.
3. ``plan(...).copies`` is empty exactly where no copy is needed, and ``copy=False``
   raises :class:`batchmv.CopyRequiredError` exactly where one is.
4. One GEMM whenever the batch axes can be viewed as one; otherwise a short loop of big
   GEMMs, never a loop over single vectors.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import batchmv
import support
from batchmv import _registry

torch_only = support.needs("torch")
numpy_only = support.needs("numpy")


# ---------------------------------------------------------------------------------------
# layouts used throughout
# ---------------------------------------------------------------------------------------
def a_layout(name: str, m: int, n: int, dtype: str = "float64", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if name == "C":
        root = support.random_values(rng, (m, n), dtype)
        return root, root[...]
    if name == "F":
        root = support.random_values(rng, (n, m), dtype)
        return root, root.T
    if name == "transposed":  # transposed view of a padded buffer, at an offset
        root = support.random_values(rng, (n + 1, m + 3), dtype)
        return root, root[1:, 2 : m + 2].T
    if name == "sliced":
        root = support.random_values(rng, (m + 2, n + 5), dtype)
        return root, root[1 : m + 1, 3 : n + 3]
    if name == "every-other":  # no unit stride: BLAS cannot read it
        root = support.random_values(rng, (2 * m, 2 * n), dtype)
        return root, root[::2, ::2]
    if name == "reversed":
        root = support.random_values(rng, (m, n), dtype)
        return root, root[::-1]
    if name == "broadcast":
        root = support.random_values(rng, (1, n), dtype)
        return root, np.broadcast_to(root, (m, n))
    raise ValueError(name)


def x_layout(name: str, n: int, dtype: str = "float64", seed: int = 1) -> tuple[np.ndarray, np.ndarray, int]:
    """(root, x view, axis)."""
    rng = np.random.default_rng(seed)
    if name == "contiguous":
        root = support.random_values(rng, (6, 7, n), dtype)
        return root, root[...], -1
    if name == "strided":  # every other vector
        root = support.random_values(rng, (40, n + 3), dtype)
        return root, root[::2, 1 : n + 1], -1
    if name == "permuted":  # Fortran order, vectors along the last axis
        root = support.random_values(rng, (n, 7, 6), dtype)
        return root, root.T, -1
    if name == "axis-first":
        root = support.random_values(rng, (n, 6, 7), dtype)
        return root, root[...], 0
    if name == "axis-middle":  # batch axes around the vectors cannot merge: 3 GEMMs of 40 vectors
        root = support.random_values(rng, (3, n, 40), dtype)
        return root, root[...], 1
    if name == "vector-stride-2":  # no unit stride in X2: BLAS cannot read it
        root = support.random_values(rng, (30, 2 * n), dtype)
        return root, root[:, ::2], -1
    if name == "few-rows":  # (3, 4, n) out of (3, 50, n): 4 vectors per GEMM is too few to loop
        root = support.random_values(rng, (3, 50, n), dtype)
        return root, root[:, :4, :], -1
    raise ValueError(name)


NO_COPY_A = ("C", "F", "transposed", "sliced")
NO_COPY_X = ("contiguous", "strided", "permuted", "axis-first", "axis-middle")


def within(inner: tuple[int, int], outer: tuple[int, int]) -> bool:
    return outer[0] <= inner[0] and inner[1] <= outer[1]


class GemmRecorder:
    """Records the byte ranges of what an engine's kernels receive (GEMMs and GEMVs:
    :func:`support.record_kernels`)."""

    def __init__(self, engine, monkeypatch):
        self.calls: list[dict] = []

        def note(kind, x2, a, out, conj):
            self.calls.append(
                {
                    "kind": kind,
                    "x2": support.byte_range(x2),
                    "a": support.byte_range(a),
                    "a_shape": tuple(a.shape),
                    "x2_shape": tuple(x2.shape),
                    "out": None if out is None else support.byte_range(out),
                }
            )

        support.record_kernels(engine, monkeypatch, note)


def record(engine_name: str, monkeypatch) -> GemmRecorder:
    return GemmRecorder(_registry.get_engine(engine_name), monkeypatch)


# ---------------------------------------------------------------------------------------
# 1. the kernel's operands are views into A and x
# ---------------------------------------------------------------------------------------
@numpy_only
@pytest.mark.parametrize("a_name", NO_COPY_A)
@pytest.mark.parametrize("x_name", NO_COPY_X)
def test_numpy_plan_views_point_into_inputs(a_name, x_name):
    a_root, A = a_layout(a_name, 9, 11)
    x_root, x, axis = x_layout(x_name, 11)
    plan = batchmv.plan(A, x, axis=axis, backend="numpy")
    a_view, x_view, _ = plan.views
    base = lambda arr, root: arr.__array_interface__["data"][0] - root.__array_interface__["data"][0]  # noqa: E731
    assert a_view.source == "A" and x_view.source == "x"
    assert a_view.offset == base(A, a_root)
    assert a_view.strides == (A.strides[1] // 8, A.strides[0] // 8)
    assert a_view.order is not None
    assert x_view.offset == base(x, x_root)
    assert x_view.order is not None


@pytest.mark.parametrize("engine_name", [p for p in support.lib_params() if p.values[0] in ("numpy", "torch")])
@pytest.mark.parametrize("a_name", NO_COPY_A)
@pytest.mark.parametrize("x_name", NO_COPY_X)
def test_gemm_receives_views_of_inputs(engine_name, a_name, x_name, monkeypatch):
    a_root, A = a_layout(a_name, 9, 11)
    x_root, x, axis = x_layout(x_name, 11)
    A, x = support.to_lib(A, engine_name), support.to_lib(x, engine_name)
    rec = record(engine_name, monkeypatch)
    plan = batchmv.plan(A, x, axis=axis)
    y = batchmv.matvec(A, x, axis=axis)
    assert plan.copies == ()
    assert len(rec.calls) == plan.gemm_calls == (3 if x_name == "axis-middle" else 1)
    for call in rec.calls:
        assert within(call["a"], support.byte_range(A)), "the GEMM did not read A in place"
        assert within(call["x2"], support.byte_range(x)), "the GEMM did not read x in place"
        assert call["a_shape"] == (9, 11)
    support.assert_matvec_close(y, support.reference(A, x, axis), support.magnitude(A, x, axis), 11, "float64")


@pytest.mark.parametrize("engine_name", [p for p in support.lib_params() if p.values[0] in ("numpy", "torch")])
def test_gemm_pointer_check_positive_control(engine_name, monkeypatch):
    """The pointer check catches copies: a user-made copy, and a layout batchmv must copy."""
    _, A = a_layout("C", 9, 11)
    _, x, axis = x_layout("contiguous", 11)
    A_lib, x_lib = support.to_lib(A, engine_name), support.to_lib(x, engine_name)
    rec = record(engine_name, monkeypatch)
    copied = support.to_lib(np.ascontiguousarray(A.T).T, engine_name)  # same values, other memory
    batchmv.matvec(copied, x_lib, axis=axis)
    assert not within(rec.calls[-1]["a"], support.byte_range(A_lib))

    _, B = a_layout("every-other", 9, 11)
    B_lib = support.to_lib(B, engine_name)
    plan = batchmv.plan(B_lib, x_lib, axis=axis)
    assert plan.copies and plan.views[0].source == "copy of A"
    batchmv.matvec(B_lib, x_lib, axis=axis)
    assert not support.overlaps(rec.calls[-1]["a"], support.byte_range(B_lib)), "a non-BLAS A reached the GEMM"


# ---------------------------------------------------------------------------------------
# 2a. numpy: nothing the size of A is allocated (tracemalloc sees numpy's allocations)
# ---------------------------------------------------------------------------------------
@numpy_only
@pytest.mark.parametrize("a_name", ("C", "F", "transposed", "sliced"))
@pytest.mark.parametrize("x_name", ("contiguous", "strided", "permuted"))
def test_numpy_allocates_only_the_result(a_name, x_name):
    assert np.lib.tracemalloc_domain  # numpy reports its data allocations to tracemalloc
    _, A = a_layout(a_name, 400, 300)
    _, x, axis = x_layout(x_name, 300)
    batchmv.matvec(A, x, axis=axis)  # warm up (BLAS buffers, caches)
    extra, y = support.traced_extra(lambda: batchmv.matvec(A, x, axis=axis))
    assert extra - y.nbytes < 0.05 * A.nbytes, f"{extra - y.nbytes} bytes beyond the result ({A.nbytes} in A)"


@numpy_only
def test_numpy_tracemalloc_positive_control():
    _, A = a_layout("C", 400, 300)
    _, x, axis = x_layout("contiguous", 300)
    extra, y = support.traced_extra(lambda: batchmv.matvec(A.copy(), x, axis=axis))
    assert extra - y.nbytes >= 0.95 * A.nbytes
    _, B = a_layout("every-other", 400, 300)  # batchmv must copy this A for BLAS
    batchmv.matvec(B, x, axis=axis)
    extra, y = support.traced_extra(lambda: batchmv.matvec(B, x, axis=axis))
    assert extra - y.nbytes >= 0.95 * B.size * B.itemsize


# ---------------------------------------------------------------------------------------
# 2b. torch: the aten ops that run, and the peak RSS of a child process
# ---------------------------------------------------------------------------------------
FORBIDDEN = {"bmm", "baddbmm", "clone", "copy_", "_to_copy", "contiguous", "expand", "resolve_conj", "resolve_neg", "cat", "stack"}


def census(fn) -> tuple[list[str], object]:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Census(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with Census() as c:
        result = fn()
    return c.ops, result


def check_census(ops: list[str], calls: int = 1) -> None:
    gemms = [op for op in ops if op in ("mm", "addmm")]
    assert len(gemms) == calls, f"expected {calls} mm, ran {ops}"
    bad = sorted(set(ops) & FORBIDDEN)
    assert not bad, f"copy or broadcast ops ran: {bad} in {ops}"


@torch_only
@pytest.mark.parametrize("home", ("torch", "numpy"))
@pytest.mark.parametrize("a_name", NO_COPY_A)
@pytest.mark.parametrize("x_name", NO_COPY_X)
def test_torch_census_one_mm(home, a_name, x_name):
    _, A = a_layout(a_name, 9, 11)
    _, x, axis = x_layout(x_name, 11)
    A, x = support.to_lib(A, home), support.to_lib(x, home)
    ops, y = census(lambda: batchmv.matvec(A, x, axis=axis, backend="torch"))
    check_census(ops, calls=3 if x_name == "axis-middle" else 1)
    support.assert_matvec_close(y, support.reference(A, x, axis), support.magnitude(A, x, axis), 11, "float64")


@torch_only
def test_torch_census_with_out_one_mm():
    import torch

    _, A = a_layout("transposed", 9, 11)
    A = support.to_lib(A, "torch")
    x = torch.randn(6, 7, 11, dtype=torch.float64)
    out = torch.empty(6, 7, 9, dtype=torch.float64)
    ops, y = census(lambda: batchmv.matvec(A, x, out=out))
    check_census(ops)
    assert "empty" not in ops, "out= was given: nothing to allocate"
    assert y is out


@torch_only
@pytest.mark.parametrize("row_stride", [0, 5, 1, 11])
def test_torch_one_row_of_any_row_stride_is_read_in_place(row_stride):
    """x of one row (a broadcast row: row stride 0) is the GEMM's one-row X2 whatever its
    row stride: torch's GEMM would copy it inside its CPU kernel (seen by the profiler, not
    by a dispatch mode) for a row stride between 1 and its length (exclusive), so it gets a
    view that it reads in place, on the first call and on a remembered one; torch's own
    ``F.linear`` on it copies (the positive control)."""
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    def copies(fn) -> list[str]:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        return [e.name for e in prof.events() if e.name in ("aten::clone", "aten::copy_", "aten::contiguous")]

    A = torch.randn(9, 11, dtype=torch.float64)
    x = torch.randn(40, dtype=torch.float64).as_strided((1, 11), (row_stride, 1))
    assert batchmv.plan(A, x).copies == ()
    for _ in range(2):  # (built, then remembered)
        assert copies(lambda: batchmv.matvec(A, x, copy=False)) == []
        torch.testing.assert_close(batchmv.matvec(A, x), x @ A.T)
    assert bool(copies(lambda: F.linear(x, A))) == (row_stride in (0, 5))


@torch_only
def test_torch_census_positive_control():
    import torch

    _, A = a_layout("C", 9, 11)
    A = support.to_lib(A, "torch")
    X = torch.randn(6, 7, 11, dtype=torch.float64)
    ops, _ = census(lambda: torch.matmul(A, X[..., None]))
    with pytest.raises(AssertionError):
        check_census(ops)  # matmul broadcasts A over the batch: expand + bmm
    assert "bmm" in ops and "expand" in ops
    _, B = a_layout("every-other", 9, 11)
    ops, _ = census(lambda: batchmv.matvec(support.to_lib(B, "torch"), X))
    with pytest.raises(AssertionError):
        check_census(ops)  # a non-BLAS A is copied
    assert {"copy_", "clone"} & set(ops)


RSS_CHILD = r"""
import gc, json, sys
import numpy as np
import torch
import batchmv

torch.manual_seed(0)

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")

def reset():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak RSS to the current RSS

def growth(fn):
    gc.collect()
    reset()
    h0 = hwm()
    result = fn()
    return hwm() - h0, result

K = 4096
base = torch.randn(K, K)  # 64 MiB of float32
wide = torch.randn(K, 2 * K)  # for a non-BLAS view of 64 MiB... of which every other column
x = torch.randn(256, K)
report = {}
for name, A in [("C", base), ("T", base.T), ("numpy-C", base.numpy()), ("numpy-T", base.numpy().T)]:
    xx = x.numpy() if name.startswith("numpy") else x
    batchmv.matvec(A[:64], xx)  # warm up the GEMM library's buffers
    batchmv.matvec(A, xx)
    g, y = growth(lambda: batchmv.matvec(A, xx))
    report[name] = {"growth": g, "result": y.nbytes, "A": K * K * 4}
    del y
g, c = growth(lambda: base.T.contiguous())
report["control-contiguous"] = {"growth": g, "result": 0, "A": K * K * 4}
del c
A = wide[:, ::2]  # (K, K) with strides (2K, 2): BLAS cannot read it, batchmv copies it
g, y = growth(lambda: batchmv.matvec(A, x))
report["control-every-other"] = {"growth": g, "result": y.nbytes, "A": K * K * 4}
print("@@" + json.dumps(report))
"""


@torch_only
@pytest.mark.slow
def test_peak_rss_in_child_process():
    proc = support.run_python(RSS_CHILD, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("@@"))[2:])
    for name in ("C", "T", "numpy-C", "numpy-T"):
        r = report[name]
        assert r["growth"] - r["result"] < 0.1 * r["A"], f"{name}: peak RSS grew by {r['growth']} bytes: {report}"
    for name in ("control-contiguous", "control-every-other"):
        r = report[name]
        assert r["growth"] - r["result"] > 0.9 * r["A"], f"{name}: the RSS check does not see a copy of A: {report}"


# ---------------------------------------------------------------------------------------
# 3. plan.copies is empty exactly where no copy is needed; copy=False agrees
# ---------------------------------------------------------------------------------------
def copy_cases():
    """(engine, dtype, A layout, x layout, copy expected)."""
    cases = []
    for engine in ("numpy", "torch"):
        for a_name in NO_COPY_A:
            for x_name in NO_COPY_X:
                cases.append((engine, "float64", a_name, x_name, False))
        for a_name in ("every-other", "broadcast") + (("reversed",) if engine == "numpy" else ()):
            cases.append((engine, "float64", a_name, "contiguous", True))
        for x_name in ("vector-stride-2", "few-rows"):
            cases.append((engine, "float32", "C", x_name, True))
        cases.append((engine, "complex128", "transposed", "permuted", False))
    # numpy's own loop (integers, float16) reads any strides: nothing to copy
    for a_name in ("every-other", "reversed", "broadcast"):
        cases.append(("numpy", "int64", a_name, "vector-stride-2", False))
        cases.append(("numpy", "float16", a_name, "strided", False))
        # but 4 vectors per GEMM are too few for a loop, whatever the dtype: x is copied once
        cases.append(("numpy", "int32", a_name, "few-rows", True))
    return [
        pytest.param(*c, id="-".join(map(str, c)), marks=support.lib_marks(c[0]))
        for c in cases
        if c[0] in support.libraries()
    ]


def build(engine, dtype, a_name, x_name):
    _, A = a_layout(a_name, 9, 11, dtype)
    _, x, axis = x_layout(x_name, 11, dtype)
    return support.to_lib(A, engine), support.to_lib(x, engine), axis


@pytest.mark.parametrize("engine, dtype, a_name, x_name, expected", copy_cases())
def test_copies_reported_exactly(engine, dtype, a_name, x_name, expected, monkeypatch):
    A, x, axis = build(engine, dtype, a_name, x_name)
    plan = batchmv.plan(A, x, axis=axis)
    assert bool(plan.copies) == expected, plan
    report = str(plan)
    assert all(reason in report for reason in plan.copies), report  # the report lists every copy
    rec = record(engine, monkeypatch)
    if expected:
        with pytest.raises(batchmv.CopyRequiredError) as err:
            batchmv.plan(A, x, axis=axis, copy=False)
        assert isinstance(err.value, ValueError)
        with pytest.raises(batchmv.CopyRequiredError):
            batchmv.matvec(A, x, axis=axis, copy=False)
        assert not rec.calls, "matvec computed before refusing"
        y = batchmv.matvec(A, x, axis=axis)
    else:
        assert batchmv.plan(A, x, axis=axis, copy=False).copies == ()
        y = batchmv.matvec(A, x, axis=axis, copy=False)
        for call in rec.calls:
            assert within(call["a"], support.byte_range(A))
            assert within(call["x2"], support.byte_range(x))
    support.assert_matvec_close(y, support.reference(A, x, axis), support.magnitude(A, x, axis), 11, dtype)


@pytest.mark.parametrize("engine_name", [p for p in support.lib_params() if p.values[0] in ("numpy", "torch")])
def test_copies_for_casts_and_overlapping_out(engine_name):
    _, A = a_layout("C", 9, 11, "float32")
    root = np.random.default_rng(0).standard_normal((30, 11))
    (x, out_alias) = support.in_lib(root, [root, root[:, :9]], engine_name)
    A = support.to_lib(A, engine_name)
    plan = batchmv.plan(A, x)  # float32 A with float64 x: A is cast
    assert any(c.startswith("A: cast") for c in plan.copies), plan.copies
    A64 = support.to_lib(np.ones((9, 11)), engine_name)
    plan = batchmv.plan(A64, x, out=out_alias)  # out overlaps x: a temporary, then a copy
    assert any("overlaps x" in c for c in plan.copies), plan.copies
    with pytest.raises(batchmv.CopyRequiredError, match="overlaps"):
        batchmv.matvec(A64, x, out=out_alias, copy=False)
    separate = support.to_lib(np.zeros((30, 9)), engine_name)
    assert batchmv.plan(A64, x, out=separate).copies == ()


# ---------------------------------------------------------------------------------------
# 4. one GEMM when the batch can be viewed as one; a short loop of big GEMMs otherwise
# ---------------------------------------------------------------------------------------
def batch_cases():
    rng = np.random.default_rng(0)
    n = 8
    big = rng.standard_normal((3, 50, n))
    four = rng.standard_normal((2, 3, 4, 5, n))
    return {
        "4-d contiguous": (four, -1),
        "4-d Fortran": (np.asfortranarray(four.transpose(4, 0, 1, 2, 3)).transpose(1, 2, 3, 4, 0), -1),
        "4-d vectors first": (np.ascontiguousarray(four.transpose(4, 0, 1, 2, 3)), 0),
        "4-d vectors in the middle": (np.ascontiguousarray(four.transpose(0, 1, 4, 2, 3)), 2),
        "outer axis sliced": (four[::2], -1),
        "transposed batch axes": (np.ascontiguousarray(four.transpose(1, 0, 2, 3, 4)).transpose(1, 0, 2, 3, 4), -1),
        "unit axes": (big[:1, :, None, :], -1),
        "non-mergeable, 40 per GEMM": (np.pad(big, ((0, 0), (0, 10), (0, 0)))[:, :40, :], -1),
        "non-mergeable, 3 GEMMs of 40 (inner axis looped)": (rng.standard_normal((40, 50, n))[:, :3, :], -1),
        "mergeable after transposing batch axes": (big.transpose(1, 0, 2), -1),
        "non-mergeable, 4 per GEMM": (big[:, :4, :], -1),
        "non-mergeable, 2 or 3 per GEMM": (big[:, :2, :].transpose(1, 0, 2), -1),
        "single vectors on a strided axis": (big[:, 7, :], -1),
    }


EXPECTED_CALLS = {"non-mergeable, 40 per GEMM": 3, "non-mergeable, 3 GEMMs of 40 (inner axis looped)": 3}


@pytest.mark.parametrize("engine_name", [p for p in support.lib_params() if p.values[0] in ("numpy", "torch")])
@pytest.mark.parametrize("case", list(batch_cases()))
def test_gemm_calls(engine_name, case, monkeypatch):
    x, axis = batch_cases()[case]
    n = x.shape[axis]
    A = support.to_lib(np.random.default_rng(1).standard_normal((6, n)), engine_name)
    x = support.to_lib(x, engine_name)
    plan = batchmv.plan(A, x, axis=axis)
    rec = record(engine_name, monkeypatch)
    y = batchmv.matvec(A, x, axis=axis)
    batch = int(np.prod(x.shape)) // n
    assert plan.gemm_calls == EXPECTED_CALLS.get(case, 1), plan
    assert len(rec.calls) == plan.gemm_calls
    assert plan.kernel == ("gemm" if plan.gemm_calls == 1 else "gemm loop")
    rows = {c["x2_shape"][0] for c in rec.calls}
    assert sum(c["x2_shape"][0] for c in rec.calls) == batch
    if plan.gemm_calls > 1:
        assert min(rows) >= 32, f"a loop of GEMMs over {sorted(rows)} vectors"
        assert not plan.copies, "looping instead of copying must need no copy"
    if case.startswith(("non-mergeable, 4 ", "non-mergeable, 2 or 3")):
        assert any(c.startswith("x:") for c in plan.copies), "x copied once instead of a loop of tiny GEMMs"
    support.assert_matvec_close(y, support.reference(A, x, axis), support.magnitude(A, x, axis), n, "float64")
