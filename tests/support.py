"""Shared helpers for the batchmv test suite.

* Which array libraries are under test (``BATCHMV_TEST_BACKENDS``), as pytest params that
  skip, with a reason, libraries that are not installed or have no engine yet.
* Converting numpy arrays into a home library with the *same strides* (and, where the
  dtype allows, the same memory), so that layouts really reach batchmv.
* A float64/complex128/int64 reference for ``A @ x`` along an axis, and a tolerance that
  scales with the dtype's epsilon and the vector length.
* A fork runner: one child process imports the libraries once and forks a grandchild per
  case, so that a case that aborts the process (some DLPack imports do) fails only itself.

Nothing here imports torch at module level: a run with ``BATCHMV_TEST_BACKENDS=numpy``
must work where torch is not installed.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pytest

import batchmv

#: Array libraries that batchmv does not name: computed by the array-API engine in their own
#: namespace.  They are home libraries of the test matrix, never an engine name (backend=).
ARRAY_API_ONLY = ("array_api_strict",)
#: Every array library the test matrix uses, in its order.
KNOWN_LIBRARIES = ("numpy", "torch", "jax", "cupy", *ARRAY_API_ONLY)
ENV_VAR = "BATCHMV_TEST_BACKENDS"
TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent


# ---------------------------------------------------------------------------------------
# which libraries are under test
# ---------------------------------------------------------------------------------------
def requested_libraries() -> tuple[tuple[str, ...], bool]:
    """(names, explicit): the libraries named by BATCHMV_TEST_BACKENDS, or all known ones."""
    raw = os.environ.get(ENV_VAR, "")
    names = tuple(dict.fromkeys(part.strip().lower() for part in raw.split(",") if part.strip()))
    if names:
        return names, True
    return KNOWN_LIBRARIES, False


def installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def usage_problems() -> list[str]:
    """Why the requested libraries cannot be tested (only for an explicit request)."""
    names, explicit = requested_libraries()
    if not explicit:
        return []
    problems = []
    for name in names:
        if name not in KNOWN_LIBRARIES:
            problems.append(f"{ENV_VAR} names {name!r}, which is not one of {', '.join(KNOWN_LIBRARIES)}")
        elif not installed(name):
            problems.append(f"{ENV_VAR} names {name!r}, but {name} is not installed")
        elif name == "cupy" and cupy_device_problem():
            problems.append(f"{ENV_VAR} names 'cupy', but {cupy_device_problem()}")
    return problems


def skip_reason(name: str) -> str | None:
    """Why library ``name`` cannot be tested here, or None."""
    if not installed(name):
        return f"{name} is not installed"
    if name in ARRAY_API_ONLY:
        return None
    if name not in batchmv.available_backends():
        return f"batchmv has no {name} engine yet"
    if name == "cupy":
        return cupy_device_problem()
    return None


@functools.cache
def cupy_device_problem() -> str | None:
    """Why cupy, although installed, cannot compute here (no driver, no GPU), or None.
    cupy installs and imports on machines without a GPU; its arrays cannot exist there."""
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDARuntimeError (no driver), ImportError (no CUDA libraries)
        return f"no CUDA device: cupy is installed but cannot use a GPU ({type(err).__name__}: {err})"
    return None if count > 0 else "no CUDA device: cupy sees 0 devices"


@functools.cache
def cuda_device_problem() -> str | None:
    """Why no test can run on a CUDA device here, or None when torch or cupy has one."""
    reasons = []
    if installed("torch"):
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() > 0:
            return None
        reasons.append(f"torch {torch.__version__} sees no CUDA device")
    if installed("cupy"):
        problem = cupy_device_problem()
        if problem is None:
            return None
        reasons.append(problem)
    return "no CUDA device" + (f" ({'; '.join(reasons)})" if reasons else " (neither torch nor cupy is installed)")


def lib_device(name: str) -> str:
    """Where this module's arrays of library ``name`` live: "cpu" or "cuda"."""
    if name == "cupy":
        return "cuda"
    if name == "jax" and skip_reason("jax") is None:
        import jax

        return "cpu" if jax.default_backend() == "cpu" else "cuda"
    return "cpu"


def cross_device_reason(*names: str) -> str | None:
    """Why libraries ``names`` cannot meet in one call (their arrays are on different
    devices here, and batchmv never moves data), or None."""
    devices = {name: lib_device(name) for name in names if skip_reason(name) is None}
    if len(set(devices.values())) > 1:
        where = ", ".join(f"{name} on {device}" for name, device in devices.items())
        return f"{where}: arrays on different devices cannot meet (batchmv raises TypeError, see test_gpu.py)"
    return None


def libraries() -> tuple[str, ...]:
    """The requested libraries (whether or not they can run here)."""
    return requested_libraries()[0]


def testable() -> tuple[str, ...]:
    """Requested libraries that are installed and that ``backend=`` can name (an engine)."""
    return tuple(name for name in engine_libraries() if skip_reason(name) is None)


def testable_homes() -> tuple[str, ...]:
    """Requested libraries that are installed: the homes a call can have."""
    return tuple(name for name in home_libraries() if skip_reason(name) is None)


def lib_marks(*names: str) -> list:
    marks = []
    for name in names:
        reason = skip_reason(name)
        if reason:
            marks.append(pytest.mark.skip(reason=reason))
            break
    else:
        reason = cross_device_reason(*names)
        if reason:
            marks.append(pytest.mark.skip(reason=reason))
    return marks


def lib_params() -> list:
    """One pytest param per requested library that batchmv has an engine for (a home library
    and an engine name alike), skipped with a reason where it cannot run."""
    return [pytest.param(name, id=name, marks=lib_marks(name)) for name in engine_libraries()]


def engine_libraries() -> tuple[str, ...]:
    """The requested libraries that ``backend=`` can name."""
    return tuple(name for name in libraries() if name not in ARRAY_API_ONLY)


def home_libraries() -> tuple[str, ...]:
    """The requested libraries whose arrays a call can take (every requested library)."""
    return libraries()


def pair_params() -> list:
    """(home library, engine) params for every pair of requested libraries."""
    return [
        pytest.param(home, engine, id=f"{home}-on-{engine}", marks=lib_marks(home, engine))
        for home in engine_libraries()
        for engine in engine_libraries()
    ]


def need(*names: str) -> None:
    """Skip the current test unless every library in ``names`` is under test and usable."""
    for name in names:
        if name not in libraries():
            pytest.skip(f"{name} is not in {ENV_VAR}")
        reason = skip_reason(name)
        if reason:
            pytest.skip(reason)


def needs(*names: str) -> pytest.MarkDecorator:
    """Marker form of :func:`need`, decided at import time."""
    reasons = [f"{n} is not in {ENV_VAR}" for n in names if n not in libraries()]
    reasons += [r for r in map(skip_reason, names) if r]
    return pytest.mark.skipif(bool(reasons), reason="; ".join(reasons) or "ok")


# ---------------------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------------------
FLOAT_EPS = {
    "float16": 2.0**-10,
    "bfloat16": 2.0**-7,
    "float32": 2.0**-23,
    "float64": 2.0**-52,
    "complex64": 2.0**-23,
    "complex128": 2.0**-52,
}
INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8")


def lib_dtype(lib: str, name: str) -> Any:
    if lib == "numpy":
        return np.dtype(name)
    if lib == "torch":
        import torch

        return getattr(torch, name)
    if lib == "jax":
        import jax.numpy as jnp

        return np.dtype(getattr(jnp, name))
    if lib == "cupy":
        return np.dtype(name)
    if lib in ARRAY_API_ONLY:
        return getattr(importlib.import_module(lib), name)
    raise NotImplementedError(lib)


def dtype_name(dtype: Any) -> str:
    """``float64`` for np.float64, np.dtype('float64'), torch.float64 and
    array_api_strict.float64 alike."""
    return str(dtype).rsplit(".", 1)[-1]


def library_of_array(a: Any) -> str:
    if isinstance(a, np.ndarray):
        return "numpy"
    if "jax" in sys.modules and isinstance(a, sys.modules["jax"].Array):
        return "jax"
    return type(a).__module__.split(".")[0]


def promoted(lib: str, a_dtype: str, x_dtype: str) -> str:
    """The home library's own promotion of two dtype names."""
    if lib in ("numpy", "cupy"):  # cupy promotes like numpy
        return str(np.result_type(np.dtype(a_dtype), np.dtype(x_dtype)))
    if lib == "torch":
        import torch

        return dtype_name(torch.promote_types(lib_dtype("torch", a_dtype), lib_dtype("torch", x_dtype)))
    if lib == "jax":
        import jax.numpy as jnp

        return str(jnp.result_type(lib_dtype("jax", a_dtype), lib_dtype("jax", x_dtype)))
    if lib in ARRAY_API_ONLY:
        xp = importlib.import_module(lib)
        return dtype_name(xp.result_type(lib_dtype(lib, a_dtype), lib_dtype(lib, x_dtype)))
    raise NotImplementedError(lib)


# ---------------------------------------------------------------------------------------
# values and conversion with the same strides
# ---------------------------------------------------------------------------------------
def random_values(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """C-ordered numpy array of values exactly representable in ``dtype`` (float64 or
    complex128 storage for floats so that bfloat16 needs no numpy dtype)."""
    if dtype in INT_DTYPES or dtype.startswith("int") or dtype.startswith("uint"):
        return rng.integers(-3 if not dtype.startswith("u") else 0, 4, size=shape).astype(dtype)
    real = rng.standard_normal(shape)
    if dtype.startswith("complex"):
        real = real + 1j * rng.standard_normal(shape)
    if dtype == "bfloat16":
        import torch

        # round through bfloat16 so the reference sees exactly the tensor's values
        return torch.from_numpy(real).to(torch.bfloat16).to(torch.float64).numpy()
    return real.astype(dtype)


def root_of(view: np.ndarray) -> np.ndarray:
    root = view
    while isinstance(root.base, np.ndarray):
        root = root.base
    return root


def element_geometry(view: np.ndarray, root: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """(shape, strides in elements, offset in elements) of ``view`` inside ``root``."""
    size = view.itemsize
    offset = view.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    assert offset % size == 0 and all(s % size == 0 for s in view.strides), "views must be element-aligned"
    return view.shape, tuple(s // size for s in view.strides), offset // size


def in_lib(root: np.ndarray, views: Iterable[np.ndarray], lib: str, dtype: str | None = None) -> list:
    """``views`` (numpy views into the C-contiguous ``root``) as arrays of ``lib`` with the
    same shapes and element strides, all views into one buffer of ``lib``.

    When ``dtype`` is None or ``root``'s dtype, the buffer is ``root``'s own memory, so
    the results share memory with the numpy views; otherwise ``root`` is converted once
    and every view is rebuilt on the converted buffer.
    """
    assert root.flags.c_contiguous, "root must be a C-contiguous buffer"
    views = list(views)
    dtype = dtype or str(root.dtype)
    geometry = [element_geometry(v, root) for v in views]
    if lib == "numpy":
        if np.dtype(dtype) == root.dtype:
            return views
        flat = root.reshape(-1).astype(dtype)
        size = flat.itemsize
        return [
            np.lib.stride_tricks.as_strided(flat[offset:], shape=shape, strides=tuple(s * size for s in strides))
            for shape, strides, offset in geometry
        ]
    if lib == "torch":
        import torch

        tdtype = lib_dtype("torch", dtype)
        if any(s < 0 for _, strides, _ in geometry for s in strides):
            raise ValueError("torch tensors cannot have negative strides")
        base = torch.from_numpy(root.reshape(-1))
        if base.dtype != tdtype:
            base = base.to(tdtype)
        return [torch.as_strided(base, shape, strides, offset) for shape, strides, offset in geometry]
    if lib == "jax":
        import jax.numpy as jnp

        # jax arrays have no strides to choose: the values, densely laid out by jax
        return [jnp.asarray(v.astype(lib_dtype("jax", dtype))) for v in views]
    if lib in ARRAY_API_ONLY:  # no strides either: the values, in the library's own arrays
        xp = importlib.import_module(lib)
        return [xp.asarray(np.ascontiguousarray(v), dtype=lib_dtype(lib, dtype)) for v in views]
    if lib == "cupy":
        import cupy

        flat = root.reshape(-1)
        base = cupy.asarray(flat if flat.dtype == np.dtype(dtype) else flat.astype(dtype))  # one device buffer
        size = base.itemsize
        return [
            cupy.lib.stride_tricks.as_strided(base[offset:], shape=shape, strides=tuple(s * size for s in strides))
            for shape, strides, offset in geometry
        ]
    raise NotImplementedError(lib)


def to_lib(view: np.ndarray, lib: str, dtype: str | None = None) -> Any:
    """One numpy array in ``lib`` with the same strides (sharing memory when it can)."""
    if lib == "numpy" and dtype in (None, str(view.dtype)):
        return view
    root = root_of(view)
    if root.flags.c_contiguous:
        return in_lib(root, [view], lib, dtype)[0]
    copy = np.ascontiguousarray(view)
    return in_lib(copy, [copy], lib, dtype)[0]


def to_numpy(a: Any) -> np.ndarray:
    """Any test array as a numpy array widened to float64/complex128/int64 (a copy)."""
    if isinstance(a, np.ndarray):
        arr = a
    elif library_of_array(a) == "torch":
        import torch

        t = a.detach().resolve_conj().resolve_neg()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.to(torch.float64)
        arr = t.cpu().numpy()
    elif library_of_array(a) == "cupy":
        arr = a.get()
    elif library_of_array(a) in ARRAY_API_ONLY:
        arr = np.from_dlpack(a)
    else:
        arr = np.asarray(a)
        if arr.dtype.name == "bfloat16":  # jax's ml_dtypes bfloat16
            arr = arr.astype(np.float64)
    if arr.dtype.kind == "c":
        return arr.astype(np.complex128)
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64)
    return arr.astype(np.float64)


def reference(A: Any, x: Any, axis: int) -> np.ndarray:
    """``A @ x`` along ``axis``, in float64/complex128 (int64 for integers)."""
    a64, x64 = to_numpy(A), to_numpy(x)
    if a64.dtype.kind == "c" or x64.dtype.kind == "c":
        a64, x64 = a64.astype(np.complex128), x64.astype(np.complex128)
    elif a64.dtype.kind == "f" or x64.dtype.kind == "f":
        a64, x64 = a64.astype(np.float64), x64.astype(np.float64)
    moved = np.moveaxis(x64, axis, -1)
    y = np.einsum("mn,...n->...m", a64, moved)
    return np.moveaxis(y, -1, axis)


def magnitude(A: Any, x: Any, axis: int) -> np.ndarray:
    """sum_j |A_ij| |x_j|: the scale of each result element's rounding error."""
    return reference(np.abs(to_numpy(A)), np.abs(to_numpy(x)), axis).real


def assert_matvec_close(y: Any, ref: np.ndarray, scale: np.ndarray, n: int, dtype: str) -> None:
    got = to_numpy(y)
    assert got.shape == ref.shape
    if dtype in FLOAT_EPS:
        rtol = 10 * max(n, 1) * FLOAT_EPS[dtype]
        err = np.abs(got - ref)
        bound = rtol * scale + np.finfo(np.float64).tiny
        bad = err > bound
        assert not bad.any(), (
            f"{int(bad.sum())} of {bad.size} elements off: max error {err.max()} "
            f"vs bound {bound[bad].min()} (dtype {dtype}, n={n})"
        )
    else:
        np.testing.assert_array_equal(got, ref)


def same_memory(a: Any, b: Any) -> bool:
    """Whether two arrays (numpy or torch) can touch a common byte."""
    return overlaps(byte_range(a), byte_range(b))


def record_kernels(engine: Any, monkeypatch: Any, note: Any) -> None:
    """Wrap every way a strided engine computes, its ``gemm`` and the kernels that
    ``gemm_kernel`` and ``gemv_kernel`` choose for remembered calls, so that
    ``note(kind, v, a, out, conj)`` sees each kernel call once: kind "gemm" (``v`` is X2)
    or "gemv" (``v`` is the vector x); ``conj``: BLAS's conjugate flag on A."""
    gemm, gemm_kernel, gemv_kernel = engine.gemm, engine.gemm_kernel, engine.gemv_kernel
    inside = [0]  # (a chosen kernel may call gemm: one call, noted once)

    def noted(kind: str, kernel: Any, conj: bool = False) -> Any:
        def run(v: Any, a: Any) -> Any:
            first, matrix = (a, v) if kind == "gemv" else (v, a)  # gemv kernels take (a, x)
            note(kind, first, matrix, None, conj)
            inside[0] += 1
            try:
                return kernel(v, a)
            finally:
                inside[0] -= 1

        return run

    def gemm_(x2: Any, a: Any, out: Any = None, conj: bool = False, trans: bool = True) -> Any:
        if not inside[0]:
            note("gemm", x2, a, out, conj)
        return gemm(x2, a, out, conj, trans)

    def gemm_kernel_(x2: Any, a: Any, trans: bool = True, conj: bool = False) -> Any:
        return noted("gemm", gemm_kernel(x2, a, trans, conj), conj)

    def gemv_kernel_(a: Any, x: Any, trans: bool = False) -> Any:
        kernel = gemv_kernel(a, x, trans)
        return None if kernel is None else noted("gemv", kernel)

    monkeypatch.setattr(engine, "gemm", gemm_)
    monkeypatch.setattr(engine, "gemm_kernel", gemm_kernel_)
    monkeypatch.setattr(engine, "gemv_kernel", gemv_kernel_)


def byte_range(a: Any) -> tuple[int, int]:
    if isinstance(a, np.ndarray):
        ptr = a.__array_interface__["data"][0]
        strides, size, shape = a.strides, a.itemsize, a.shape
    elif library_of_array(a) == "cupy":
        ptr, strides, size, shape = a.data.ptr, a.strides, a.itemsize, a.shape
    else:
        ptr, size, shape = a.data_ptr(), a.element_size(), tuple(a.shape)
        strides = tuple(s * size for s in a.stride())
    if any(s == 0 for s in shape):
        return ptr, ptr
    lo = ptr + sum((n - 1) * s for n, s in zip(shape, strides) if s < 0)
    hi = ptr + sum((n - 1) * s for n, s in zip(shape, strides) if s > 0) + size
    return lo, hi


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


# ---------------------------------------------------------------------------------------
# child processes
# ---------------------------------------------------------------------------------------
def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("BATCHMV_BACKEND", None)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def logged_tensor_class(seen: list[str]) -> type:
    """A torch.Tensor subclass whose ``__torch_function__`` appends the name of every torch
    function called on its tensors to ``seen``, then runs it."""
    import torch

    class Logged(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
            seen.append(getattr(func, "__name__", ""))
            return super().__torch_function__(func, types, args, kwargs or {})

    return Logged


def run_python(code: str, *, timeout: float = 180, env: dict[str, str] | None = None, cwd: Any = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (this one's executable)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else child_env(),
        cwd=cwd,
    )


_FORK_SERVER = r"""
import importlib, importlib.util, json, os, signal, sys, traceback, warnings
warnings.simplefilter("ignore")
module_path, names, preload, per_case = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
for name in preload:
    importlib.import_module(name)
spec = importlib.util.spec_from_file_location("_forked_cases", module_path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
report = {}
for name in names:
    sys.stdout.flush(); sys.stderr.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        signal.alarm(per_case)
        try:
            value = getattr(module, name)()
            payload = {"ok": True, "value": value}
        except BaseException as err:
            payload = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        try:
            data = json.dumps(payload, default=repr).encode()
        except BaseException as err:
            data = json.dumps({"ok": False, "error": f"unserialisable result: {err}"}).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(w, view):]
        os.close(w)
        os._exit(0)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    data = b"".join(chunks)
    report[name] = {"exitcode": code, "payload": json.loads(data) if data else None}
print("@@REPORT@@" + json.dumps(report))
"""


def run_forked(module_file: str, names: list[str], preload: Iterable[str] = (), *, per_case: int = 120, timeout: float = 600) -> dict[str, dict]:
    """Run the zero-argument functions ``names`` of ``module_file``, each in its own forked
    grandchild of one fresh interpreter that has imported ``preload`` once.

    Returns name -> {"exitcode": int (negative: killed by that signal), "payload": {"ok":
    bool, "value" | "error", ...} or None when the grandchild died before reporting}.
    """
    proc = subprocess.run(
        [sys.executable, "-c", _FORK_SERVER, module_file, json.dumps(names), json.dumps(list(preload)), str(per_case)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
    )
    marker = "@@REPORT@@"
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(marker)), None)
    if line is None:
        raise AssertionError(f"fork server failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line[len(marker):])


def check_forked(entry: dict) -> Any:
    """The value a forked case returned; fails the test if it crashed or raised."""
    assert entry["exitcode"] == 0, f"the child process died (exit code {entry['exitcode']}): the call crashed the process"
    payload = entry["payload"]
    assert payload is not None, "the child process reported nothing"
    assert payload["ok"], payload.get("traceback") or payload["error"]
    return payload["value"]


def traced_extra(fn: Any) -> tuple[int, Any]:
    """Peak bytes allocated while ``fn`` runs, beyond what was allocated before it."""
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak - before, result


def pool_growth(cp: Any, call: Any) -> tuple[Any, int]:
    """(result, bytes cupy's memory pool grew by during ``call()``, beyond the result)."""
    cp.cuda.Device().synchronize()
    pool = cp.get_default_memory_pool()
    pool.free_all_blocks()
    before = pool.total_bytes()
    y = call()
    cp.cuda.Device().synchronize()
    return y, pool.total_bytes() - before - y.nbytes


def keys_holding(graph: dict, nbytes: int) -> list:
    """Keys of a dask graph whose pickled value is at least ``nbytes`` long."""
    return [k for k, v in graph.items() if len(pickle.dumps(v)) >= nbytes]


def graph_sizes(A: Any, nbytes: int) -> tuple[dict[int, int], Any, Any]:
    """``batchmv.matvec(A, x)`` on dask x's of 2 and 200 blocks (5 vectors of length 600
    each): checks that one key of each graph holds A (its pickled value is at least
    ``nbytes / 2`` long) and that y has x's blocks; returns ({blocks: pickled graph bytes},
    the last y, its x)."""
    import dask.array as da

    sizes = {}
    for blocks in (2, 200):
        x = da.random.default_rng(0).random((blocks * 5, 600), chunks=(5, 600))
        y = batchmv.matvec(A, x)
        graph = dict(y.__dask_graph__())
        sizes[blocks] = len(pickle.dumps(graph))
        assert len(keys_holding(graph, nbytes // 2)) == 1  # one key holds A
        assert y.npartitions == blocks
    return sizes, y, x
