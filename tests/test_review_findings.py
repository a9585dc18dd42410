"""Problems found by a review that tried to break the library as a new user would, kept as
tests of the kind each belongs to (array-API devices, jax tracing of foreign memory, torch.compile
across libraries).  Every case runs in a fresh interpreter: they involve first calls, tracing
and the call cache.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )


# 1. array-API arrays on a non-default device: a named engine (numpy, torch; and "fastest"
#    whenever it picks one of them) returns the result on CPU_DEVICE.  README: "the result
#    stays in that library and on its device"; batchmv refuses the opposite direction
#    (numpy A with a device1 x: "batchmv never moves data between devices").
#    Observed: y.device == CPU_DEVICE, and `y + X1` then raises in array_api_strict.
#    Expected: y on device1 (like backend=None and prepare), or a TypeError before computing.

@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_array_api_device_kept_with_named_engine(engine):
    pytest.importorskip("array_api_strict")
    pytest.importorskip(engine)
    r = _run(f"""
        import numpy as np, batchmv, array_api_strict as xp
        d1 = xp.Device('device1')
        A = xp.asarray(np.random.rand(8, 4), device=d1)
        X = xp.asarray(np.random.rand(10, 4), device=d1)
        try:
            y = batchmv.matvec(A, X, backend={engine!r})
        except TypeError:
            print("REFUSED")      # acceptable: a clear refusal
        else:
            print("DEVICE", y.device == d1)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() in ("DEVICE True", "REFUSED"), r.stdout


# 2. jax.jit closing over a read-only numpy A whose data is 64-byte aligned (np.load with
#    mmap_mode="r", np.asarray(jax_array), ...).  jax.jit(lambda x: x @ A.T) works;
#    batchmv's jax import of read-only numpy arrays uses jax.device_put, which under jit
#    returns a tracer, and then calls unsafe_buffer_pointer() on it.
#    Observed: jax.errors.ConcretizationTypeError "traced array with shape float32[3,4] ...
#    unsafe_buffer_pointer() ...".  Expected: the result, as for a writable or misaligned A
#    (both work under jit), and as eagerly.

def test_jax_jit_with_readonly_aligned_numpy_A(tmp_path):
    pytest.importorskip("jax")
    r = _run(f"""
        import numpy as np, jax, jax.numpy as jnp, batchmv
        np.save({str(tmp_path / 'A.npy')!r}, np.ones((3, 4), np.float32))
        A = np.load({str(tmp_path / 'A.npy')!r}, mmap_mode="r")
        assert not A.flags.writeable and A.ctypes.data % 64 == 0
        X = jnp.ones((5, 4), jnp.float32)
        y = jax.jit(lambda x: batchmv.matvec(A, x))(X)
        assert np.allclose(np.asarray(y), 4.0)
        print("OK")
    """)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]


# 3. torch.compile (default mode, graph breaks allowed) of a call with a numpy A and a torch
#    x ("Across libraries" in the README).  _call._check_devices -> _checks.dlpack_device
#    calls x.__dlpack_device__() while dynamo traces; dynamo cannot represent the returned
#    DLDeviceType enum.  Observed: AssertionError "Cannot construct `ConstantVariable` for
#    value of type <enum 'DLDeviceType'>" escapes from the compiled function (with
#    fullgraph=True: Unsupported "hasattr call" on the numpy array, a RuntimeError).
#    Expected: the result (as eagerly), or at worst a graph break that runs the call eagerly.

def test_torch_compile_numpy_A_torch_x():
    pytest.importorskip("torch")
    r = _run("""
        import numpy as np, torch, batchmv
        A = np.random.rand(16, 8).astype(np.float32)
        X = torch.randn(5, 8)
        f = torch.compile(lambda x: batchmv.matvec(A, x))
        assert torch.allclose(f(X), X @ torch.from_numpy(A).T, atol=1e-5)
        op = batchmv.prepare(A)  # (the prepared operator's call, and its adjoint, likewise)
        g = torch.compile(lambda x: op(x) * 2 + op.H(op(x)).sum())
        expected = X @ torch.from_numpy(A).T
        assert torch.allclose(g(X), expected * 2 + (expected @ torch.from_numpy(A)).sum(), rtol=1e-4)
        print("OK")
    """)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]
