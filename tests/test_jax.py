"""The jax engine: transformations, the compiled program, sharding, crossing libraries.

* ``matvec`` on jax arrays returns a jax.Array and works unchanged under ``jax.jit``,
  ``jax.vmap``, ``jax.grad`` (in A and in x) and ``jax.jacfwd`` (checked against float64
  numpy);
* the compiled XLA program is one dot on A as given: A goes straight into the dot (no
  broadcast over the batch, no transpose, no copy), the dot asks for HIGHEST precision, and
  the temporary memory stays far below A's size.  Positive controls: the broadcasting form
  ``jnp.matmul(A, x[..., None])`` brings transposes and copies, an explicit broadcast of A
  is caught by the same checks;
* sharding (a child process with 4 virtual CPU devices): y keeps x's batch sharding and the
  program has no collectives (control: sharding the contracted axis needs an all-reduce);
* crossing libraries (a child process, since some DLPack imports can abort): numpy and
  torch arrays computed by the jax engine, jax arrays computed by the numpy and torch
  engines; memory sharing is checked with ``unsafe_buffer_pointer()`` and a real copy is
  the positive control;
* float64 with ``JAX_ENABLE_X64=1`` (child process); ``out=`` and tracers sent to other
  engines are refused with TypeError.

The test session runs with ``jax_enable_x64`` on (conftest); arrays here have explicit
dtypes.
"""

from __future__ import annotations

import json
import re
import textwrap

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax is not installed: pip install 'batchmv[jax]'")
import jax.numpy as jnp  # noqa: E402

import batchmv  # noqa: E402
import support  # noqa: E402

pytestmark = support.needs("jax")

F32 = jnp.float32
S = jax.ShapeDtypeStruct


def _np(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _close(got, want, rtol=2e-5) -> None:
    got, want = _np(got), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    scale = max(float(np.abs(want).max(initial=0.0)), 1.0)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


@pytest.fixture
def mats(rng):
    """(A (m, n), x (b, n)) as float32 jax arrays, and their float64 numpy values."""
    a = rng.standard_normal((3, 5)).astype(np.float32)
    x = rng.standard_normal((7, 5)).astype(np.float32)
    return jnp.asarray(a), jnp.asarray(x), a.astype(np.float64), x.astype(np.float64)


# ---------------------------------------------------------------------------------------
# the result, eager and under transformations
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "x_shape, axis",
    [((5,), -1), ((7, 5), -1), ((5, 7), 0), ((2, 5, 3), 1), ((2, 3, 5), -1), ((5, 2, 3), 0), ((0, 5), -1)],
)
def test_eager_axes(rng, x_shape, axis):
    a = rng.standard_normal((3, 5)).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    y = batchmv.matvec(jnp.asarray(a), jnp.asarray(x), axis=axis)
    assert isinstance(y, jax.Array) and y.dtype == F32
    support.assert_matvec_close(y, support.reference(a, x, axis), support.magnitude(a, x, axis), 5, "float32")


def test_plan(mats):
    A, x, _, _ = mats
    p = batchmv.plan(A, x)
    assert (p.backend, p.home, p.kernel, p.copies, p.dtype) == ("jax", "jax", "dot_general", (), "float32")
    assert any("dot_general" in n and "HIGHEST" in n for n in p.notes)
    mixed = batchmv.plan(A.astype(jnp.int32), x)
    assert mixed.dtype == "float32" and any(c.startswith("A: cast from int32") for c in mixed.copies)
    with pytest.raises(batchmv.CopyRequiredError, match="cast"):
        batchmv.plan(A.astype(jnp.int32), x, copy=False)


def test_jit(mats):
    A, x, a, xv = mats
    f = jax.jit(lambda A, x: batchmv.matvec(A, x))
    y = f(A, x)
    assert isinstance(y, jax.Array)
    _close(y, xv @ a.T)
    g = jax.jit(lambda A, x: batchmv.matvec(A, x, axis=0))
    _close(g(A, x.T), a @ xv.T)
    # plan works on tracers too: types only
    kernels = []
    jax.jit(lambda A, x: kernels.append(batchmv.plan(A, x).kernel) or x)(A, x)
    assert kernels == ["dot_general"]


def test_vmap(mats, rng):
    A, x, a, xv = mats
    _close(jax.vmap(lambda v: batchmv.matvec(A, v))(x), xv @ a.T)
    _close(jax.vmap(lambda v: batchmv.matvec(A, v, axis=0), in_axes=1, out_axes=1)(x.T), a @ xv.T)
    As = rng.standard_normal((7, 3, 5)).astype(np.float32)
    y = jax.vmap(batchmv.matvec)(jnp.asarray(As), x)  # a batch of matrices, one vector each
    _close(y, np.einsum("bij,bj->bi", As.astype(np.float64), xv))
    y = jax.jit(jax.vmap(lambda A, v: batchmv.matvec(A, v), in_axes=(None, 0)))(A, x)
    _close(y, xv @ a.T)


@pytest.mark.parametrize("x_shape, axis", [((7, 5), -1), ((2, 5, 3), 1)])
def test_grad(rng, x_shape, axis):
    a = rng.standard_normal((3, 5)).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(support.reference(a, x, axis).shape).astype(np.float32)

    def loss(A, x):
        return jnp.sum(jnp.asarray(w) * batchmv.matvec(A, x, axis=axis))

    ga, gx = jax.grad(loss, argnums=(0, 1))(jnp.asarray(a), jnp.asarray(x))
    wm, xm = np.moveaxis(w.astype(np.float64), axis, -1), np.moveaxis(x.astype(np.float64), axis, -1)
    _close(ga, wm.reshape(-1, 3).T @ xm.reshape(-1, 5))
    _close(gx, np.moveaxis(wm @ a.astype(np.float64), -1, axis))
    ga2, gx2 = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(a), jnp.asarray(x))
    _close(ga2, ga)
    _close(gx2, gx)


def test_jacfwd(mats):
    A, x, a, xv = mats
    jx = jax.jacfwd(lambda v: batchmv.matvec(A, v))(x)  # d y[b, i] / d x[c, j] = [b == c] A[i, j]
    _close(jx, np.einsum("bc,ij->bicj", np.eye(7), a))
    ja = jax.jacfwd(lambda M: batchmv.matvec(M, x))(A)  # d y[b, i] / d A[k, j] = [i == k] x[b, j]
    _close(ja, np.einsum("ik,bj->bikj", np.eye(3), xv))
    jr = jax.jacrev(lambda v: batchmv.matvec(A, v))(x)
    _close(jr, jx)


# ---------------------------------------------------------------------------------------
# the compiled program
# ---------------------------------------------------------------------------------------
_HEADER = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(\([^=]*?\)|\S+)\s+([\w\-]+)\(([^)]*)\)(.*)$")


def parse_hlo(text: str) -> tuple[dict[str, list[dict]], str]:
    """{computation: [instruction {name, op, operands, args, rest}]}, and the entry's name."""
    comps: dict[str, list[dict]] = {}
    entry, current = "", None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(2)
            comps[current] = []
            entry = current if header.group(1) else entry
            continue
        if line.startswith("}"):
            current = None
            continue
        found = _INSTR.match(line) if current else None
        if found:
            name, _, op, args, rest = found.groups()
            comps[current].append(
                {"name": name, "op": op, "args": args, "operands": re.findall(r"%([\w.\-]+)", args), "rest": rest}
            )
    assert entry, "no ENTRY computation in the compiled program"
    return comps, entry


def program_ops(text: str) -> set[str]:
    comps, _ = parse_hlo(text)
    return {ins["op"] for body in comps.values() for ins in body}


def a_violations(text: str, a_param: int = 0) -> list[str]:
    """What the compiled program does to parameter ``a_param`` (A) besides feeding it
    straight into one dot: each broadcast, transpose, copy, ... that reads it."""
    comps, entry = parse_hlo(text)
    body = comps[entry]
    (a,) = [i for i in body if i["op"] == "parameter" and i["args"].strip() == str(a_param)]
    problems = []
    for user in (i for i in body if a["name"] in i["operands"]):
        if user["op"] == "dot":
            continue
        called = re.search(r"calls=%([\w.\-]+)", user["rest"])
        if user["op"] == "fusion" and called:
            inner = comps[called.group(1)]
            index = user["operands"].index(a["name"])
            (param,) = [i for i in inner if i["op"] == "parameter" and i["args"].strip() == str(index)]
            readers = [i["op"] for i in inner if param["name"] in i["operands"]]
            if readers == ["dot"] and [i["op"] for i in inner if i["op"] != "parameter"] == ["dot"]:
                continue
            problems.append(f"A goes into a fusion where it is read by {readers} (fusion ops: {[i['op'] for i in inner]})")
        else:
            problems.append(f"A is read by {user['op']}")
    return problems


def compiled(f, *specs):
    return jax.jit(f).lower(*specs).compile()


A_SPEC = S((2048, 1024), F32)  # 8 MiB: shapes only, nothing is allocated
A_BYTES = 2048 * 1024 * 4


@pytest.mark.parametrize(
    "x_shape, axis, transposes",
    [
        ((64, 1024), -1, False),
        ((1024, 64), 0, False),
        ((4, 16, 1024), 2, False),
        ((4, 1024, 16), 1, True),
        ((1024, 4, 16), 0, True),
    ],
)
def test_compiled_program_is_one_dot_on_a(x_shape, axis, transposes):
    c = compiled(lambda A, x: batchmv.matvec(A, x, axis=axis), A_SPEC, S(x_shape, F32))
    text = c.as_text()
    assert a_violations(text) == []
    ops = program_ops(text)
    assert "dot" in ops and "broadcast" not in ops
    assert len(re.findall(r"\bdot\(", text)) == 1, "exactly one dot"
    assert "operand_precision={highest,highest}" in text, "float32 must mean float32: precision HIGHEST"
    temp = c.memory_analysis().temp_size_in_bytes
    assert temp <= A_BYTES // 16, f"temporaries of {temp} bytes for an A of {A_BYTES}"
    # vectors along the last axis (or a 2-D x along axis 0): nothing but the dot.  With the
    # vector axis in the middle of a 3-D x, XLA's CPU backend transposes x and y (never A).
    assert (("transpose" in ops) or ("copy" in ops)) == transposes, sorted(ops)


def test_compiled_program_positive_controls():
    x_spec = S((64, 1024), F32)
    # the broadcasting form: jnp.matmul treats x[..., None] as a batch of (n, 1) matrices
    c = compiled(lambda A, x: jnp.matmul(A, x[..., None])[..., 0], A_SPEC, x_spec)
    ops = program_ops(c.as_text())
    assert {"transpose", "copy"} <= ops, sorted(ops)
    assert c.memory_analysis().temp_size_in_bytes > 0
    # an explicit broadcast of A to the batch: the checks must see it
    c = compiled(lambda A, x: jnp.matmul(jnp.broadcast_to(A, (x.shape[0], *A.shape)), x[..., None]), A_SPEC, x_spec)
    assert any("broadcast" in p for p in a_violations(c.as_text())), a_violations(c.as_text())
    assert c.memory_analysis().temp_size_in_bytes >= 64 * A_BYTES
    # a transposed copy of A
    c = compiled(lambda A, x: jnp.matmul(x, (A + 1.0).T), A_SPEC, x_spec)
    assert a_violations(c.as_text()) != []
    # a column-major A (what DLPack makes of a transposed numpy array): XLA's CPU program
    # copies it to row-major before the dot, which is why the engine copies such operands
    # itself (and says so) instead of wrapping them
    raw = np.zeros(A_BYTES + 64, np.uint8)
    skip = -raw.__array_interface__["data"][0] % 64
    a_col = jax.dlpack.from_dlpack(raw[skip : skip + A_BYTES].view(np.float32).reshape(1024, 2048).T, copy=False)
    assert a_col.format.layout.major_to_minor == (1, 0)
    c = compiled(lambda A, x: batchmv.matvec(A, x), a_col, x_spec)
    assert a_violations(c.as_text()) != [] and c.memory_analysis().temp_size_in_bytes >= A_BYTES
    # the default precision: no operand_precision attribute
    c = compiled(lambda A, x: jax.lax.dot_general(x, A, (((1,), (1,)), ((), ()))), A_SPEC, x_spec)
    assert "operand_precision={highest,highest}" not in c.as_text()


# ---------------------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------------------
def _aligned_float32(arr: np.ndarray) -> np.ndarray:
    from batchmv._memory import aligned_empty

    copy = aligned_empty(arr.shape, np.float32)
    np.copyto(copy, arr, casting="same_kind")
    return copy


def test_out_is_refused(mats):
    A, x, a, xv = mats
    with pytest.raises(TypeError, match="immutable"):
        batchmv.matvec(A, x, out=jnp.zeros((7, 3), F32))
    with pytest.raises(TypeError, match="immutable"):
        batchmv.plan(A, x, out=jnp.zeros((7, 3), F32))
    # numpy's out, computed by jax: jax cannot write into it, so the result is copied into
    # it (reported by plan), and copy=False refuses before computing
    a32, x32 = _aligned_float32(a), _aligned_float32(xv)  # jax shares them: only out needs a copy
    out = np.zeros((7, 3), np.float32)
    copies = batchmv.plan(a32, x32, out=out, backend="jax").copies
    assert any(c.startswith("out: ") and "immutable" in c for c in copies)
    assert batchmv.matvec(a32, x32, out=out, backend="jax") is out
    np.testing.assert_allclose(out, x32.astype(np.float64) @ a32.T.astype(np.float64), rtol=1e-5)
    with pytest.raises(batchmv.CopyRequiredError):
        batchmv.matvec(a32, x32, out=np.zeros((7, 3), np.float32), backend="jax", copy=False)


@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_tracer_to_other_engine_is_refused(mats, engine):
    support.need(engine)
    A, x, _, _ = mats
    with pytest.raises(TypeError, match="tracer"):
        jax.jit(lambda A, x: batchmv.matvec(A, x, backend=engine))(A, x)
    with pytest.raises(TypeError, match="tracer"):
        jax.grad(lambda A: batchmv.matvec(A, x, backend=engine).sum())(A)
    with pytest.raises(TypeError, match="tracer"):  # A is the tracer; x is concrete numpy
        jax.jit(lambda A: batchmv.matvec(A, np.ones((2, 5), np.float32), backend=engine))(A)


def test_foreign_input_is_read_before_return(rng):
    """A numpy A wrapped without a copy: JAX dispatches asynchronously, so matvec waits for
    the dot before returning, and writing to A afterwards does not change y."""
    raw = np.empty(3 * 5 * 4 + 64, np.uint8)
    skip = -raw.__array_interface__["data"][0] % 64
    a = raw[skip : skip + 60].view(np.float32).reshape(3, 5)
    a[...] = rng.standard_normal((3, 5))
    x = jnp.asarray(rng.standard_normal((4096, 5)), dtype=F32)
    want = _np(x) @ a.astype(np.float64).T
    assert batchmv.plan(a, x).copies == ()
    y = batchmv.matvec(a, x)
    a[...] = np.nan
    _close(y, want)


# ---------------------------------------------------------------------------------------
# crossing libraries (in-process: ordinary layouts only)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64", "int32"])
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_foreign_arrays_on_jax_engine(rng, lib, dtype):
    support.need(lib)
    a = support.random_values(rng, (3, 5), dtype)
    x = support.random_values(rng, (4, 5, 6), dtype)
    A_, x_ = support.to_lib(a, lib), support.to_lib(x, lib)
    y = batchmv.matvec(A_, x_, axis=1, backend="jax")
    assert support.library_of_array(y) == lib and support.dtype_name(y.dtype) == dtype
    support.assert_matvec_close(y, support.reference(a, x, 1), support.magnitude(a, x, 1), 5, dtype)
    assert batchmv.plan(A_, x_, axis=1, backend="jax").kernel == "dot_general"


@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64", "int32"])
@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_jax_arrays_on_other_engines(rng, engine, dtype):
    support.need(engine)
    a = support.random_values(rng, (3, 5), dtype)
    x = support.random_values(rng, (4, 6, 5), dtype)
    A_, x_ = jnp.asarray(a), jnp.asarray(x)
    y = batchmv.matvec(A_, x_, backend=engine)
    assert isinstance(y, jax.Array) and str(y.dtype) == dtype
    support.assert_matvec_close(y, support.reference(a, x, -1), support.magnitude(a, x, -1), 5, dtype)
    p = batchmv.plan(A_, x_, backend=engine)
    assert p.backend == engine and p.home == "jax"
    assert p.copies == (), p.copies  # A and x are read in place, the result is wrapped as it is


# ---------------------------------------------------------------------------------------
# child processes
# ---------------------------------------------------------------------------------------
def _run_cases(code: str, **env: str) -> dict[str, dict]:
    """Run ``code`` (which prints ``@@START name`` before and ``@@DONE {json}`` after each
    case) in a fresh interpreter; a crash names the case that was running."""
    proc = support.run_python(code, timeout=240, env=support.child_env(**env))
    results, started = {}, None
    for line in proc.stdout.splitlines():
        if line.startswith("@@START "):
            started = line.split(" ", 1)[1]
        elif line.startswith("@@DONE "):
            entry = json.loads(line.split(" ", 1)[1])
            results[entry["case"]] = entry
            started = None
    assert proc.returncode == 0, (
        f"child process died (rc={proc.returncode}) during case {started!r}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    )
    return results


_CASE_RUNNER = """
import json, sys, traceback, warnings
warnings.simplefilter("ignore")
def run(name, fn):
    print("@@START", name, flush=True)
    try:
        out = dict(fn(), ok=True)
    except Exception as err:
        out = {"ok": False, "error": f"{type(err).__name__}: {err}", "tb": traceback.format_exc()}
    print("@@DONE", json.dumps({"case": name, **out}, default=repr), flush=True)
"""

_CROSSING_CHILD = _CASE_RUNNER + """
import numpy as np, torch, jax, jax.numpy as jnp
import batchmv, support
from batchmv import _call

rng = np.random.default_rng(0)

def aligned(shape, dtype="float32", skew=0):
    dt = np.dtype(dtype)
    n = int(np.prod(shape)) * dt.itemsize
    raw = np.empty(n + 128, np.uint8)
    s = -raw.__array_interface__["data"][0] % 64 + skew
    a = raw[s : s + n].view(dt).reshape(shape)
    a[...] = support.random_values(rng, shape, dt.newbyteorder("=").name)
    return a

def ptr(a):
    if isinstance(a, np.ndarray):
        return a.__array_interface__["data"][0]
    if isinstance(a, torch.Tensor):
        return a.data_ptr()
    return a.unsafe_buffer_pointer()

def crossing(A, x, backend, axis=-1):
    call = _call.build(A, x, axis, None, backend, None)
    y = batchmv.matvec(A, x, axis=axis, backend=backend)
    ref = support.reference(A, x, axis)
    got = support.to_numpy(y)
    tol = 2e-2 if "bfloat16" in str(y.dtype) else 1e-5
    out = {
        "a_shared": ptr(call.a) == ptr(A), "x_shared": ptr(call.x) == ptr(x),
        "copies": list(batchmv.plan(A, x, axis=axis, backend=backend).copies),
        "close": bool(np.allclose(got, ref, rtol=tol, atol=tol * max(1.0, float(np.abs(ref).max(initial=0))))),
        "result": support.library_of_array(y),
    }
    try:
        batchmv.matvec(A, x, axis=axis, backend=backend, copy=False)
        out["copy_false"] = "ok"
    except batchmv.CopyRequiredError as err:
        out["copy_false"] = f"CopyRequiredError: {err}"
    return out

def readonly(a):
    a.flags.writeable = False
    return a

def np_case(make_a, make_x, axis=-1):
    return lambda: crossing(make_a(), make_x(), "jax", axis)

# controls for the pointer test itself
run("control_dlpack_view", lambda: {"shared": ptr(jnp.from_dlpack(a := aligned((8, 8)))) == ptr(a)})
run("control_real_copy", lambda: {"shared": ptr(jnp.array(a := aligned((8, 8)), copy=True)) == ptr(a)})

# numpy arrays on the jax engine
run("np_aligned", np_case(lambda: aligned((3, 5)), lambda: aligned((4, 5))))
run("np_unaligned", np_case(lambda: aligned((3, 5), skew=4), lambda: aligned((4, 5), skew=16)))
run("np_readonly", np_case(lambda: readonly(aligned((3, 5))), lambda: readonly(aligned((4, 5)))))
run("np_transposed", np_case(lambda: aligned((5, 3)).T, lambda: aligned((5, 4)).T))
run("np_strided", np_case(lambda: aligned((3, 5)), lambda: aligned((4, 10))[:, ::2]))
run("np_negative", np_case(lambda: aligned((3, 5))[::-1], lambda: aligned((4, 5))))
run("np_broadcast", np_case(lambda: aligned((3, 5)), lambda: np.broadcast_to(aligned((1, 5)), (4, 5))))
run("np_byteswapped", np_case(lambda: aligned((3, 5), ">f4"), lambda: aligned((4, 5))))
run("np_odd_bytes", np_case(
    lambda: aligned((3, 5)),
    lambda: np.lib.stride_tricks.as_strided(aligned((64,), "uint8").view(np.uint8)[:60].view(np.float32), (4, 5), (12, 2)),
))
run("np_empty_batch", np_case(lambda: aligned((3, 5)), lambda: np.zeros((0, 5), np.float32)))
run("np_float64_without_x64", np_case(lambda: aligned((3, 5), "float64"), lambda: aligned((4, 5), "float64")))
run("np_int64_without_x64", np_case(lambda: aligned((3, 5), "int64"), lambda: aligned((4, 5), "int64")))

# torch tensors on the jax engine
def t_case(make_a, make_x):
    return lambda: crossing(make_a(), make_x(), "jax")
run("torch_contiguous", t_case(lambda: torch.randn(3, 5), lambda: torch.randn(4, 5)))
run("torch_transposed", t_case(lambda: torch.randn(5, 3).T, lambda: torch.randn(5, 4).T))
run("torch_unaligned", t_case(lambda: torch.randn(3, 5), lambda: torch.randn(100)[1:21].view(4, 5)))
run("torch_expanded", t_case(lambda: torch.randn(3, 5), lambda: torch.randn(1, 5).expand(4, 5)))
run("torch_conj", t_case(
    lambda: torch.randn(3, 5, dtype=torch.complex64), lambda: torch.randn(4, 5, dtype=torch.complex64).conj()
))
run("torch_bfloat16", t_case(lambda: torch.randn(3, 5).bfloat16(), lambda: torch.randn(4, 5).bfloat16()))
run("torch_requires_grad", t_case(lambda: torch.randn(3, 5, requires_grad=True), lambda: torch.randn(4, 5)))
def no_grad_case():
    with torch.no_grad():
        return crossing(torch.randn(3, 5, requires_grad=True), torch.randn(4, 5), "jax")
run("torch_requires_grad_no_grad", no_grad_case)

# jax arrays on the numpy and torch engines
run("jax_on_numpy", lambda: crossing(jnp.asarray(aligned((3, 5))), jnp.asarray(aligned((4, 5))), "numpy"))
run("jax_on_torch", lambda: crossing(jnp.asarray(aligned((3, 5))), jnp.asarray(aligned((4, 5))), "torch"))
run("jax_transposed_on_numpy", lambda: crossing(jnp.from_dlpack(torch.randn(5, 3).T), jnp.asarray(aligned((4, 5))), "numpy"))
run("jax_bfloat16_on_numpy", lambda: crossing(jnp.ones((3, 5), jnp.bfloat16), jnp.ones((4, 5), jnp.bfloat16), "numpy"))
run("jax_bfloat16_on_torch", lambda: crossing(jnp.ones((3, 5), jnp.bfloat16), jnp.ones((4, 5), jnp.bfloat16), "torch"))
"""


@pytest.fixture(scope="module")
def crossings():
    support.need("torch")
    return _run_cases(_CROSSING_CHILD, JAX_ENABLE_X64="0")


def _ok(entry: dict) -> dict:
    assert entry["ok"], entry.get("tb") or entry["error"]
    assert entry["close"], entry
    return entry


@pytest.mark.slow
def test_crossing_pointer_controls(crossings):
    assert crossings["control_dlpack_view"]["shared"] is True
    assert crossings["control_real_copy"]["shared"] is False


SHARED = ["np_aligned", "np_readonly", "torch_contiguous", "torch_bfloat16"]
SHARED += ["torch_requires_grad_no_grad", "jax_on_torch", "jax_bfloat16_on_torch"]


@pytest.mark.slow
@pytest.mark.parametrize("case", SHARED)
def test_crossing_shares_memory(crossings, case):
    entry = _ok(crossings[case])
    assert entry["a_shared"] and entry["x_shared"], entry
    assert entry["copies"] == [] and entry["copy_false"] == "ok", entry


COPIED = {
    "np_unaligned": ("A", "64-byte"),
    "np_transposed": ("A", "not C order"),  # dense, but XLA would copy it before the dot
    "torch_transposed": ("x", "not C order"),
    "np_strided": ("x", "dense"),
    "np_negative": ("A", "dense"),
    "np_broadcast": ("x", "dense"),
    "np_byteswapped": ("A", "byte order"),
    "np_odd_bytes": ("x", "dense"),
    "torch_unaligned": ("x", "64-byte"),
    "torch_expanded": ("x", "dense"),
    "torch_conj": ("x", "conjugate"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(COPIED))
def test_crossing_copies_where_it_must(crossings, case):
    """Positive controls: where JAX cannot wrap the memory the pointer differs, plan names
    the copy and its reason, and copy=False raises CopyRequiredError."""
    entry = _ok(crossings[case])
    label, why = COPIED[case]
    assert not entry[f"{label.lower()}_shared"], entry
    assert any(c.startswith(f"{label}: ") and why in c for c in entry["copies"]), entry["copies"]
    assert entry["copy_false"].startswith("CopyRequiredError") and why in entry["copy_false"], entry


@pytest.mark.slow
def test_crossing_jax_on_numpy(crossings):
    """jax arrays are read by numpy in place, and numpy's result (allocated 64-byte aligned,
    as JAX's CPU client needs) becomes a jax array without a copy: copy=False works."""
    for case in ("jax_on_numpy", "jax_transposed_on_numpy"):  # the second: a column-major jax array
        entry = _ok(crossings[case])
        assert entry["a_shared"] and entry["x_shared"] and entry["result"] == "jax", entry
        assert entry["copies"] == [] and entry["copy_false"] == "ok", entry
    assert _ok(crossings["jax_on_torch"])["result"] == "jax"


@pytest.mark.slow
def test_crossing_refusals(crossings):
    assert crossings["np_empty_batch"]["ok"] and crossings["np_empty_batch"]["copies"] == []
    for case in ("np_float64_without_x64", "np_int64_without_x64"):
        assert crossings[case]["error"].startswith("TypeError") and "jax_enable_x64" in crossings[case]["error"]
    assert crossings["torch_requires_grad"]["error"].startswith("TypeError")
    assert "grad" in crossings["torch_requires_grad"]["error"]
    # numpy has no bfloat16: an exception, not a crash (the child survived to report it)
    assert not crossings["jax_bfloat16_on_numpy"]["ok"]


_SHARDING_CHILD = _CASE_RUNNER + """
import re, numpy as np, jax, jax.numpy as jnp, batchmv
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
assert len(jax.devices()) == 4, jax.devices()
mesh = Mesh(np.array(jax.devices()), ("b",))
rng = np.random.default_rng(0)
COLLECTIVES = r"all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter"

def case(x_shape, x_spec, axis, y_spec, a_sharding="replicated"):
    a = rng.standard_normal((6, x_shape[axis])).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    A = jnp.asarray(a) if a_sharding == "uncommitted" else jax.device_put(jnp.asarray(a), NamedSharding(mesh, P()))
    X = jax.device_put(jnp.asarray(x), NamedSharding(mesh, x_spec))
    want = np.moveaxis(np.moveaxis(x.astype(np.float64), axis, -1) @ a.astype(np.float64).T, -1, axis)
    f = jax.jit(lambda A, x: batchmv.matvec(A, x, axis=axis))
    y_eager, y_jit = batchmv.matvec(A, X, axis=axis), f(A, X)
    text = f.lower(A, X).compile().as_text()
    expected = NamedSharding(mesh, y_spec)
    return {
        "eager_sharding": y_eager.sharding.is_equivalent_to(expected, len(x_shape)),
        "jit_sharding": y_jit.sharding.is_equivalent_to(expected, len(x_shape)),
        "collectives": sorted(set(re.findall(COLLECTIVES, text))),
        "close": bool(np.allclose(np.asarray(y_eager), want, rtol=1e-5, atol=1e-4))
        and bool(np.allclose(np.asarray(y_jit), want, rtol=1e-5, atol=1e-4)),
        "hlo": text,
    }

run("rows", lambda: case((64, 32), P("b", None), -1, P("b", None)))
run("columns", lambda: case((32, 64), P(None, "b"), 0, P(None, "b")))
run("middle", lambda: case((8, 32, 5), P("b", None, None), 1, P("b", None, None)))
run("uncommitted_a", lambda: case((64, 32), P("b", None), -1, P("b", None), "uncommitted"))
# control: sharding the contracted axis leaves partial sums, which need a collective
run("control_contracted", lambda: case((16, 32), P(None, "b"), -1, P(None, None)))
"""


@pytest.mark.slow
def test_sharding():
    results = _run_cases(_SHARDING_CHILD, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    for name in ("rows", "columns", "middle", "uncommitted_a"):
        entry = results[name]
        assert entry["ok"], entry.get("tb") or entry["error"]
        assert entry["close"], name
        assert entry["eager_sharding"] and entry["jit_sharding"], f"{name}: the batch sharding of x was not kept"
        assert entry["collectives"] == [], f"{name}: {entry['collectives']}"
        assert a_violations(entry["hlo"]) == [], name
    control = results["control_contracted"]
    assert control["ok"] and control["close"], control.get("error")
    assert control["collectives"], "the control must need a collective (else the check sees nothing)"


_X64_CHILD = _CASE_RUNNER + """
import numpy as np, jax, jax.numpy as jnp, batchmv, support
from batchmv import _call
assert jax.config.jax_enable_x64
rng = np.random.default_rng(0)

def exact():
    a, x = rng.standard_normal((3, 5)), rng.standard_normal((4, 5, 6))
    y = batchmv.matvec(jnp.asarray(a), jnp.asarray(x), axis=1)
    ref = support.reference(a, x, 1)
    g = jax.grad(lambda A: batchmv.matvec(A, jnp.asarray(x), axis=1).sum())(jnp.asarray(a))
    return {
        "dtype": str(y.dtype), "plan_dtype": batchmv.plan(jnp.asarray(a), jnp.asarray(x), axis=1).dtype,
        "err": float(np.abs(np.asarray(y) - ref).max()), "grad_dtype": str(g.dtype),
        "grad_err": float(np.abs(np.asarray(g) - np.einsum("bjc->j", x)[None, :]).max()),
    }

def from_numpy():
    raw = np.empty(3 * 5 * 8 + 64, np.uint8)
    s = -raw.__array_interface__["data"][0] % 64
    a = raw[s : s + 120].view(np.float64).reshape(3, 5)
    a[...] = rng.standard_normal((3, 5))
    x = rng.standard_normal((4, 5))
    call = _call.build(a, jnp.asarray(x), -1, None, None, None)
    y = batchmv.matvec(a, jnp.asarray(x))
    return {"shared": call.a.unsafe_buffer_pointer() == a.__array_interface__["data"][0],
            "dtype": str(y.dtype), "err": float(np.abs(np.asarray(y) - x @ a.T).max())}

def ints():
    a, x = rng.integers(-3, 4, (3, 5)), rng.integers(-3, 4, (4, 5))
    y = batchmv.matvec(a, x, backend="jax")
    return {"dtype": str(y.dtype), "equal": bool((y == x @ a.T).all()), "type": type(y).__module__}

run("exact", exact)
run("from_numpy", from_numpy)
run("ints", ints)
"""


@pytest.mark.slow
def test_float64_with_x64():
    results = _run_cases(_X64_CHILD, JAX_ENABLE_X64="1")
    for entry in results.values():
        assert entry["ok"], entry.get("tb") or entry["error"]
    exact = results["exact"]
    assert exact["dtype"] == exact["plan_dtype"] == exact["grad_dtype"] == "float64"
    assert exact["err"] < 1e-13 and exact["grad_err"] < 1e-12
    assert results["from_numpy"]["shared"] and results["from_numpy"]["dtype"] == "float64"
    assert results["from_numpy"]["err"] < 1e-13
    assert results["ints"] == {"dtype": "int64", "equal": True, "type": "numpy", "ok": True, "case": "ints"}


def test_prepare(mats):
    if not hasattr(batchmv, "prepare"):
        pytest.skip("batchmv.prepare is not in this version")
    A, x, a, xv = mats
    op = batchmv.prepare(A)
    assert op.backend == "jax" and op.plan(x).kernel == "dot_general"
    _close(op(x), xv @ a.T)
    _close(op(2 * x), 2 * xv @ a.T)  # the cached call, with a new x
    _close(jax.jit(op)(x), xv @ a.T)
    _close(jax.vmap(op)(x), xv @ a.T)


def test_engine_answers(mats):
    """What the engine says about jax arrays: C-order strides from the XLA layout, the
    buffer's address, the platform; tracers have neither strides nor an address."""
    from batchmv import _registry

    engine = _registry.get_engine("jax")
    A, x, _, _ = mats
    assert engine.strides(x) == (5, 1) and engine.device(x) == "cpu"
    assert engine.address(x) == (x.unsafe_buffer_pointer(), 0)
    assert not engine.strided and not engine.tracks_graph(A, x)  # one expression, no views
    assert engine.export_refusal(x) is None
    assert engine.signature(A, x) == engine.signature(A, 2 * x) != engine.signature(A, x[:3])

    def inside(v):
        assert engine.strides(v) == (None, None) and engine.tracks_graph(v)
        assert "tracer" in engine.export_refusal(v) and engine.signature(A, v) is None
        with pytest.raises(TypeError, match="tracer"):
            engine.address(v)
        return v

    jax.jit(inside)(x)
    seen = []
    jax.jit(lambda v: seen.append(_registry.library_of(v)) or v)(x)
    jax.vmap(lambda v: seen.append(_registry.library_of(v)) or v)(x)
    assert seen == ["jax", "jax"] and _registry.library_of(x) == "jax"
