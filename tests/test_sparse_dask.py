"""A sparse A with a dask x: A enters the graph once, as one key, however many blocks; x
chunked along the vector axis is rechunked (reported); results against a float64 reference."""

from __future__ import annotations


import numpy as np
import pytest

import batchmv
import support

da = pytest.importorskip("dask.array")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # (torch: "beta" sparse CSR)
sp = pytest.importorskip("scipy.sparse")


@pytest.mark.parametrize("kind", ["scipy", "torch"])
def test_sparse_a_enters_the_graph_once(rng, kind):
    A = sp.random_array((1500, 600), density=0.1, format="csr", rng=rng)  # 90k entries, 1.1 MB of arrays
    stored = A.data.nbytes + A.indices.nbytes + A.indptr.nbytes
    if kind == "torch":
        support.need("torch")
        import torch

        A_in = torch.sparse_csr_tensor(*(torch.from_numpy(v) for v in (A.indptr, A.indices, A.data)), A.shape)
    else:
        A_in = A
    sizes, y, x = support.graph_sizes(A_in, stored)
    assert sizes[200] < stored * 1.3  # A once, not per block
    assert sizes[200] - sizes[2] < stored / 4  # the graph grows by tasks only
    got = y.compute(scheduler="threads")
    xs = x.compute()
    support.assert_matvec_close(got, support.reference(A.toarray(), xs, -1), support.magnitude(A.toarray(), xs, -1), 600, "float64")
    p = batchmv.plan(A_in, x)
    assert (p.kernel, p.nnz, p.blocks, p.home) == ("spmm", A.nnz, 200, "dask")


def test_x_chunked_along_the_axis_is_rechunked_and_reported(rng):
    A = sp.random_array((30, 40), density=0.2, format="csc", rng=rng)
    xs = rng.standard_normal((40, 12))
    x = da.from_array(xs, chunks=(10, 4))  # four chunks along the vector axis
    p = batchmv.plan(A, x, axis=0)
    assert p.copies[0].startswith("x: rechunked") and any("A is sparse" in n for n in p.notes)
    y = batchmv.matvec(A, x, axis=0)
    support.assert_matvec_close(y.compute(), support.reference(A.toarray(), xs, 0), support.magnitude(A.toarray(), xs, 0), 40, "float64")
    with pytest.raises(batchmv.CopyRequiredError, match="rechunked"):
        batchmv.matvec(A, x, axis=0, copy=False)
    xt = da.from_array(rng.standard_normal((30, 12)), chunks=(30, 4))
    op = batchmv.prepare(A)
    np.testing.assert_allclose(op.H(xt, axis=0).compute(), A.toarray().T @ xt.compute(), rtol=1e-12)
