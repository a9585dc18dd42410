"""torch.compile as the FIRST batchmv call of a fresh process (issue 10, kind 1).

batchmv fills caches on first use (the library of each array type, the lazy-collection
check, the loaded engines, ``BATCHMV_BACKEND`` read once).  Under ``torch.compile`` that
first use happens while dynamo traces, and dynamo guards on the module-level state it
reads, so a compiled call can behave differently from one that follows an eager call
(reported: ``AssertionError: DictGetItemSource index must be a ConstDictKeySource or
literal`` while dynamo builds guards on ``_registry._library_of_type``).  The in-process
tests of test_torch_tracing.py cannot see this: an earlier test has always filled the
caches.  So every case here runs in its own child interpreter, where the compiled call is
the first batchmv call of the process, and checks:

* no graph break (``fullgraph=True``) and the result against ``x @ A.T`` computed in
  float64 by numpy;
* then, after eager batchmv calls on numpy and torch arrays (every cache filled) and a
  new entry in ``sys.modules`` (as any later import makes), a second call of the
  compiled function on new values of the same layout: correct and without a recompile
  (``torch._dynamo.config.error_on_recompile``), i.e. nothing that the first call or the
  eager calls left behind is part of the graph's guards.
"""

from __future__ import annotations

import shutil
import textwrap

import pytest

import support

pytestmark = [support.needs("torch")]

#: The parts every child shares: a reference in float64 (numpy only, no batchmv), the
#: check, and the second call after eager calls and a new import.
_CHECK = """
import sys
import numpy as np

def reference(A, x, axis):
    a64 = A.detach().double().numpy() if hasattr(A, "detach") else np.asarray(A, dtype=np.float64)
    x64 = x.detach().double().numpy()
    y = np.einsum("mn,...n->...m", a64, np.moveaxis(x64, axis, -1))
    return np.moveaxis(y, -1, axis), np.moveaxis(np.einsum("mn,...n->...m", np.abs(a64), np.abs(np.moveaxis(x64, axis, -1))), -1, axis)

def check(y, A, x, axis, what):
    ref, scale = reference(A, x, axis)
    got = y.detach().double().numpy()
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, expected {ref.shape}"
    bound = 1e-5 * scale + 1e-30  # float32, n <= 16
    bad = np.abs(got - ref) > bound
    assert not bad.any(), f"{what}: {int(bad.sum())} of {bad.size} elements off, max error {np.abs(got - ref).max()}"
"""

_SECOND_CALL = """
# every cache filled by eager calls, and sys.modules changed: the graph must still hold
import torch._dynamo
batchmv.matvec(np.ones((2, 3)), np.ones((4, 3)))
batchmv.matvec(torch.ones(2, 3), torch.ones(4, 3))
batchmv.matvec(torch.ones(2, 3, dtype=torch.float64), np.ones(3))
import types
sys.modules["_batchmv_test_new_module"] = types.ModuleType("_batchmv_test_new_module")
torch._dynamo.config.error_on_recompile = True
"""


def _child(prelude: str, body: str) -> str:
    return prelude + _CHECK + textwrap.dedent(body) + '\nprint("@@OK@@")\n'


TORCH_FIRST = "import torch\nimport batchmv\n"
BATCHMV_FIRST = "import batchmv\nimport torch\n"


def _plain(a: str, x: str, axis: int = -1, compile_kwargs: str = 'backend="eager"', second: str | None = None) -> str:
    """A case: ``torch.compile(lambda a, v: batchmv.matvec(a, v, axis=axis))`` on A and x
    made by the expressions ``a`` and ``x`` (of a torch.Generator ``g``)."""
    return f"""
    def make(seed):
        g = torch.Generator().manual_seed(seed)
        return ({a}), ({x})
    f = torch.compile(lambda a, v: batchmv.matvec(a, v, axis={axis}), fullgraph=True, {compile_kwargs})
    A, x = make(0)
    check(f(A, x), A, x, {axis}, "first call")
    {_SECOND_CALL.strip().replace(chr(10), chr(10) + "    ")}
    A, x = make(1)
    check(f(A, x), A, x, {axis}, "second call")
    {second or ""}
    """


C_A = "torch.randn(5, 6, generator=g)"
X2 = "torch.randn(4, 6, generator=g)"

CASES = {
    # the reported case, then the same under the other backends and import order
    "reported-eager": (TORCH_FIRST, _plain(C_A, X2)),
    "aot_eager": (TORCH_FIRST, _plain(C_A, X2, compile_kwargs='backend="aot_eager"')),
    "import-batchmv-first": (BATCHMV_FIRST, _plain(C_A, X2)),
    "import-batchmv-first-aot_eager": (BATCHMV_FIRST, _plain(C_A, X2, compile_kwargs='backend="aot_eager"')),
    # layouts of A
    "A-fortran": (TORCH_FIRST, _plain("torch.randn(5, 6, generator=g).T.contiguous().T", X2)),
    "A-transposed-view": (TORCH_FIRST, _plain("torch.randn(6, 5, generator=g).T", X2)),
    "A-sliced": (BATCHMV_FIRST, _plain("torch.randn(8, 9, generator=g)[1:6, 2:8]", X2)),
    # layouts of x
    "x-1d": (TORCH_FIRST, _plain(C_A, "torch.randn(6, generator=g)")),
    "x-3d-batch": (TORCH_FIRST, _plain(C_A, "torch.randn(2, 3, 6, generator=g)")),
    "axis-0": (TORCH_FIRST, _plain(C_A, "torch.randn(6, 7, generator=g)", axis=0)),
    "axis-middle": (BATCHMV_FIRST, _plain(C_A, "torch.randn(2, 6, 3, generator=g)", axis=1)),
    "x-batch-of-1": (TORCH_FIRST, _plain(C_A, "torch.randn(1, 6, generator=g)")),
    "x-noncontiguous": (TORCH_FIRST, _plain(C_A, "torch.randn(5, 3, 12, generator=g)[1:, 1, ::2]")),
    "x-permuted-axis-0": (TORCH_FIRST, _plain("torch.randn(6, 5, generator=g).T", "torch.randn(3, 4, 6, generator=g).permute(2, 1, 0)", axis=0)),
    # shapes under tracing: dynamic=True, then another batch size (a recompile is allowed there)
    "dynamic": (
        TORCH_FIRST,
        _plain(
            C_A,
            X2,
            compile_kwargs='backend="eager", dynamic=True',
            second="""torch._dynamo.config.error_on_recompile = False
    A3, x3 = make(2)[0], torch.randn(9, 6)
    check(f(A3, x3), A3, x3, -1, "other batch size")""",
        ),
    ),
    "dynamic-aot_eager-3d": (TORCH_FIRST, _plain(C_A, "torch.randn(2, 3, 6, generator=g)", compile_kwargs='backend="aot_eager", dynamic=True')),
    # selection state read for the first time while tracing
    "env-BATCHMV_BACKEND": (TORCH_FIRST, _plain(C_A, X2)),
    "inside-use_backend": (
        TORCH_FIRST,
        """
    f = torch.compile(lambda a, v: batchmv.matvec(a, v), fullgraph=True, backend="eager")
    A, x = torch.randn(5, 6), torch.randn(4, 6)
    with batchmv.use_backend("torch"):
        check(f(A, x), A, x, -1, "first call")
    """,
    ),
    # transforms and prepared operators
    "vmap": (
        TORCH_FIRST,
        """
    A = torch.randn(5, 6)
    f = torch.compile(torch.vmap(lambda v: batchmv.matvec(A, v)), fullgraph=True, backend="eager")
    x = torch.randn(4, 6)
    check(f(x), A, x, -1, "first call")
    """
        + textwrap.indent(_SECOND_CALL, "    ")
        + """
    x = torch.randn(4, 6)
    check(f(x), A, x, -1, "second call")
    """,
    ),
    "prepare-under-compile": (
        BATCHMV_FIRST,
        """
    f = torch.compile(lambda a, v: batchmv.prepare(a)(v), fullgraph=True, backend="eager")
    A, x = torch.randn(6, 5).T, torch.randn(4, 6)
    check(f(A, x), A, x, -1, "first call")
    """
        + textwrap.indent(_SECOND_CALL, "    ")
        + """
    A, x = torch.randn(6, 5).T, torch.randn(4, 6)
    check(f(A, x), A, x, -1, "second call")
    """,
    ),
    "grad-aot_eager": (
        TORCH_FIRST,
        """
    f = torch.compile(lambda a, v: batchmv.matvec(a, v), fullgraph=True, backend="aot_eager")
    A = torch.randn(5, 6, requires_grad=True)
    x = torch.randn(4, 6)
    y = f(A, x)
    check(y, A, x, -1, "first call")
    y.sum().backward()
    expected = np.outer(np.ones(5), x.double().sum(0).numpy())
    assert np.allclose(A.grad.double().numpy(), expected, rtol=1e-5), "gradient in A"
    """,
    ),
}

#: The default (inductor) backend: one case, it takes far longer to compile.
INDUCTOR = (TORCH_FIRST, _plain("torch.randn(6, 5, generator=g).T", "torch.randn(2, 3, 6, generator=g)", compile_kwargs=""))


def _exception_line(lines: list[str]) -> str:
    """The line that names the child's exception (the first unindented line after its last
    traceback header), or its last line."""
    start = max((i for i, ln in enumerate(lines) if ln.startswith("Traceback")), default=-1)
    found = next((ln for ln in lines[start + 1 :] if ln[:1].strip() and ": " in ln), None)
    return found or next((ln for ln in reversed(lines) if ln.strip()), "(no output)")


def _run(name: str, prelude: str, body: str, tmp_path, **env: str) -> None:
    code = _child(prelude, body)
    child_env = support.child_env(TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"), **env)
    proc = support.run_python(code, timeout=300, env=child_env, cwd=tmp_path)
    if proc.returncode != 0 or "@@OK@@" not in proc.stdout:
        lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith(("E1", "W1", "I1"))]  # torch's log prefix
        last = _exception_line(lines)
        raise AssertionError(
            f"case {name!r} failed in a fresh interpreter (exit code {proc.returncode}): {last[:300]}\n"
            + "\n".join(lines[-40:])
            + f"\n--- child code ---\n{code}"
        )


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_first_call_under_compile(name, tmp_path):
    prelude, body = CASES[name]
    env = {"BATCHMV_BACKEND": "torch"} if name == "env-BATCHMV_BACKEND" else {}
    _run(name, prelude, body, tmp_path, **env)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler")
def test_first_call_under_compile_inductor(tmp_path):
    _run("inductor", *INDUCTOR, tmp_path)
