"""jax.experimental.sparse A (BCOO, BCSR) with jax x against a float64 reference, under
jit and grad, and as the leaf of a prepared operator (a pytree)."""

from __future__ import annotations

import numpy as np
import pytest

import batchmv
import support
from test_sparse import LAYOUTS, M, N, dense, op_of

pytestmark = support.needs("jax")
DTYPES = ("float32", "float64", "complex64", "complex128")


def to_jax(values: np.ndarray, fmt: str):
    from jax.experimental import sparse

    return {"bcoo": sparse.BCOO, "bcsr": sparse.BCSR}[fmt].fromdense(values)


@pytest.mark.parametrize("op", ["N", "T", "H"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", ["bcoo", "bcsr"])
def test_formats_dtypes_ops_axes(rng, fmt, dtype, op):
    import jax.numpy as jnp

    values = dense(rng, dtype)
    A = to_jax(values, fmt)
    for shape, axis in LAYOUTS:
        shape = tuple(M if s == N and op != "N" else s for s in shape)
        x = jnp.asarray(support.random_values(rng, shape, dtype))
        y = batchmv.matvec(A, x, axis=axis, op=op)
        assert support.library_of_array(y) == "jax" and y.dtype == np.dtype(dtype)
        ref = op_of(values, op)
        support.assert_matvec_close(y, support.reference(ref, x, axis), support.magnitude(ref, x, axis), shape[axis], dtype)
        p = batchmv.plan(A, x, axis=axis, op=op)
        assert (p.kernel, p.nnz, p.copies) == ("spmm", int(np.count_nonzero(values)), ())


def test_jit_and_grad_with_respect_to_the_data(rng):
    import jax
    import jax.numpy as jnp
    from jax.experimental import sparse

    values = dense(rng, "float64")
    A = to_jax(values, "bcoo")
    x = jnp.asarray(rng.standard_normal((4, N)))
    weights = jnp.asarray(rng.standard_normal((4, M)))
    y = jax.jit(lambda a, v: batchmv.matvec(a, v))(A, x)
    support.assert_matvec_close(y, support.reference(values, x, -1), support.magnitude(values, x, -1), N, "float64")

    def loss(data):
        return (batchmv.matvec(sparse.BCOO((data, A.indices), shape=A.shape), x) * weights).sum()

    grad = jax.grad(loss)(A.data)
    dense_grad = np.asarray(weights).T @ np.asarray(x)  # d loss / d A_ij = sum_b w_bi x_bj
    rows, cols = np.asarray(A.indices).T
    np.testing.assert_allclose(np.asarray(grad), dense_grad[rows, cols], rtol=1e-12)


def test_prepared_operator_is_a_pytree(rng):
    import jax
    import jax.numpy as jnp

    values = dense(rng, "complex128")
    op = batchmv.prepare(to_jax(values, "bcsr"))
    x = jnp.asarray(support.random_values(rng, (M, 3), "complex128"))
    y = jax.jit(lambda o, v: o.H(v, axis=0))(op, x)
    ref = values.conj().T
    support.assert_matvec_close(y, support.reference(ref, x, 0), support.magnitude(ref, x, 0), M, "complex128")


def test_refusals(rng):
    import jax.numpy as jnp

    A = to_jax(dense(rng, "float64"), "bcoo")
    with pytest.raises(TypeError, match="the numpy engine cannot take a jax sparse A"):
        batchmv.matvec(A, jnp.ones(N), backend="numpy")
    with pytest.raises(TypeError, match="x must be dense"):
        batchmv.matvec(jnp.ones((M, N)), A.T)
    with pytest.raises(ValueError, match="axis"):
        batchmv.matvec(A, jnp.ones(M))


def test_vmap_and_grad_with_respect_to_x(rng):
    import jax
    import jax.numpy as jnp

    values = dense(rng, "float64")
    A = to_jax(values, "bcoo")
    X = jnp.asarray(rng.standard_normal((3, N)))
    y = jax.vmap(lambda v: batchmv.matvec(A, v))(X)
    support.assert_matvec_close(y, support.reference(values, X, -1), support.magnitude(values, X, -1), N, "float64")
    weights = rng.standard_normal((3, M))
    grad = jax.grad(lambda v: (batchmv.matvec(A, v) * weights).sum())(X)
    np.testing.assert_allclose(np.asarray(grad), weights @ values, rtol=1e-12, atol=1e-14)
