"""The prepared operator as a linear operator (issue 12): SciPy's protocol and solvers, and
the JAX pytree.

* Shapes and semantics of ``matvec``/``rmatvec``/``matmat``/``rmatmat``/``@``/``T``/``H``
  against numpy float64/complex128 math, for every library under test.
* ``scipy.sparse.linalg`` solvers (cg, gmres, lsqr, eigsh, svds) on known systems, with
  every product counted: each is one batchmv GEMM whose A operand lies in A's memory (a
  positive control shows the check failing on a copy of A).
* ``import batchmv`` imports no SciPy (a fresh interpreter).
* JAX: the operator passes ``jax.jit``/``vmap``/``grad`` as an argument, A is not a
  constant of the compiled program (a closure over the operator, the positive control,
  makes it one), a new A of the same shape does not recompile, and the registration is
  lazy: nothing happens in JAX before an operator is prepared with JAX imported.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import batchmv
import support
from batchmv import _registry


def reference(A, op: str) -> np.ndarray:
    a = support.to_numpy(A)
    return {"N": a, "T": a.T, "H": a.conj().T, "C": a.conj()}[op]


def close(y, ref, dtype="complex128"):
    ref = np.asarray(ref)
    support.assert_matvec_close(y, ref, np.abs(ref) + 1.0, 16, dtype)


@pytest.fixture
def complex_a(xp_name):
    rng = np.random.default_rng(0)
    return support.to_lib(support.random_values(rng, (7, 5), "complex128"), xp_name)


def test_products_follow_scipy(xp_name, complex_a):
    A = complex_a
    op = batchmv.prepare(A)
    rng = np.random.default_rng(1)
    v5, v7 = (support.to_lib(support.random_values(rng, (k,), "complex128"), xp_name) for k in (5, 7))
    X5, X7 = (support.to_lib(support.random_values(rng, (k, 3), "complex128"), xp_name) for k in (5, 7))
    a = reference(A, "N")
    assert op.shape == (7, 5) and op.H.shape == (5, 7) and op.T.shape == (5, 7) and op.ndim == 2
    assert support.dtype_name(op.dtype) == "complex128"
    close(op.matvec(v5), a @ support.to_numpy(v5))
    col = op.matvec(X5[:, :1])
    assert tuple(col.shape) == (7, 1)
    close(col, a @ support.to_numpy(X5[:, :1]))
    close(op.rmatvec(v7), a.conj().T @ support.to_numpy(v7))
    close(op.matmat(X5), a @ support.to_numpy(X5))
    close(op.rmatmat(X7), a.conj().T @ support.to_numpy(X7))
    close(op @ v5, a @ support.to_numpy(v5))
    close(op @ X5, a @ support.to_numpy(X5))
    close(op.H @ X7, a.conj().T @ support.to_numpy(X7))
    close(op.T @ v7, a.T @ support.to_numpy(v7))
    close(op.T.H @ v5, a.conj() @ support.to_numpy(v5))
    close(op.dot(v5), a @ support.to_numpy(v5))
    if xp_name == "numpy":  # ndarray @ op defers to op.__rmatmul__ (x @ A = A^T x)
        close(support.to_numpy(v7) @ op, support.to_numpy(v7) @ a)
        stack = support.random_values(rng, (2, 5, 3), "complex128")
        close(op @ stack, a @ stack)  # numpy's matmul rule: (..., n, k) stacks
    assert op.H.H is op and op.T.T is op and op.H.T is op.T.H and op.adjoint() is op.H and op.transpose() is op.T
    assert "A^H" in repr(op.H) and "(5, 7)" in repr(op.H)


def test_product_shape_errors(complex_a):
    op = batchmv.prepare(complex_a)
    with pytest.raises(ValueError, match="matvec takes x of shape"):
        op.matvec(np.ones(7))
    with pytest.raises(ValueError, match="matvec takes x of shape"):
        op.matvec(np.ones((5, 2)))
    with pytest.raises(ValueError, match="matmat takes X of shape"):
        op.matmat(np.ones(5))
    with pytest.raises(ValueError, match="matmat takes X of shape"):
        op.rmatmat(np.ones((5, 2)))
    with pytest.raises(ValueError, match="at least 1-D"):
        op @ np.float64(2.0)
    assert op.__matmul__("not an array") is NotImplemented


def test_adjoint_views_share_a_and_plan_it(complex_a, xp_name):
    op = batchmv.prepare(complex_a)
    assert op.H._shared is op._shared and op.T._shared is op._shared
    if xp_name in ("numpy", "torch"):
        x = support.to_lib(np.ones((40, 7), np.complex128), xp_name)
        plan = op.H.plan(x)
        assert plan.op == "H" and plan.copies == () and plan.views[0].source == "A"


# ---------------------------------------------------------------------------------------
# SciPy solvers: every product is one batchmv GEMM on A's memory
# ---------------------------------------------------------------------------------------
class Counter:
    """Counts the products a solver asks for and the GEMMs batchmv runs for them, checking
    that each GEMM reads A in place."""

    def __init__(self, op, A, monkeypatch):
        self.products = 0
        self.gemms = 0
        self.foreign = 0  # GEMMs whose A operand is not in A's memory
        lo, hi = support.byte_range(A)
        engine = _registry.get_engine(op.backend)

        def note(kind, v, a, out, conj):  # a GEMM, or a GEMV for one vector
            self.gemms += 1
            start, stop = support.byte_range(a)
            self.foreign += not (lo <= start and stop <= hi)

        support.record_kernels(engine, monkeypatch, note)
        for name in ("matvec", "rmatvec", "matmat", "rmatmat"):
            monkeypatch.setattr(op, name, self._counted(getattr(op, name)))

    def _counted(self, fn):
        def counted(x):
            self.products += 1
            return fn(x)

        return counted

    def check(self):
        assert self.products > 0
        assert self.gemms == self.products, f"{self.products} products ran {self.gemms} GEMMs"
        assert self.foreign == 0, f"{self.foreign} GEMMs read a copy of A"


@support.needs("numpy")
def test_cg_and_gmres_solve_an_spd_system(monkeypatch):
    linalg = pytest.importorskip("scipy.sparse.linalg")
    rng = np.random.default_rng(0)
    M = rng.standard_normal((60, 60))
    S = M @ M.T + 60 * np.eye(60)
    b = rng.standard_normal(60)
    x_true = np.linalg.solve(S, b)
    for solver in (linalg.cg, linalg.gmres):
        op = batchmv.prepare(S)  # (a new operator: its remembered kernels are the counted ones)
        counter = Counter(op, S, monkeypatch)
        x, info = solver(op, b, rtol=1e-12, atol=0)
        assert info == 0
        np.testing.assert_allclose(x, x_true, rtol=1e-8)
        counter.check()
        monkeypatch.undo()
    assert op.plan(b).copies == () and op.plan(b).views[0].source == "A"


@support.needs("numpy")
def test_lsqr_solves_complex_least_squares(monkeypatch):
    linalg = pytest.importorskip("scipy.sparse.linalg")
    rng = np.random.default_rng(1)
    A = support.random_values(rng, (80, 30), "complex128")
    b = support.random_values(rng, (80,), "complex128")
    op = batchmv.prepare(A)
    counter = Counter(op, A, monkeypatch)
    x = linalg.lsqr(op, b, atol=1e-14, btol=1e-14, iter_lim=500)[0]
    np.testing.assert_allclose(x, np.linalg.lstsq(A, b, rcond=None)[0], rtol=1e-9)
    counter.check()
    assert op.H.plan(b).copies == ()  # every rmatvec: A^H without a copy of A


@support.needs("numpy")
def test_eigsh_and_svds_match_numpy(monkeypatch):
    linalg = pytest.importorskip("scipy.sparse.linalg")
    rng = np.random.default_rng(2)
    M = rng.standard_normal((50, 50))
    S = (M + M.T) / 2
    op = batchmv.prepare(S)
    counter = Counter(op, S, monkeypatch)
    w = linalg.eigsh(op, k=3, which="LA", return_eigenvectors=False)
    np.testing.assert_allclose(np.sort(w), np.linalg.eigvalsh(S)[-3:], rtol=1e-9)
    counter.check()
    monkeypatch.undo()
    A = support.random_values(rng, (70, 40), "complex128")
    opA = batchmv.prepare(A)
    counter = Counter(opA, A, monkeypatch)
    s = linalg.svds(opA, k=4, return_singular_vectors=False)
    np.testing.assert_allclose(np.sort(s), np.sort(np.linalg.svd(A, compute_uv=False))[-4:], rtol=1e-9)
    counter.check()


@support.needs("numpy")
def test_solver_counter_positive_control(monkeypatch):
    """The counter sees a copy of A: an operator prepared on a copy reads other memory."""
    linalg = pytest.importorskip("scipy.sparse.linalg")
    rng = np.random.default_rng(0)
    M = rng.standard_normal((30, 30))
    S = M @ M.T + 30 * np.eye(30)
    op = batchmv.prepare(S.conj().T.copy())  # what SciPy's dense adjoint builds
    counter = Counter(op, S, monkeypatch)
    linalg.cg(op, np.ones(30))
    with pytest.raises(AssertionError, match="read a copy of A"):
        counter.check()


@support.needs("numpy")
def test_aslinearoperator_keeps_matmat_one_gemm(monkeypatch):
    linalg = pytest.importorskip("scipy.sparse.linalg")
    A = support.random_values(np.random.default_rng(0), (9, 6), "complex128")
    op = batchmv.prepare(A)
    plain = linalg.aslinearoperator(op)  # scipy's: matvec, rmatvec, rmatmat (not matmat)
    full = op.aslinearoperator()
    assert full.dtype == np.complex128 and full.shape == (9, 6)
    X = support.random_values(np.random.default_rng(1), (6, 4), "complex128")
    counter = Counter(op, A, monkeypatch)
    np.testing.assert_allclose(full.matmat(X), A @ X)
    np.testing.assert_allclose(full.rmatmat(A @ X), A.conj().T @ (A @ X))
    assert counter.gemms == 2  # one GEMM for 4 vectors, each way
    np.testing.assert_allclose(plain.matmat(X), A @ X)


@support.needs("torch")
def test_torch_operator_in_scipy_solver():
    """A torch operator solves SciPy's numpy systems in place (no torch -> numpy round trip
    per product: torch's GEMM reads the numpy vectors' memory)."""
    linalg = pytest.importorskip("scipy.sparse.linalg")
    import torch

    rng = np.random.default_rng(0)
    M = rng.standard_normal((40, 40))
    S = torch.from_numpy(M @ M.T + 40 * np.eye(40))
    op = batchmv.prepare(S)
    x, info = linalg.cg(op.aslinearoperator(), np.ones(40), rtol=1e-12, atol=0)
    assert info == 0 and isinstance(x, np.ndarray)
    np.testing.assert_allclose(S.numpy() @ x, np.ones(40), rtol=1e-8)
    assert op.plan(np.ones(40)).copies == ()


def test_lobpcg_takes_the_scipy_operator():
    """lobpcg calls an operator that is a callable on blocks of column vectors (SciPy's
    ``op(X) == op @ X``); batchmv's ``op(x)`` takes vectors along the last axis, so lobpcg
    gets ``op.aslinearoperator()`` (README): then its eigenpairs of a complex Hermitian A
    are right.  Given the operator itself, lobpcg computes with A^T, here conj(A): the
    positive control that the eigenvectors are checked."""
    linalg = pytest.importorskip("scipy.sparse.linalg")
    rng = np.random.default_rng(0)
    C = rng.standard_normal((6, 6)) + 1j * rng.standard_normal((6, 6))
    H = C @ C.conj().T
    op = batchmv.prepare(H)
    X0 = rng.standard_normal((6, 2)) + 0j
    w, v = linalg.lobpcg(op.aslinearoperator(), X0)
    np.testing.assert_allclose(H @ v, v * w, atol=1e-8)
    w, v = linalg.lobpcg(op, X0)
    assert not np.allclose(H @ v, v * w, atol=1e-8)


def test_a_read_only_result_is_copied_for_scipy():
    """SciPy's gmres writes into the vectors its operator returns: a jax operator's products
    on numpy vectors are read-only views of jax's buffers, which the SciPy methods copy
    (the call itself still returns the view)."""
    linalg = pytest.importorskip("scipy.sparse.linalg")
    support.need("jax")
    import jax.numpy as jnp

    A = np.eye(3, dtype=np.float32) * np.float32(2)
    op = batchmv.prepare(jnp.asarray(A))
    b = np.ones(3, np.float32)
    assert not op(b).flags.writeable  # (what the call gives: jax's buffer)
    assert op.matvec(b).flags.writeable and op.rmatmat(np.ones((3, 2), np.float32)).flags.writeable
    x, info = linalg.gmres(op, b, rtol=1e-6)
    assert info == 0
    np.testing.assert_allclose(A @ x, b, rtol=1e-5)


def test_operators_pickle_copy_and_print(xp_name):
    """An operator pickles (after calls too: its remembered calls are not pickled) as its A,
    engine and op; copy.copy gives the operator itself (op.H.H is op holds); repr names
    what it holds, a stack of operators built by jax.vmap included."""
    import copy
    import pickle

    rng = np.random.default_rng(0)
    values = support.random_values(rng, (4, 3), "complex128")
    op = batchmv.prepare(support.to_lib(values, xp_name))
    x = support.to_lib(support.random_values(rng, (2, 4), "complex128"), xp_name)
    op.H(x)  # (a remembered call)
    again = pickle.loads(pickle.dumps(op.H))
    assert again.op == "H" and again.backend == op.backend and again.H.H is again
    close(again(x), support.to_numpy(x) @ values.conj())
    assert copy.copy(op) is op and copy.copy(op.H).H.H is op.H
    assert repr(op.H) == f"<batchmv.MatVec A^H, shape (3, 4), on the {op.backend} engine>"
    sparse = pytest.importorskip("scipy.sparse")
    S = batchmv.prepare(sparse.csr_array(values))
    S(np.ones(3))
    assert repr(pickle.loads(pickle.dumps(S.T))).startswith("<batchmv.MatVec A^T, shape (3, 4)")


def test_the_operator_has_no_algebra_and_says_so():
    op = batchmv.prepare(np.ones((3, 2)))
    for attempt in (lambda: op * np.ones(2), lambda: np.ones(3) * op, lambda: 2 * op, lambda: op + op,
                    lambda: -op, lambda: op @ op, lambda: op / 2):  # fmt: skip
        with pytest.raises(TypeError, match="aslinearoperator"):
            attempt()
    with pytest.raises(ValueError, match="rmatvec takes x of shape"):
        op.rmatvec(np.ones(2))
    np.testing.assert_allclose(op @ np.ones(2), np.full(3, 2.0))  # (arrays still multiply)


def test_import_batchmv_imports_no_scipy():
    proc = support.run_python(
        "import sys, numpy as np, batchmv\n"
        "op = batchmv.prepare(np.eye(3) + 1j)\n"
        "op.H.matvec(np.ones(3)); op @ np.ones((3, 2))\n"
        "print('@@' + str(sorted(m for m in sys.modules if m.split('.')[0] in ('scipy', 'jax'))))\n"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("@@")[1].strip() == "[]"


# ---------------------------------------------------------------------------------------
# JAX: a pytree whose leaf is A
# ---------------------------------------------------------------------------------------
jax_only = support.needs("jax")


def _jax_a(seed=0, shape=(40, 30)):
    import jax.numpy as jnp

    return jnp.asarray(support.random_values(np.random.default_rng(seed), shape, "float64"))


@jax_only
def test_jit_takes_the_operator_as_an_argument():
    import jax
    import jax.numpy as jnp

    A, A2 = _jax_a(0), _jax_a(1)
    x = jnp.asarray(support.random_values(np.random.default_rng(2), (5, 30), "float64"))
    traces = []

    def f(op, x):
        traces.append(1)
        return op.H(op(x))  # A^H A x

    jf = jax.jit(f)
    y = jf(batchmv.prepare(A), x)
    np.testing.assert_allclose(y, x @ A.T @ A, rtol=1e-12)
    y2 = jf(batchmv.prepare(A2), x)  # a new A of the same shape: no new trace, no recompile
    np.testing.assert_allclose(y2, x @ A2.T @ A2, rtol=1e-12)
    assert len(traces) == 1 and jf._cache_size() == 1
    text = jf.lower(batchmv.prepare(A), x).as_text()
    assert "%arg0: tensor<40x30xf64>" in text  # A is the program's first argument
    assert not [line for line in text.splitlines() if "constant" in line and "40x30" in line]


@jax_only
def test_closure_bakes_a_in_positive_control():
    import jax
    import jax.numpy as jnp

    op = batchmv.prepare(_jax_a(0))
    x = jnp.ones((5, 30))
    text = jax.jit(lambda x: op(x)).lower(x).as_text()
    assert [line for line in text.splitlines() if "constant" in line and "40x30" in line]


@jax_only
def test_vmap_and_grad_through_the_operator():
    import jax
    import jax.numpy as jnp

    A = _jax_a(0)
    op = batchmv.prepare(A)
    xs = jnp.asarray(support.random_values(np.random.default_rng(3), (7, 30), "float64"))
    ys = jax.vmap(lambda o, v: o.matvec(v), in_axes=(None, 0))(op, xs)
    np.testing.assert_allclose(ys, xs @ A.T, rtol=1e-12)
    many = jax.vmap(batchmv.prepare)(jnp.stack([A, 2 * A]))  # a batch of operators
    out = jax.vmap(lambda o: o(xs[0]))(many)
    np.testing.assert_allclose(out, np.stack([A @ xs[0], 2 * (A @ xs[0])]), rtol=1e-12)
    g = jax.grad(lambda o, v: jnp.sum(o(v) ** 2))(op, xs)
    assert isinstance(g, batchmv.MatVec) and g.shape == (40, 30)
    np.testing.assert_allclose(g.A, 2 * (xs @ A.T).T @ xs, rtol=1e-10)
    gH = jax.grad(lambda o, v: jnp.sum(o.H(v) ** 2))(op, jnp.ones((2, 40)))
    np.testing.assert_allclose(gH.A, 2 * jnp.ones((2, 40)).T @ (jnp.ones((2, 40)) @ A), rtol=1e-10)
    leaves, tree = jax.tree_util.tree_flatten(op.H)
    assert leaves == [op._shared] and jax.tree_util.tree_unflatten(tree, leaves).op == "H"
    assert "shape (2, 40, 30)" in repr(many) and "NoneType" in repr(jax.tree_util.tree_unflatten(tree, [None]))
    with pytest.raises(ValueError, match="not a matrix"):
        many.shape  # (a stack of operators: called inside the vmap)


@jax_only
def test_jax_registration_is_lazy():
    """Importing batchmv registers nothing in JAX; preparing an operator with JAX imported
    registers the class."""
    code = (
        "import json, batchmv, jax, jax.numpy as jnp\n"
        "probe = object.__new__(batchmv.MatVec)\n"
        "before = jax.tree_util.tree_leaves(probe) == [probe]\n"
        "op = batchmv.prepare(jnp.eye(3))\n"
        "after = jax.tree_util.tree_leaves(op)\n"
        "print('@@' + json.dumps([before, len(after), after[0].shape == (3, 3)]))\n"
    )
    proc = support.run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.split("@@")[1]) == [True, 1, True]
