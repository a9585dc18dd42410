"""Crossings between array libraries: numpy arrays on the torch engine, torch tensors on the
numpy engine, DLPack-only objects, mixed and Python-sequence operands.

Each case runs in its own child process (forked from one interpreter that imported the
libraries once): the hazard is that some DLPack imports abort the process instead of
raising.  A case checks the result's library and values against the float64 reference
and that ``plan`` reports a copy exactly where one is needed.
"""

from __future__ import annotations

import numpy as np
import pytest

import batchmv
import support

pytestmark = support.needs("numpy", "torch")

M, N = 4, 6


# ---------------------------------------------------------------------------------------
# helpers (they run in the child)
# ---------------------------------------------------------------------------------------
def values(shape, dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(shape)
    if dtype.startswith("complex"):
        v = v + 1j * rng.standard_normal(shape)
    return v.astype(dtype)


def check(A, x, *, home: str, copy: bool, axis: int = -1, backend=None, ref=None, dtype="float64") -> dict:
    """Run plan and matvec; check the result's library, values and the copies reported."""
    plan = batchmv.plan(A, x, axis=axis, backend=backend)
    if ref is None:
        ref = support.reference(A, x, axis)
    scale = np.abs(ref) + support.magnitude(A, x, axis) if ref is not None else None
    y = batchmv.matvec(A, x, axis=axis, backend=backend)
    assert support.library_of_array(y) == home, f"result is {type(y)}, expected a {home} array"
    support.assert_matvec_close(y, ref, scale, N, dtype)
    assert bool(plan.copies) == copy, f"copies reported: {plan.copies}, expected {'some' if copy else 'none'}"
    if not copy:
        with_copy_false = batchmv.matvec(A, x, axis=axis, backend=backend, copy=False)
        support.assert_matvec_close(with_copy_false, ref, scale, N, dtype)
    else:
        try:
            batchmv.matvec(A, x, axis=axis, backend=backend, copy=False)
        except batchmv.CopyRequiredError:
            pass
        else:
            raise AssertionError("copy=False did not refuse a call that needs a copy")
    return {"copies": list(plan.copies), "backend": plan.backend}


def t(a):
    """A numpy array as a tensor with the same strides, sharing memory."""
    return support.to_lib(a, "torch")


# ---------------------------------------------------------------------------------------
# numpy arrays on the torch engine
# ---------------------------------------------------------------------------------------
def np_x():
    return values((7, N), seed=1)


def case_numpy_to_torch_C():
    return check(values((M, N)), np_x(), home="numpy", copy=False, backend="torch")


def case_numpy_to_torch_F():
    return check(np.asfortranarray(values((M, N))), np_x(), home="numpy", copy=False, backend="torch")


def case_numpy_to_torch_transposed():
    A = values((N + 1, M + 1))[1:, :M].T
    x = values((N, 7), seed=1).T  # x transposed too: vectors along its last axis, stride 7
    return check(A, x, home="numpy", copy=False, backend="torch")


def case_numpy_to_torch_negative_strides():
    out = check(values((M, N))[::-1, ::-1], np_x(), home="numpy", copy=True, backend="torch")
    assert any("negative strides" in c for c in out["copies"]), out
    return out


def case_numpy_to_torch_negative_strides_x():
    out = check(values((M, N)), np_x()[::-1], home="numpy", copy=True, backend="torch")
    assert any(c.startswith("x") for c in out["copies"]), out
    return out


def case_numpy_to_torch_zero_stride_A():
    A = np.broadcast_to(values((1, N)), (M, N))  # BLAS cannot read stride 0: one copy of A
    out = check(A, np_x(), home="numpy", copy=True, backend="torch")
    assert all(c.startswith("A") for c in out["copies"]), out
    return out


def case_numpy_to_torch_zero_stride_x():
    x = np.broadcast_to(values((1, N), seed=1), (9, N))  # one distinct vector, computed once
    return check(values((M, N)), x, home="numpy", copy=False, backend="torch")


def case_numpy_to_torch_read_only():
    A, x = values((M, N)), np_x()
    A.flags.writeable = False
    x.flags.writeable = False
    before = A.copy(), x.copy()
    out = check(A, x, home="numpy", copy=False, backend="torch")
    assert not A.flags.writeable and not x.flags.writeable
    np.testing.assert_array_equal(A, before[0])
    np.testing.assert_array_equal(x, before[1])
    return out


def misaligned(shape, seed=1):
    count = int(np.prod(shape))
    buf = bytearray(8 * count + 1)
    arr = np.frombuffer(buf, dtype=np.float64, count=count, offset=1).reshape(shape)
    assert not arr.flags.aligned
    arr[...] = values(shape, seed=seed)
    return arr


def case_numpy_to_torch_misaligned():
    out = check(values((M, N)), misaligned((7, N)), home="numpy", copy=True, backend="torch")
    assert any("misaligned" in c for c in out["copies"]), out
    return out


def case_numpy_misaligned_on_numpy():
    # numpy's matmul handles unaligned data; the numpy engine must not crash on it either
    A = misaligned((M, N), seed=0)
    y = batchmv.matvec(A, np_x())
    support.assert_matvec_close(y, support.reference(A, np_x(), -1), support.magnitude(A, np_x(), -1), N, "float64")
    return {}


def case_numpy_to_torch_byte_swapped():
    A = values((M, N)).astype(">f8")
    out = check(A, np_x(), home="numpy", copy=True, backend="torch")
    assert any("byte order" in c for c in out["copies"]), out
    return out


def case_numpy_byte_swapped_on_numpy():
    A = values((M, N)).astype(">f8")
    y = batchmv.matvec(A, np_x().astype(">f8"))
    support.assert_matvec_close(y, support.reference(A, np_x(), -1), support.magnitude(A, np_x(), -1), N, "float64")
    return {"dtype": str(y.dtype)}


def case_numpy_out_on_torch_engine():
    A, x = values((M, N)), np_x()
    out = np.zeros((7, M))
    y = batchmv.matvec(A, x, out=out, backend="torch")
    assert y is out
    support.assert_matvec_close(out, support.reference(A, x, -1), support.magnitude(A, x, -1), N, "float64")
    assert batchmv.plan(A, x, out=out, backend="torch").copies == ()
    return {}


# ---------------------------------------------------------------------------------------
# torch tensors on the numpy engine
# ---------------------------------------------------------------------------------------
def t_x():
    return t(values((7, N), seed=1))


def case_torch_to_numpy_C():
    return check(t(values((M, N))), t_x(), home="torch", copy=False, backend="numpy")


def case_torch_to_numpy_F():
    return check(t(values((N, M))).T, t_x(), home="torch", copy=False, backend="numpy")


def case_torch_to_numpy_transposed():
    A = t(values((N + 1, M + 1)))[1:, :M].T
    return check(A, t(values((N, 7), seed=1)).T, home="torch", copy=False, backend="numpy")


def case_torch_to_numpy_zero_stride():
    A = t(values((1, N))).expand(M, N)
    out = check(A, t_x(), home="torch", copy=True, backend="numpy")
    x = t(values((1, N), seed=1)).expand(9, N)
    check(t(values((M, N))), x, home="torch", copy=False, backend="numpy")
    return out


def case_torch_to_numpy_conj_bit():
    import torch

    base = t(values((M, N), "complex128"))
    A = base.conj()
    assert A.is_conj()
    x = t(values((7, N), "complex128", seed=1))
    ref = support.reference(np.conj(values((M, N), "complex128")), x, -1)  # independent of torch
    out = check(A, x, home="torch", copy=True, backend="numpy", ref=ref, dtype="complex128")
    assert any("conjugate" in c for c in out["copies"]), out
    ref = support.reference(base, np.conj(values((7, N), "complex128", seed=1)), -1)
    check(base, x.conj(), home="torch", copy=True, backend="numpy", ref=ref, dtype="complex128")
    return out


def case_torch_to_numpy_neg_bit():
    import torch

    base = t(values((M, N)))
    A = torch._neg_view(base)
    assert A.is_neg()
    ref = -support.reference(values((M, N)), values((7, N), seed=1), -1)
    out = check(A, t_x(), home="torch", copy=True, backend="numpy", ref=ref)
    assert any("negative" in c for c in out["copies"]), out
    return out


def case_torch_conj_and_neg_bits_on_torch():
    import torch

    base = t(values((M, N), "complex128"))
    x = t(values((7, N), "complex128", seed=1))
    ref = support.reference(np.conj(values((M, N), "complex128")), x, -1)
    # a lazy conjugate is read through BLAS's conjugate flag (issue 12), or x and y are
    # conjugated: never a copy of A; a lazy negative bit is still resolved into a copy
    check(base.conj(), x, home="torch", copy=False, ref=ref, dtype="complex128")
    ref = -support.reference(base, x, -1)
    check(torch._neg_view(base), x, home="torch", copy=True, ref=ref, dtype="complex128")
    return {}


def case_torch_out_on_numpy_engine():
    import torch

    A, x = t(values((M, N))), t_x()
    out = torch.zeros(7, M, dtype=torch.float64)
    y = batchmv.matvec(A, x, out=out, backend="numpy")
    assert y is out
    support.assert_matvec_close(out, support.reference(A, x, -1), support.magnitude(A, x, -1), N, "float64")
    assert batchmv.plan(A, x, out=out, backend="numpy").copies == ()
    return {}


# ---------------------------------------------------------------------------------------
# objects that only speak DLPack, mixed operands, Python sequences
# ---------------------------------------------------------------------------------------
class DLPackOnly:
    """A minimal DLPack producer: it only delegates to a numpy array's protocol methods."""

    def __init__(self, arr):
        self._arr = arr
        self.exports = 0

    def __dlpack__(self, **kwargs):
        self.exports += 1
        return self._arr.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._arr.__dlpack_device__()


def case_dlpack_only_object():
    import torch

    A_np, x_np = values((M, N)), np_x()
    x = DLPackOnly(x_np)
    y = batchmv.matvec(A_np, x)
    assert isinstance(y, torch.Tensor), f"result is {type(y)}, expected a torch tensor"
    assert x.exports >= 1
    support.assert_matvec_close(y, support.reference(A_np, x_np, -1), support.magnitude(A_np, x_np, -1), N, "float64")
    A = DLPackOnly(A_np)
    y = batchmv.matvec(A, DLPackOnly(x_np), backend="numpy")
    assert isinstance(y, torch.Tensor)
    support.assert_matvec_close(y, support.reference(A_np, x_np, -1), support.magnitude(A_np, x_np, -1), N, "float64")
    return {}


def case_numpy_A_torch_x_shares_A():
    from batchmv import _registry

    A = values((M, N))
    x = t_x()
    plan = batchmv.plan(A, x)
    assert plan.backend == "torch" and plan.copies == (), plan
    seen = []
    note = lambda kind, v, a, out, conj: seen.append(support.byte_range(a))  # noqa: E731
    support.record_kernels(_registry.get_engine("torch"), pytest.MonkeyPatch(), note)  # (the child ends after the case)
    y = batchmv.matvec(A, x)
    assert support.library_of_array(y) == "torch"
    a_range = support.byte_range(A)
    assert len(seen) == 1 and a_range[0] <= seen[0][0] and seen[0][1] <= a_range[1], "A was not shared"
    support.assert_matvec_close(y, support.reference(A, x, -1), support.magnitude(A, x, -1), N, "float64")
    return {}


def case_torch_A_numpy_x():
    A, x = t(values((M, N))), np_x()
    out = check(A, x, home="numpy", copy=False)
    assert out["backend"] == "numpy"
    return out


def case_python_lists():
    A_list = values((M, N)).tolist()
    x_list = np_x().tolist()
    y = batchmv.matvec(t(values((M, N))), x_list)
    assert support.library_of_array(y) == "torch"
    support.assert_matvec_close(y, support.reference(values((M, N)), np_x(), -1), support.magnitude(values((M, N)), np_x(), -1), N, "float64")
    y = batchmv.matvec(A_list, x_list)
    assert isinstance(y, np.ndarray)
    support.assert_matvec_close(y, support.reference(values((M, N)), np_x(), -1), support.magnitude(values((M, N)), np_x(), -1), N, "float64")
    y = batchmv.matvec(A_list, t_x())
    assert support.library_of_array(y) == "torch"
    plan = batchmv.plan(A_list, x_list)
    assert any("list" in c for c in plan.copies), plan.copies
    return {}


CASES = sorted(name for name in dict(globals()) if name.startswith("case_"))


@pytest.fixture(scope="module")
def forked_report():
    return support.run_forked(__file__, CASES, preload=("numpy", "torch", "batchmv"))


@pytest.mark.parametrize("case", CASES)
def test_crossing(forked_report, case):
    support.check_forked(forked_report[case])
