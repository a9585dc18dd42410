"""ndarray subclasses whose data alone is not their meaning (issue 10, kind 2): masked
arrays and subclasses that override numpy's functions are refused with a TypeError that
says what to do, on every engine and home library, with copy=False, in plan and prepare;
subclasses whose data is their meaning (np.matrix, np.memmap, np.recarray) still work."""

from __future__ import annotations

import numpy as np
import pytest

import batchmv
import support


class Quantity(np.ndarray):
    """A unit-carrying array, as astropy's and others are: numpy's functions keep the unit."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = [np.asarray(v) for v in inputs]
        return getattr(ufunc, method)(*plain, **kwargs).view(Quantity)


def _masked(shape):
    data = np.ones(shape)
    mask = np.zeros(shape, bool)
    mask.flat[-1] = True
    data.flat[-1] = 1e30  # what the masked entry hides
    return np.ma.masked_array(data, mask=mask)


SUBCLASSES = {
    "masked": (_masked, "np.ma.filled(arr, 0)"),
    "quantity": (lambda shape: np.ones(shape).view(Quantity), "np.asarray(arr)"),
}


def _calls(A, x, lib, engine):
    """Every way a user can hand the arrays to batchmv, by name."""
    return {
        "matvec": lambda: batchmv.matvec(A, x, backend=engine),
        "matvec copy=False": lambda: batchmv.matvec(A, x, backend=engine, copy=False),
        "plan": lambda: batchmv.plan(A, x, backend=engine),
        "fastest": lambda: batchmv.matvec(A, x, backend="fastest"),
        "prepare": lambda: batchmv.prepare(A, backend=engine)(x),
    }


@pytest.mark.parametrize("kind", sorted(SUBCLASSES))
@pytest.mark.parametrize("operand", ["A", "x"])
@pytest.mark.parametrize("other", support.lib_params())
@pytest.mark.parametrize("engine", ["auto", *support.testable()])
def test_subclasses_that_carry_meaning_are_refused(kind, operand, other, engine):
    support.need(other)
    if engine not in ("auto", "numpy", other) or support.cross_device_reason(other, "numpy"):
        pytest.skip("an engine of a third library: the same crossing as its own")
    make, advice = SUBCLASSES[kind]
    A = make((3, 2)) if operand == "A" else support.to_lib(np.ones((3, 2)), other)
    x = make((4, 2)) if operand == "x" else support.to_lib(np.ones((4, 2)), other)
    for name, call in _calls(A, x, other, engine).items():
        if name == "prepare" and operand == "x" and engine == "auto" and other != "numpy":
            continue  # A's library is the home; x of another library is computed there too
        with pytest.raises(TypeError, match=r"(?s)" + advice.replace("(", r"\(").replace(")", r"\)")) as err:
            call()
        assert f"{operand}" in str(err.value), (name, str(err.value))


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_subclasses_whose_data_is_their_meaning_still_work(tmp_path):
    A = np.arange(6.0).reshape(3, 2)
    x = np.arange(8.0).reshape(4, 2)
    memmap = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float64, shape=(4, 2))
    memmap[...] = x
    for xs in (np.asmatrix(x), memmap, x.view(np.recarray)):
        np.testing.assert_allclose(np.asarray(batchmv.matvec(A, xs)), x @ A.T)
    np.testing.assert_allclose(batchmv.matvec(np.asmatrix(A), x), x @ A.T)


def test_the_reported_masked_array():
    A = np.eye(2)
    x = np.ma.masked_array([[1.0, 1e30]], mask=[[False, True]])
    with pytest.raises(TypeError, match="masked"):
        batchmv.matvec(A, x)
    np.testing.assert_array_equal(batchmv.matvec(A, np.ma.filled(x, 0)), [[1.0, 0.0]])
