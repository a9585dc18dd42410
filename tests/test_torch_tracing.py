"""torch's transforms through matvec: autograd, torch.func.vmap/grad and
torch.compile(fullgraph=True)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import batchmv
import support

pytestmark = [
    support.needs("torch"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),  # inside torch
]

M, N = 3, 4


def leaf(view):
    """A float64 leaf tensor with the strides of the numpy view ``view``."""
    return support.to_lib(view, "torch").detach().requires_grad_()


def a_leaf(layout: str, seed=0):
    rng = np.random.default_rng(seed)
    if layout == "C":
        return leaf(rng.standard_normal((M, N)))
    if layout == "transposed":
        return leaf(rng.standard_normal((N + 1, M + 2))[1:, 1 : M + 1].T)
    if layout == "sliced":
        return leaf(rng.standard_normal((M + 2, N + 3))[1 : M + 1, 2 : N + 2])
    raise ValueError(layout)


def x_leaf(layout: str, axis: int, seed=1):
    rng = np.random.default_rng(seed)
    shape = [2, 3]
    shape.insert(axis % 3, N)
    shape = tuple(shape)
    if layout == "contiguous":
        return leaf(rng.standard_normal(shape))
    if layout == "permuted":
        return leaf(rng.standard_normal(shape[::-1]).transpose(2, 1, 0))
    if layout == "loop":  # batch axes that cannot merge: a loop of 2 GEMMs of 32 vectors each
        big = rng.standard_normal((32, 5, N))
        return leaf(big[:, :2, :])
    raise ValueError(layout)


def reference_grads(A, x, axis, g):
    """d<g, A @ x along axis>/dA and /dx by the float64 formula."""
    a, xx, gg = (np.asarray(support.to_numpy(v)) for v in (A, x, g))
    xm, gm = np.moveaxis(xx, axis, -1), np.moveaxis(gg, axis, -1)
    grad_a = gm.reshape(-1, gm.shape[-1]).T @ xm.reshape(-1, xm.shape[-1])
    grad_x = np.moveaxis(gm @ a, -1, axis)
    return grad_a, grad_x


CASES = [
    ("C", "contiguous", -1),
    ("C", "contiguous", 0),
    ("transposed", "contiguous", 1),
    ("sliced", "permuted", -1),
    ("transposed", "permuted", 0),
    ("sliced", "contiguous", 1),
    ("C", "loop", -1),
]


@pytest.mark.parametrize("a_layout, x_layout, axis", CASES)
def test_gradients_match_formula(a_layout, x_layout, axis):
    import torch

    A = a_leaf(a_layout)
    x = x_leaf(x_layout, axis)
    y = batchmv.matvec(A, x, axis=axis)
    assert y.requires_grad
    g = torch.from_numpy(np.random.default_rng(2).standard_normal(tuple(y.shape)))
    y.backward(g)
    grad_a, grad_x = reference_grads(A, x, axis, g)
    np.testing.assert_allclose(A.grad.numpy(), grad_a, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), grad_x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("a_layout, x_layout, axis", CASES)
def test_gradcheck(a_layout, x_layout, axis):
    import torch

    A = a_leaf(a_layout)
    x = x_leaf(x_layout, axis)
    if x_layout == "loop":
        assert batchmv.plan(A, x, axis=axis).gemm_calls == 2
    f = lambda a, v: batchmv.matvec(a, v, axis=axis)  # noqa: E731
    assert torch.autograd.gradcheck(f, (A, x), fast_mode=x_layout == "loop")
    assert torch.autograd.gradgradcheck(f, (A, x), fast_mode=True)


def test_gradient_only_in_x_and_no_grad_mode():
    import torch

    A = a_leaf("C").detach()
    x = x_leaf("contiguous", -1)
    y = batchmv.matvec(A, x)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.broadcast_to(A.sum(0).numpy(), x.shape))
    with torch.no_grad():
        assert not batchmv.matvec(A, x).requires_grad


def test_vmap_over_x_and_over_A():
    import torch
    from torch.func import vmap

    rng = np.random.default_rng(0)
    A = torch.from_numpy(rng.standard_normal((M, N)))
    X = torch.from_numpy(rng.standard_normal((5, 6, N)))
    y = vmap(lambda x: batchmv.matvec(A, x))(X)
    np.testing.assert_allclose(y.numpy(), support.reference(A, X, -1), rtol=1e-12)
    Xt = X.transpose(0, 2).contiguous().transpose(1, 2)  # (N, 5, 6), not contiguous
    y = vmap(lambda x: batchmv.matvec(A, x, axis=0), in_dims=1)(Xt)  # per slice (N, 6) -> (M, 6)
    assert y.shape == (5, M, 6)
    np.testing.assert_allclose(y.numpy(), support.reference(A, X, -1).transpose(0, 2, 1), rtol=1e-12)
    As = torch.from_numpy(rng.standard_normal((7, M, N)))
    x = torch.from_numpy(rng.standard_normal((6, N)))
    y = vmap(lambda a: batchmv.matvec(a, x))(As)
    np.testing.assert_allclose(y.numpy(), np.einsum("bmn,kn->bkm", As.numpy(), x.numpy()), rtol=1e-12)
    Xs = torch.from_numpy(rng.standard_normal((7, 2, N)))
    y = vmap(lambda a, v: batchmv.matvec(a, v))(As, Xs)  # a different A for each batch of x
    np.testing.assert_allclose(y.numpy(), np.einsum("bmn,bkn->bkm", As.numpy(), Xs.numpy()), rtol=1e-12)


def test_vmap_plan_says_transformed():
    import torch
    from torch.func import vmap

    A = torch.ones(M, N)
    notes = []

    def f(x):
        notes.append(batchmv.plan(A, x))
        return batchmv.matvec(A, x)

    vmap(f)(torch.ones(5, N))
    assert notes and notes[0].notes, notes


def test_func_grad_and_jacrev():
    import torch
    from torch.func import grad, jacrev

    rng = np.random.default_rng(0)
    A = torch.from_numpy(rng.standard_normal((M, N)))
    x = torch.from_numpy(rng.standard_normal((N,)))
    g = grad(lambda v: batchmv.matvec(A, v).sum())(x)
    np.testing.assert_allclose(g.numpy(), A.sum(0).numpy(), rtol=1e-12)
    J = jacrev(lambda v: batchmv.matvec(A, v))(x)
    np.testing.assert_allclose(J.numpy(), A.numpy(), rtol=1e-12)
    J = jacrev(lambda a: batchmv.matvec(a, x))(A)
    np.testing.assert_allclose(J.numpy(), np.einsum("im,n->imn", np.eye(M), x.numpy()), rtol=1e-12)


# ---------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------
GEMM_TARGETS = {"mm", "addmm", "matmul", "linear"}
BAD_TARGETS = {"bmm", "baddbmm", "expand", "contiguous", "clone", "copy_", "broadcast_to"}


def target_name(node) -> str:
    target = node.target
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    return name.split(".")[-1]


class GraphRecorder:
    """A torch.compile backend that records the FX graphs dynamo hands it and runs them."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return gm.forward

    def ops(self) -> list[str]:
        return [target_name(n) for gm in self.graphs for n in gm.graph.nodes if n.op in ("call_function", "call_method")]


def fresh_compile(fn, **kwargs):
    import torch

    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, **kwargs)


@pytest.mark.parametrize("a_layout, x_layout, axis", [c for c in CASES if c[1] != "loop"])
def test_compile_fullgraph_one_mm(a_layout, x_layout, axis):
    rec = GraphRecorder()
    A = a_leaf(a_layout).detach()
    x = x_leaf(x_layout, axis).detach()
    plan = batchmv.plan(A, x, axis=axis)  # eager: what the traced graph must do too
    f = fresh_compile(lambda a, v: batchmv.matvec(a, v, axis=axis), backend=rec)
    y = f(A, x)
    support.assert_matvec_close(y, support.reference(A, x, axis), support.magnitude(A, x, axis), N, "float64")
    assert len(rec.graphs) == 1
    ops = rec.ops()
    assert sum(op in GEMM_TARGETS for op in ops) == plan.gemm_calls == 1, ops
    if not plan.copies:
        assert not set(ops) & BAD_TARGETS, ops
    else:  # the copies the plan reports (of x: few vectors per GEMM), and nothing of A
        assert all(c.startswith("x") for c in plan.copies), plan.copies
        assert ops.count("copy_") == len(plan.copies), ops
        assert not set(ops) & (BAD_TARGETS - {"copy_"}), ops


def test_compile_inside_use_backend_and_with_backend_argument():
    import torch

    rec = GraphRecorder()
    A, x = torch.ones(M, N), torch.ones(5, N)
    f = fresh_compile(lambda a, v: batchmv.matvec(a, v, backend="torch"), backend=rec)
    assert torch.equal(f(A, x), torch.full((5, M), float(N)))
    with batchmv.use_backend("torch"):
        g = fresh_compile(lambda a, v: batchmv.matvec(a, v) + 1, backend=rec)
        assert torch.equal(g(A, x), torch.full((5, M), float(N) + 1))


def test_compile_recompiles_for_new_layouts():
    rec = GraphRecorder()
    f = fresh_compile(lambda a, v: batchmv.matvec(a, v), backend=rec)
    for a_layout, x_layout, axis in [("C", "contiguous", -1), ("transposed", "permuted", -1), ("sliced", "contiguous", -1)]:
        A = a_leaf(a_layout).detach()
        x = x_leaf(x_layout, axis).detach()
        y = f(A, x)
        support.assert_matvec_close(y, support.reference(A, x, axis), support.magnitude(A, x, axis), N, "float64")


def test_compile_with_gradients_aot_eager():
    A = a_leaf("transposed")
    x = x_leaf("contiguous", 1)
    f = fresh_compile(lambda a, v: batchmv.matvec(a, v, axis=1), backend="aot_eager")
    y = f(A, x)
    import torch

    g = torch.ones_like(y)
    y.backward(g)
    grad_a, grad_x = reference_grads(A, x, 1, g)
    np.testing.assert_allclose(A.grad.numpy(), grad_a, rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), grad_x, rtol=1e-12)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler")
def test_compile_inductor():
    A = a_leaf("transposed").detach()
    x = x_leaf("permuted", -1).detach()
    f = fresh_compile(lambda a, v: batchmv.matvec(a, v))
    y = f(A, x)
    support.assert_matvec_close(y, support.reference(A, x, -1), support.magnitude(A, x, -1), N, "float64")
