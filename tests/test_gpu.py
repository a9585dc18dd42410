"""The GPU paths: the cupy engine, torch on CUDA, JAX on a GPU.

Two kinds of tests:

* without a GPU (run everywhere): the cupy engine is registered and selected like the
  others, says what to install when cupy is missing, is not imported by ``import
  batchmv``; arrays on different devices are refused before any DLPack import; the test
  suite's own skip rules for cupy; ``batchmv info``'s device line.
* marked ``gpu`` (``pytest -m gpu``; skipped with "no CUDA device" where there is none):
  results against a float64 reference, no copy (measured by the memory pool's growth
  during a call, with positive controls that do copy), the caller's stream (a race is
  provoked with a busy kernel on a non-blocking stream), devices, and TF32 never used
  unless the caller enabled it.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import batchmv
import support
from batchmv import _registry


def _need_cupy_gpu() -> None:
    reason = support.skip_reason("cupy")
    if reason:
        pytest.skip(reason if reason.startswith("no CUDA device") else f"no CUDA device for cupy: {reason}")


def _need_torch_cuda() -> None:
    if not support.installed("torch"):
        pytest.skip("no CUDA device: torch is not installed")
    import torch

    if not torch.cuda.is_available():
        pytest.skip(f"no CUDA device: torch {torch.__version__} sees none")


# =========================================================================================
# without a GPU
# =========================================================================================
def test_cupy_is_registered_with_an_install_hint():
    spec = _registry.ENGINES["cupy"]
    assert spec.package == "cupy" and "cupy-cuda12x" in spec.install and "GPU" in spec.install
    assert _registry.engine_module_exists("cupy")
    assert (not support.installed("cupy")) or "cupy" in batchmv.available_backends()


@pytest.mark.skipif(support.installed("cupy"), reason="cupy is installed here")
def test_backend_cupy_without_cupy_says_what_to_install():
    for call in (
        lambda: batchmv.matvec(np.ones((2, 3)), np.ones(3), backend="cupy"),
        lambda: batchmv.plan(np.ones((2, 3)), np.ones(3), backend=" CuPy "),
        lambda: batchmv.prepare(np.ones((2, 3)), backend="cupy"),
    ):
        with pytest.raises(ImportError) as err:
            call()
        assert "cupy" in str(err.value) and _registry.ENGINES["cupy"].install in str(err.value)


def test_importing_batchmv_imports_no_gpu_library():
    proc = support.run_python(
        """
        import sys
        import numpy as np
        import batchmv, batchmv.tools.cli
        from batchmv._cublas import cublas_args
        batchmv.available_backends()
        batchmv.matvec(np.ones((2, 3)), np.ones((4, 3)))
        cublas_args(4, 3, 2, (3, 1), (1, 3), (2, 1))
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("cupy", "cupy_backends", "cuda")))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


class _Producer:
    """A DLPack producer on a given device that records whether it was imported."""

    def __init__(self, device: tuple[int, int]):
        self.device, self.exported = device, False

    def __dlpack__(self, **kwargs):
        self.exported = True
        return np.ones((4, 3)).__dlpack__()

    def __dlpack_device__(self):
        return self.device


@pytest.mark.parametrize(
    "a_device, x_device, names",
    [((1, 0), (2, 0), ("cpu", "cuda:0")), ((2, 1), (2, 0), ("cuda:1", "cuda:0")), ((2, 0), (1, 0), ("cuda:0", "cpu"))],
)
def test_inputs_on_two_devices_are_refused_before_any_import(a_device, x_device, names):
    A = np.ones((2, 3)) if a_device == (1, 0) else _Producer(a_device)
    x = _Producer(x_device) if x_device != (1, 0) else np.ones((4, 3))
    with pytest.raises(TypeError, match="never moves data between devices") as err:
        batchmv.matvec(A, x)
    assert f"A ({'numpy' if isinstance(A, np.ndarray) else '_Producer'}) is on {names[0]}" in str(err.value)
    assert f"on {names[1]}" in str(err.value)
    assert not any(getattr(v, "exported", False) for v in (A, x)), "an input was imported before the device check"


def test_numpy_engine_refuses_gpu_memory():
    engine = _registry.get_engine("numpy")
    with pytest.raises(TypeError, match="cuda:3.*nothing is moved"):
        engine.adopt(_Producer((2, 3)), allow_copy=True, writable=False)


def _fake_cupy(count=None, error=None, names=()):
    runtime = types.SimpleNamespace()

    def get_device_count():
        if error is not None:
            raise error
        return count

    runtime.getDeviceCount = get_device_count
    runtime.getDeviceProperties = lambda i: {"name": names[i].encode()}
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime))


@pytest.mark.parametrize(
    "fake, expected",
    [
        (_fake_cupy(error=RuntimeError("cudaErrorInsufficientDriver")), "no CUDA device"),
        (_fake_cupy(count=0), "no CUDA device"),
        (_fake_cupy(count=1, names=("NVIDIA H200",)), None),
    ],
    ids=["no driver", "no device", "one device"],
)
def test_cupy_without_a_usable_gpu_is_skipped_with_the_reason(fake, expected, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake)
    reason = support.cupy_device_problem.__wrapped__()
    assert reason is None if expected is None else expected in reason


def test_info_lists_cupy_devices_or_says_why_there_are_none():
    from batchmv.tools import info

    assert info._cupy_devices(_fake_cupy(count=2, names=("NVIDIA H200", "NVIDIA A100"))) == [
        "cuda:0 (NVIDIA H200)",
        "cuda:1 (NVIDIA A100)",
    ]
    (line,) = info._cupy_devices(_fake_cupy(error=RuntimeError("CUDA driver version is insufficient")))
    assert line.startswith("no usable CUDA device") and "insufficient" in line
    assert info._cupy_devices(_fake_cupy(count=0)) == ["no CUDA device"]


def test_pairs_across_devices_are_skipped_in_the_matrix(monkeypatch):
    monkeypatch.setattr(support, "skip_reason", lambda name: None)
    monkeypatch.setattr(support, "lib_device", lambda name: "cuda" if name == "cupy" else "cpu")
    assert support.cross_device_reason("numpy", "cupy")
    assert support.cross_device_reason("cupy", "cupy") is None
    assert support.cross_device_reason("numpy", "torch") is None
    assert [m.name for m in support.lib_marks("cupy", "torch")] == ["skip"]


# =========================================================================================
# on a GPU: the cupy engine
# =========================================================================================
def _reference_check(y, A, x, axis, dtype, n):
    support.assert_matvec_close(y, support.reference(A, x, axis), support.magnitude(A, x, axis), n, dtype)


CUPY_LAYOUTS = {
    # name: (A from a C-ordered (m, n) numpy array, x from a (b, n) one, axis)
    "C, C": (lambda cp, A: cp.asarray(A), lambda cp, X: cp.asarray(X), -1),
    "F, C": (lambda cp, A: cp.asfortranarray(cp.asarray(A)), lambda cp, X: cp.asarray(X), -1),
    # row slices with a unit stride: cuBLAS reads them with their leading dimension, where
    # cupy.matmul would copy them (neither C- nor F-contiguous)
    "sliced, sliced": (
        lambda cp, A: cp.pad(cp.asarray(A), ((0, 0), (0, 5)))[:, : A.shape[1]],
        lambda cp, X: cp.pad(cp.asarray(X), ((0, 0), (3, 2)))[:, 3:-2],
        -1,
    ),
    "transposed, columns": (
        lambda cp, A: cp.pad(cp.asarray(A).T, ((0, 0), (1, 1)))[:, 1:-1].T,
        lambda cp, X: cp.ascontiguousarray(cp.asarray(X).T),
        0,
    ),
    "C, 3-D permuted": (lambda cp, A: cp.asarray(A), lambda cp, X: cp.asarray(X).reshape(8, -1, X.shape[1]).transpose(1, 0, 2), -1),
}
GPU_DTYPES = ("float32", "float64", "complex64", "complex128", "float16", "int32", "int8", "uint8", "int64")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("layout", CUPY_LAYOUTS)
def test_cupy_layouts_and_dtypes(layout, dtype):
    _need_cupy_gpu()
    import cupy as cp

    a_of, x_of, axis = CUPY_LAYOUTS[layout]
    rng = np.random.default_rng(3)
    A = a_of(cp, support.random_values(rng, (37, 29), dtype))
    x = x_of(cp, support.random_values(rng, (64, 29), dtype))
    plan = batchmv.plan(A, x, axis=axis)
    assert plan.backend == "cupy" and plan.home == "cupy" and plan.copies == (), plan
    y = batchmv.matvec(A, x, axis=axis)
    assert isinstance(y, cp.ndarray) and y.device.id == x.device.id and str(y.dtype) == dtype
    _reference_check(y, A, x, axis, dtype, 29)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float64", "int64", "bool"])
def test_cupy_out_views_and_edge_sizes(dtype):
    _need_cupy_gpu()
    import cupy as cp

    rng = np.random.default_rng(4)
    A = cp.asarray(rng.integers(-3, 4, (5, 7)).astype(dtype))  # small integers: exact in every dtype
    x = cp.asarray(rng.integers(-3, 4, (40, 7)).astype(dtype))
    sentinel = np.array(7).astype(dtype)
    padded = cp.full((40, 9), sentinel, dtype=dtype)
    out = padded[:, 1:6]
    assert batchmv.plan(A, x, out=out).copies == ()
    assert batchmv.matvec(A, x, out=out) is out
    np.testing.assert_array_equal(cp.asnumpy(out), np.matmul(cp.asnumpy(x), cp.asnumpy(A).T))
    assert (padded[:, [0, 6, 7, 8]] == sentinel).all(), "wrote outside out"
    for m, n in ((0, 7), (5, 0), (1, 1)):
        y = batchmv.matvec(cp.ones((m, n), dtype), cp.ones((3, n), dtype))
        np.testing.assert_array_equal(cp.asnumpy(y), np.full((3, m), n, dtype=dtype))


@pytest.mark.gpu
def test_cupy_integers_wrap_like_numpy():
    _need_cupy_gpu()
    import cupy as cp

    A = np.full((3, 300), 100, np.int8)
    x = np.full((2, 300), 3, np.int8)
    y = batchmv.matvec(cp.asarray(A), cp.asarray(x))
    np.testing.assert_array_equal(cp.asnumpy(y), np.matmul(x, A.T))


@pytest.mark.gpu
@pytest.mark.parametrize("layout", CUPY_LAYOUTS)
def test_cupy_makes_no_copy_by_the_memory_pool(layout):
    """The pool grows by (about) the result only; positive controls that copy grow by the copy."""
    _need_cupy_gpu()
    import cupy as cp

    a_of, x_of, axis = CUPY_LAYOUTS[layout]
    rng = np.random.default_rng(5)
    A = a_of(cp, rng.standard_normal((1024, 1536), dtype=np.float32))
    x = x_of(cp, rng.standard_normal((4096, 1536), dtype=np.float32))
    batchmv.matvec(A, x, axis=axis)  # warm-up: cuBLAS handle and workspace
    y, grown = support.pool_growth(cp, lambda: batchmv.matvec(A, x, axis=axis))
    assert grown <= 0.02 * A.nbytes, f"the pool grew by {grown} B beyond the result ({A.nbytes} B in A)"
    _reference_check(y, A, x, axis, "float32", 1536)

    # positive control 1: batchmv on a layout that must be copied (vectors every other element)
    wide = cp.asarray(rng.standard_normal((4096, 2 * 1536), dtype=np.float32))[:, ::2]
    assert batchmv.plan(A, wide).copies
    _, copied = support.pool_growth(cp, lambda: batchmv.matvec(A, wide))
    assert copied >= 0.9 * wide.size * 4, "the meter did not see the copy of x"
    if layout == "sliced, sliced":  # positive control 2: cupy.matmul copies the row slices
        _, copied = support.pool_growth(cp, lambda: cp.matmul(x, A.T))
        assert copied >= 0.9 * x.nbytes, "cupy.matmul did not copy the sliced operands (control failed)"


_SPIN = r"""
extern "C" __global__ void spin(long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) { }
}
"""


@pytest.mark.gpu
def test_cupy_runs_on_the_current_stream():
    """x is rewritten on a non-blocking stream behind a busy kernel, then multiplied on
    that stream: reading it on any other stream would see the old values."""
    _need_cupy_gpu()
    import cupy as cp
    from cupy_backends.cuda.libs import cublas

    spin = cp.RawKernel(_SPIN, "spin")
    rng = np.random.default_rng(6)
    A = cp.asarray(rng.standard_normal((256, 512)))
    new = cp.asarray(rng.standard_normal((2048, 512)))
    handle = cp.cuda.device.get_cublas_handle()
    stream_before = cublas.getStream(handle)
    torch_cuda = support.installed("torch") and __import__("torch").cuda.is_available()
    for backend in ("cupy", "torch") if torch_cuda else ("cupy",):
        x = cp.zeros((2048, 512))
        stream = cp.cuda.Stream(non_blocking=True)
        with stream:
            spin((1,), (1,), (np.int64(2 * 10**9),))  # about a second
            x[...] = new
            y = batchmv.matvec(A, x, backend=backend)
        stream.synchronize()
        np.testing.assert_allclose(cp.asnumpy(y), cp.asnumpy(new @ A.T), rtol=1e-10, atol=1e-10, err_msg=backend)
    assert cublas.getStream(handle) == stream_before, "the cuBLAS handle's stream was not given back"

    # control: the same race on another stream does read the old values
    x = cp.zeros((2048, 512))
    busy, other = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)
    with busy:
        spin((1,), (1,), (np.int64(2 * 10**9),))
        x[...] = new
    with other:
        stale = x @ A.T
    other.synchronize()
    busy.synchronize()
    assert not np.allclose(cp.asnumpy(stale), cp.asnumpy(new @ A.T)), "control: no race provoked"


@pytest.mark.gpu
def test_cupy_float32_is_not_tf32():
    _need_cupy_gpu()
    import cupy as cp

    rng = np.random.default_rng(8)
    A, x = rng.standard_normal((64, 4096), dtype=np.float32), rng.standard_normal((512, 4096), dtype=np.float32)
    y = cp.asnumpy(batchmv.matvec(cp.asarray(A), cp.asarray(x)))
    assert _relative_error(y, A, x) < 2e-6  # TF32 (10-bit mantissa) gives about 1e-5


def _relative_error(y, A, x):
    ref = x.astype(np.float64) @ A.astype(np.float64).T
    scale = np.abs(x.astype(np.float64)) @ np.abs(A.astype(np.float64)).T
    return float(np.max(np.abs(y - ref) / scale))


@pytest.mark.gpu
def test_cupy_devices():
    _need_cupy_gpu()
    import cupy as cp

    A = cp.ones((2, 3))
    with pytest.raises(TypeError, match="cpu.*cuda:0|cuda:0.*cpu"):
        batchmv.matvec(A, np.ones((4, 3)))
    with pytest.raises(TypeError, match="never moves data"):
        batchmv.matvec(np.ones((2, 3)), np.ones((4, 3)), backend="cupy")
    with pytest.raises(TypeError, match="never moves data"):
        batchmv.matvec(A, [1.0, 2.0, 3.0])  # a Python list becomes a numpy array on the CPU
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("one CUDA device: inputs on two GPUs cannot be made")
    with cp.cuda.Device(1):
        A1, x1 = cp.ones((2, 3)), cp.ones((4, 3))
        out1 = cp.empty((4, 2))
    with pytest.raises(TypeError, match="cuda:0.*cuda:1"):
        batchmv.matvec(A, x1)
    with pytest.raises(TypeError, match="out is on cuda:1"):
        batchmv.matvec(A, cp.ones((4, 3)), out=out1)
    with cp.cuda.Device(0):  # the current device does not decide where the work runs
        y = batchmv.matvec(A1, x1)
    assert y.device.id == 1
    np.testing.assert_array_equal(cp.asnumpy(y), np.full((4, 2), 3.0))


@pytest.mark.gpu
def test_cupy_prepare_caches_calls_per_device():
    _need_cupy_gpu()
    import cupy as cp

    op = batchmv.prepare(cp.arange(6.0).reshape(2, 3))
    for _ in range(3):
        y = op(cp.ones((5, 3)))
    np.testing.assert_array_equal(cp.asnumpy(y), np.full((5, 2), [3.0, 12.0]))


# =========================================================================================
# on a GPU: torch CUDA, and crossings with cupy
# =========================================================================================
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64", "float16", "bfloat16"])
def test_torch_cuda_layouts(dtype):
    _need_torch_cuda()
    import torch

    rng = np.random.default_rng(9)
    tdtype = getattr(torch, dtype)
    A_big = torch.as_tensor(support.random_values(rng, (40, 50), "complex64" if dtype == "complex64" else "float64"))
    A = A_big.to("cuda", tdtype)[3:40, 5:34]  # a sliced (padded) A
    x = torch.as_tensor(support.random_values(rng, (64, 40), "complex64" if dtype == "complex64" else "float64"))
    x = x.to("cuda", tdtype)[:, 2:31]  # row slices with a unit stride
    plan = batchmv.plan(A, x)
    assert plan.copies == () and plan.backend == "torch", plan
    y = batchmv.matvec(A, x)
    assert y.device == x.device and y.dtype == tdtype
    _reference_check(y, A, x, -1, dtype, 29)


@pytest.mark.gpu
def test_torch_cuda_makes_no_copy_by_peak_memory():
    _need_torch_cuda()
    import torch

    A = torch.randn(4096, 4096, device="cuda")[:, :4000]  # sliced: leading dimension 4096
    x = torch.randn(8192, 4100, device="cuda")[:, 50:4050]
    batchmv.matvec(A, x)  # warm-up: cuBLAS handle and workspace
    torch.cuda.synchronize()

    def peak(call):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        y = call()
        torch.cuda.synchronize()
        return y, torch.cuda.max_memory_allocated() - base - y.numel() * y.element_size()

    y, grown = peak(lambda: batchmv.matvec(A, x))
    assert grown <= 0.02 * A.numel() * 4, f"peak memory grew by {grown} B beyond the result"
    wide = torch.randn(8192, 8000, device="cuda")[:, ::2]  # control: must be copied
    assert batchmv.plan(A, wide).copies
    _, copied = peak(lambda: batchmv.matvec(A, wide))
    assert copied >= 0.9 * wide.numel() * 4, "the meter did not see the copy (control failed)"


@pytest.mark.gpu
def test_torch_cuda_stream_and_dlpack_crossing():
    _need_torch_cuda()
    import torch

    if not hasattr(torch.cuda, "_sleep"):
        pytest.skip("torch.cuda._sleep is not available to delay a stream")
    A = torch.randn(256, 512, device="cuda", dtype=torch.float64)
    new = torch.randn(2048, 512, device="cuda", dtype=torch.float64)
    backends = ["torch"] + (["cupy"] if support.skip_reason("cupy") is None else [])
    for backend in backends:
        x = torch.zeros(2048, 512, device="cuda", dtype=torch.float64)
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            torch.cuda._sleep(2 * 10**9)
            x.copy_(new)
            y = batchmv.matvec(A, x, backend=backend)
        stream.synchronize()
        assert isinstance(y, torch.Tensor) and y.device == x.device
        torch.testing.assert_close(y, new @ A.T, msg=backend)


@pytest.mark.gpu
def test_torch_cuda_tf32_is_the_callers_choice():
    _need_torch_cuda()
    import torch

    before = (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
    rng = np.random.default_rng(10)
    A, x = rng.standard_normal((64, 4096), dtype=np.float32), rng.standard_normal((512, 4096), dtype=np.float32)
    A_t, x_t = torch.as_tensor(A, device="cuda"), torch.as_tensor(x, device="cuda")
    if not before[0]:
        y = batchmv.matvec(A_t, x_t).cpu().numpy()
        assert _relative_error(y, A, x) < 2e-6
    assert (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()) == before, "a setting changed"
    try:  # the caller's choice is respected: TF32 when they enable it (on GPUs that have it)
        torch.backends.cuda.matmul.allow_tf32 = True
        y = batchmv.matvec(A_t, x_t).cpu().numpy()
        if _relative_error(y, A, x) < 2e-6:
            pytest.skip("cuBLAS did not use TF32 here even when allowed: the control shows nothing")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before[0]


@pytest.mark.gpu
def test_torch_cuda_devices_and_dtypes():
    _need_torch_cuda()
    import torch

    A = torch.ones(2, 3, device="cuda")
    with pytest.raises(TypeError, match="cuda:0.*cpu|cpu.*cuda:0"):
        batchmv.matvec(A, np.ones((4, 3), np.float32))  # refused before torch imports numpy's x
    with pytest.raises(TypeError, match="integer kernel on CUDA"):
        batchmv.matvec(A.int(), torch.ones(4, 3, device="cuda", dtype=torch.int32))
    with pytest.raises(TypeError, match="numpy cannot use a tensor on cuda"):
        batchmv.matvec(A, torch.ones(4, 3, device="cuda"), backend="numpy")
    if torch.cuda.device_count() >= 2:
        with pytest.raises(TypeError, match="cuda:0.*cuda:1"):
            batchmv.matvec(A, torch.ones(4, 3, device="cuda:1"))


@pytest.mark.gpu
def test_cupy_and_torch_share_cuda_memory():
    _need_cupy_gpu()
    _need_torch_cuda()
    import cupy as cp
    import torch

    A_cp = cp.asarray(np.random.default_rng(11).standard_normal((6, 5)))
    x_t = torch.randn(30, 5, device="cuda", dtype=torch.float64)
    plan = batchmv.plan(A_cp, x_t)
    assert plan.home == "torch" and plan.copies == ()
    y = batchmv.matvec(A_cp, x_t)
    torch.testing.assert_close(y, x_t @ torch.as_tensor(A_cp.get(), device="cuda").T)
    y_cp = batchmv.matvec(cp.asarray(A_cp), cp.asarray(x_t), backend="torch")  # cupy result, torch computes
    assert isinstance(y_cp, cp.ndarray) and batchmv.plan(A_cp, cp.asarray(x_t), backend="torch").copies == ()
    with pytest.raises(TypeError, match="never moves data"):
        batchmv.matvec(A_cp, torch.ones(4, 5, dtype=torch.float64))  # torch x on the CPU


# =========================================================================================
# on a GPU: JAX
# =========================================================================================
@pytest.mark.gpu
def test_jax_gpu_float32_is_not_tf32():
    if "jax" not in support.testable():
        pytest.skip("no CUDA device for jax: jax is not tested here")
    import jax

    if jax.default_backend() == "cpu":
        pytest.skip("no CUDA device: jax runs on the CPU here")
    rng = np.random.default_rng(12)
    A, x = rng.standard_normal((64, 4096), dtype=np.float32), rng.standard_normal((512, 4096), dtype=np.float32)
    y = np.asarray(batchmv.matvec(jax.numpy.asarray(A), jax.numpy.asarray(x)))
    assert _relative_error(y, A, x) < 2e-6  # precision HIGHEST: no TF32 / bf16 passes
    with pytest.raises(TypeError, match="never moves data"):
        batchmv.matvec(A, jax.numpy.asarray(x))


@pytest.mark.gpu
def test_info_lists_the_gpus():
    if support.cuda_device_problem():
        pytest.skip(support.cuda_device_problem())
    proc = support.run_python("from batchmv.tools.cli import main; main(['info'])")
    assert proc.returncode == 0, proc.stderr
    assert "cuda:0 (" in proc.stdout, proc.stdout
