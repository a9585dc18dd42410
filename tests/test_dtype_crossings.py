"""dtypes that one library has and another cannot carry or compute (issue 10, kind 3).

For every home library and each of its dtypes, every crossing: an explicit engine of another
library (x and A crossing), ``backend="fastest"``, ``plan``, and a plain call whose A comes
from one library and x from another.  Each either computes the exact result (inputs of 0
and 1, so every dtype holds the products exactly) or raises the documented TypeError naming
the dtype and the engine; never another exception, never a crash.  "fastest" considers only
engines that can take the dtype, so it never fails where the home engine computes.

Each (library, dtype) runs in its own forked child: some DLPack imports can abort a process.
"""

from __future__ import annotations

import numpy as np
import pytest

import support

DTYPES = {
    "numpy": ["float16", "float32", "complex64", "int8", "uint16", "uint64", "bool", "longdouble"],
    "torch": ["bfloat16", "float16", "float32", "complex64", "int8", "uint16", "complex32", "float8_e4m3fn", "bool"],
    "jax": ["bfloat16", "float16", "float32", "int8", "uint32", "int4", "float8_e4m3fn", "bool"],
}
OTHERS = ("numpy", "torch", "jax")


def _make(lib: str, values: np.ndarray, dtype: str):
    if lib == "numpy":
        return values.astype(np.dtype(dtype))
    if lib == "torch":
        import torch

        return torch.from_numpy(values.astype(np.float32)).to(getattr(torch, dtype))
    import jax.numpy as jnp

    return jnp.asarray(values.astype(np.float32)).astype(getattr(jnp, dtype))


def _as_float64(y) -> np.ndarray:
    if type(y).__module__.startswith("torch"):
        return y.detach().to(dtype=__import__("torch").float64).numpy()
    return np.asarray(np.asarray(y, dtype=np.float32) if "jax" in type(y).__module__ else y, dtype=np.float64)


def _outcome(call, expected: np.ndarray, home: str, dtype: str, engine: str) -> str:
    import batchmv

    try:
        y = call()
    except TypeError as err:
        text = str(err)
        assert engine in text or "engine" in text, f"TypeError does not name the engine: {text}"
        return "TypeError: " + text
    if isinstance(y, batchmv.Plan):
        return f"plan: {y.backend}"
    assert support.library_of_array(y) == home, f"result of {type(y)} for a {home} home"
    got = _as_float64(y)
    want = (expected > 0).astype(np.float64) if dtype == "bool" else expected
    np.testing.assert_array_equal(got, want)
    return "ok"


def _case(home: str, dtype: str) -> dict:
    import batchmv

    rng = np.random.default_rng(0)
    a01, x01 = rng.integers(0, 2, (3, 4)).astype(np.float64), rng.integers(0, 2, (5, 4)).astype(np.float64)
    expected = x01 @ a01.T
    A, x = _make(home, a01, dtype), _make(home, x01, dtype)
    report = {}
    home_ok = _outcome(lambda: batchmv.matvec(A, x), expected, home, dtype, home)
    report["home engine"] = home_ok
    for other in OTHERS:
        if other == home or other not in batchmv.available_backends():
            continue
        report[f"engine {other}"] = _outcome(lambda: batchmv.matvec(A, x, backend=other), expected, home, dtype, other)
        report[f"plan {other}"] = _outcome(lambda: batchmv.plan(A, x, backend=other), expected, home, dtype, other)
        x_other = _make(other, x01, "float32")  # A of this dtype, x of another library: x's home
        report[f"A into {other}"] = _outcome(lambda: batchmv.matvec(A, x_other), x01 @ a01.T, other, "float32", other)
    report["fastest"] = _outcome(lambda: batchmv.matvec(A, x, backend="fastest"), expected, home, dtype, home)
    report["plan fastest"] = _outcome(lambda: batchmv.plan(A, x, backend="fastest"), expected, home, dtype, home)
    if home_ok == "ok":
        assert report["fastest"] == "ok", report  # "fastest" never fails where the home engine works
    for name, result in report.items():
        if result.startswith("TypeError") and name != "home engine" and not name.startswith("A into"):
            assert dtype.replace("longdouble", "float128") in result or dtype in result, (name, result)
    return report


CASES = []
for _home, _dtypes in DTYPES.items():
    for _dtype in _dtypes:
        _name = f"case_{_home}_{_dtype}"
        globals()[_name] = (lambda h, d: lambda: _case(h, d))(_home, _dtype)
        CASES.append(_name)


@pytest.fixture(scope="module")
def forked_report():
    support.need(*OTHERS)
    return support.run_forked(__file__, CASES, preload=("numpy", "torch", "jax", "batchmv", "_jax_x64"))


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_dtype_crossing(forked_report, case):
    support.check_forked(forked_report[case])
