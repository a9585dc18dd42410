"""Every error batchmv raises: its type and what its message tells the user.

And a batch of strange inputs in a child process: none may crash the interpreter.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import batchmv
import support
from batchmv import _registry

torch_only = support.needs("torch")


def lib_arrays(lib: str, *arrays: np.ndarray) -> list:
    return [support.to_lib(a, lib) for a in arrays]


# ---------------------------------------------------------------------------------------
# A and x
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("a_shape", [(3,), (2, 3, 4), ()])
def test_a_not_2d(xp_name, a_shape):
    A, x = lib_arrays(xp_name, np.ones(a_shape), np.ones((5, 3)))
    with pytest.raises(ValueError, match="A must be 2-D") as err:
        batchmv.matvec(A, x)
    assert str(a_shape) in str(err.value)


def test_x_scalar(xp_name):
    (A,) = lib_arrays(xp_name, np.ones((2, 3)))
    for x in (support.to_lib(np.array(1.0), xp_name), 1.0):
        if isinstance(x, float) and support.lib_device(xp_name) != "cpu":
            with pytest.raises(TypeError, match="never moves data"):  # numpy makes it, on the CPU
                batchmv.matvec(A, x)
            continue
        with pytest.raises(ValueError, match="x must be at least 1-D") as err:
            batchmv.matvec(A, x)
        assert "()" in str(err.value)


def test_x_numpy_scalar():
    for x in (np.float64(1.0), np.int32(2), np.complex64(1j)):
        with pytest.raises(ValueError, match="at least 1-D"):
            batchmv.matvec(np.ones((2, 1)), x)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_shape_mismatch_names_both_shapes_and_axis(xp_name, axis):
    A, x = lib_arrays(xp_name, np.ones((2, 3)), np.ones((4, 5)))
    with pytest.raises(ValueError) as err:
        batchmv.matvec(A, x, axis=axis)
    msg = str(err.value)
    assert "(2, 3)" in msg and "(4, 5)" in msg and f"axis={axis}" in msg


@pytest.mark.parametrize("axis", [2, -3, 10, -100, 2**70])
def test_axis_out_of_range(xp_name, axis):
    A, x = lib_arrays(xp_name, np.ones((2, 3)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="out of range") as err:
        batchmv.matvec(A, x, axis=axis)
    assert "(4, 3)" in str(err.value)


@pytest.mark.parametrize("axis", [1.0, "1", None, True, [1], np.float64(1.0)])
def test_axis_not_an_integer(axis):
    with pytest.raises(TypeError, match="axis must be an integer"):
        batchmv.matvec(np.ones((2, 3)), np.ones((4, 3)), axis=axis)


def test_axis_accepts_integer_types():
    y = batchmv.matvec(np.ones((2, 3)), np.ones((3, 4)), axis=np.int8(0))
    assert y.shape == (2, 4)


@pytest.mark.parametrize("bad", [{}, object(), {1, 2}, "abc", b"abc", None, Ellipsis], ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("which", ["A", "x"])
def test_unsupported_types_named(bad, which):
    A, x = (bad, np.ones(3)) if which == "A" else (np.ones((2, 3)), bad)
    with pytest.raises(TypeError) as err:
        batchmv.matvec(A, x)
    assert type(bad).__name__ in str(err.value)
    assert which in str(err.value)


@pytest.mark.parametrize("dtype", ["U3", "S3", "O", "M8[s]", "V8", [("a", "f8"), ("b", "f8")]], ids=str)
def test_non_numeric_numpy_arrays(dtype):
    x = np.zeros(3, dtype=dtype)
    with pytest.raises(TypeError, match="dtype"):
        batchmv.matvec(np.ones((2, 3)), x)
    with pytest.raises(TypeError, match="dtype"):
        batchmv.matvec(x.reshape(1, 3), np.ones(3))


def test_list_of_strings():
    with pytest.raises(TypeError, match="dtype"):
        batchmv.matvec([["a", "b"]], ["c", "d"])


@torch_only
@pytest.mark.parametrize("dtype", ["bool", "uint16", "uint32"])
def test_torch_unsupported_dtypes(dtype):
    import torch

    A = torch.zeros(2, 3, dtype=getattr(torch, dtype))
    x = torch.zeros(4, 3, dtype=getattr(torch, dtype))
    with pytest.raises(TypeError, match=dtype.replace("uint", "UInt") + "|" + dtype):
        batchmv.matvec(A, x)


# ---------------------------------------------------------------------------------------
# out
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("pair", [("numpy", "torch"), ("torch", "numpy")], ids=lambda p: f"{p[0]}-x-{p[1]}-out")
def test_out_wrong_library(pair):
    home, other = pair
    support.need(home, other)
    A, x = lib_arrays(home, np.ones((2, 3)), np.ones((4, 3)))
    out = support.to_lib(np.zeros((4, 2)), other)
    with pytest.raises(TypeError, match=f"out must be a {home} array"):
        batchmv.matvec(A, x, out=out)


def test_out_wrong_shape(xp_name):
    if xp_name == "jax":
        pytest.skip("jax arrays cannot be written: out= is refused before its shape matters")
    A, x, out = lib_arrays(xp_name, np.ones((2, 3)), np.ones((4, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"out has shape .*\(2, 4\).*\(4, 2\)"):
        batchmv.matvec(A, x, out=out)


def test_out_wrong_dtype(xp_name):
    if xp_name == "jax":
        pytest.skip("jax arrays cannot be written: out= is refused before its dtype matters")
    A, x = lib_arrays(xp_name, np.ones((2, 3)), np.ones((4, 3)))
    out = support.to_lib(np.zeros((4, 2)), xp_name, "float32")
    with pytest.raises(TypeError, match="float32.*float64"):
        batchmv.matvec(A, x, out=out)


def test_out_read_only_numpy():
    out = np.zeros((4, 2))
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        batchmv.matvec(np.ones((2, 3)), np.ones((4, 3)), out=out)
    assert not out.any()


@torch_only
def test_out_inference_tensor_outside_inference_mode():
    import torch

    with torch.inference_mode():
        out = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="read-only"):
        batchmv.matvec(torch.ones(2, 3, dtype=torch.float64), torch.ones(4, 3, dtype=torch.float64), out=out)


def test_out_jax_refused():
    support.need("jax")
    A, x, out = lib_arrays("jax", np.ones((2, 3)), np.ones((4, 3)), np.zeros((4, 2)))
    with pytest.raises(TypeError, match="immutable"):
        batchmv.matvec(A, x, out=out)


@torch_only
def test_out_with_requires_grad():
    import torch

    A = torch.ones(2, 3, requires_grad=True)
    x = torch.ones(4, 3)
    out = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="requires grad"):
        batchmv.matvec(A, x, out=out)
    with pytest.raises(ValueError, match="requires grad"):
        batchmv.matvec(x[0:2, :].detach(), x.requires_grad_(), out=out)
    assert not out.any()


# ---------------------------------------------------------------------------------------
# copy
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("copy", [True, "no", 0, 1, "False", np.False_])
def test_copy_must_be_none_or_false(copy):
    with pytest.raises(ValueError) as err:
        batchmv.matvec(np.ones((2, 3)), np.ones(3), copy=copy)
    assert "None" in str(err.value) and "False" in str(err.value)
    with pytest.raises(ValueError):
        batchmv.plan(np.ones((2, 3)), np.ones(3), copy=copy)


def test_copy_false_refuses_python_lists():
    with pytest.raises(batchmv.CopyRequiredError, match="list"):
        batchmv.matvec(np.ones((2, 3)), [1.0, 2.0, 3.0], copy=False)
    assert issubclass(batchmv.CopyRequiredError, ValueError)


# ---------------------------------------------------------------------------------------
# backend names and availability
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["nump", "tensorflow", "", "numpy torch"])
def test_unknown_backend_argument(name):
    with pytest.raises(ValueError) as err:
        batchmv.matvec(np.ones((2, 3)), np.ones(3), backend=name)
    msg = str(err.value)
    assert "backend argument" in msg and repr(name) in msg
    for valid in ("auto", *_registry.ENGINES):
        assert valid in msg


@pytest.mark.parametrize("name", [1, ["numpy"], b"numpy"])
def test_backend_not_a_string(name):
    with pytest.raises(TypeError, match="string"):
        batchmv.matvec(np.ones((2, 3)), np.ones(3), backend=name)


def test_unknown_backend_in_use_backend():
    with pytest.raises(ValueError, match="use_backend"):
        with batchmv.use_backend("nope"):
            pass


def test_unknown_backend_from_environment(fresh_selection, monkeypatch):
    monkeypatch.setenv("BATCHMV_BACKEND", "blas")
    with pytest.raises(ValueError, match="BATCHMV_BACKEND") as err:
        batchmv.matvec(np.ones((2, 3)), np.ones(3))
    assert "'blas'" in str(err.value) and "numpy" in str(err.value)


UNAVAILABLE_CHILD = r"""
import json, sys
names = json.loads(sys.argv[1])
for name in names:
    sys.modules[name] = None  # as if not installed: importlib.util.find_spec returns None
import numpy as np
import batchmv
from batchmv import _registry
report = {}
for name in json.loads(sys.argv[2]):
    try:
        batchmv.matvec(np.ones((2, 2)), np.ones(2), backend=name)
        report[name] = "no error"
    except BaseException as err:
        report[name] = f"{type(err).__name__}: {err}"
report["available"] = list(batchmv.available_backends())
print(json.dumps(report))
"""


def test_unavailable_engines_say_what_to_install():
    """Engines whose library is missing raise ImportError with the install command; in a
    child process where every non-numpy library looks uninstalled."""
    hidden = [spec.package for spec in _registry.ENGINES.values() if spec.package != "numpy"]
    names = [name for name in _registry.ENGINES if name != "numpy"]
    proc = support.run_python(UNAVAILABLE_CHILD.replace("sys.argv[1]", repr(json.dumps(hidden))).replace(
        "sys.argv[2]", repr(json.dumps(names))))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report.pop("available") == ["numpy"]
    for name in names:
        spec = _registry.ENGINES[name]
        assert report[name].startswith("ImportError: "), report[name]
        if _registry.engine_module_exists(name):
            assert spec.install in report[name], report[name]
        else:  # no engine yet: nothing to install would help; say so and list what runs
            assert f"no {name!r} engine" in report[name] and "numpy" in report[name], report[name]


def test_unavailable_engine_here():
    for name, spec in _registry.ENGINES.items():
        if name in batchmv.available_backends():
            continue
        with pytest.raises(ImportError) as err:
            batchmv.matvec(np.ones((2, 2)), np.ones(2), backend=name)
        msg = str(err.value)
        assert name in msg
        if _registry.engine_module_exists(name):
            assert spec.install in msg


# ---------------------------------------------------------------------------------------
# torch specifics: gradients, devices
# ---------------------------------------------------------------------------------------
@torch_only
@pytest.mark.parametrize("which", ["A", "x"])
def test_numpy_engine_refuses_tensors_that_require_grad(which):
    import torch

    A = torch.ones(2, 3, dtype=torch.float64, requires_grad=which == "A")
    x = torch.ones(4, 3, dtype=torch.float64, requires_grad=which == "x")
    with pytest.raises(TypeError, match="requires grad") as err:
        batchmv.matvec(A, x, backend="numpy")
    assert which in str(err.value)
    assert (A if which == "A" else x).requires_grad, "the input was detached"
    with torch.no_grad():  # without autograd there is nothing to lose
        y = batchmv.matvec(A, x, backend="numpy")
    assert isinstance(y, torch.Tensor) and not y.requires_grad


@torch_only
@pytest.mark.gpu
def test_devices_differ():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here: A and x cannot be on different devices")
    A = torch.ones(2, 3, device="cuda")
    x = torch.ones(4, 3)
    with pytest.raises(TypeError, match="cuda.*cpu|cpu.*cuda"):
        batchmv.matvec(A, x)
    with pytest.raises(TypeError, match="cuda"):
        batchmv.matvec(x[:2], x, out=torch.empty(4, 2, device="cuda"))


# ---------------------------------------------------------------------------------------
# nothing crashes the process
# ---------------------------------------------------------------------------------------
def weird_inputs():
    """(name, thunk) pairs; each thunk calls batchmv with something strange."""
    import torch

    mv = batchmv.matvec
    A = np.ones((2, 3))
    buf = bytearray(8 * 40 + 1)
    misaligned = np.frombuffer(buf, dtype=np.float64, count=40, offset=1).reshape(10, 4)
    swapped = np.ones((5, 3), dtype=">f8")
    readonly = np.ones((5, 3))
    readonly.flags.writeable = False

    class BadDLPack:
        def __dlpack__(self, **kwargs):
            raise BufferError("no")

        def __dlpack_device__(self):
            return (1, 0)

    class LyingDLPack:
        def __dlpack__(self, **kwargs):
            return 42

        def __dlpack_device__(self):
            return (2, 0)  # claims CUDA

    class NoDevice:
        def __dlpack__(self, **kwargs):
            return np.ones(3).__dlpack__(**kwargs)

    # results of petabytes: beyond any address space, so the allocation fails even where
    # the kernel overcommits memory
    huge = (10**7, 10**7, 3)
    cases = {
        "huge broadcast result numpy": lambda: mv(A, np.broadcast_to(np.ones(3), huge)),
        "huge broadcast result torch": lambda: mv(torch.ones(2, 3), torch.ones(3).expand(*huge)),
        "huge broadcast x to torch engine": lambda: mv(A, np.broadcast_to(np.ones(3), huge), backend="torch"),
        "misaligned to torch": lambda: mv(np.ones((2, 4)), misaligned, backend="torch"),
        "misaligned numpy": lambda: mv(np.ones((2, 4)), misaligned),
        "misaligned A, copy=False": lambda: mv(misaligned[:2], np.ones(4), backend="torch", copy=False),
        "byte-swapped to torch": lambda: mv(A, swapped, backend="torch"),
        "byte-swapped numpy": lambda: mv(A, swapped),
        "read-only to torch": lambda: mv(A, readonly, backend="torch"),
        "read-only out via torch": lambda: mv(A, np.ones((5, 3)), out=readonly[:, :2], backend="torch"),
        "negative strides to torch": lambda: mv(A[::-1], np.ones((4, 3))[::-1, ::-1], backend="torch"),
        "negative-stride out via torch": lambda: mv(A, np.ones((4, 3)), out=np.zeros((4, 2))[::-1], backend="torch"),
        "longdouble to torch": lambda: mv(A.astype(np.longdouble), np.ones(3, np.longdouble), backend="torch"),
        "clongdouble numpy": lambda: mv(A.astype(np.clongdouble), np.ones(3)),
        "uint64 to torch": lambda: mv(A.astype(np.uint64), np.ones(3, np.uint64), backend="torch"),
        "bool to torch": lambda: mv(A.astype(bool), np.ones(3, bool), backend="torch"),
        "float16 to torch": lambda: mv(A.astype(np.float16), np.ones(3, np.float16), backend="torch"),
        "object array": lambda: mv(A.astype(object), np.ones(3, object)),
        "structured": lambda: mv(A, np.zeros(3, dtype=[("a", "f8")])),
        "datetime": lambda: mv(A, np.zeros(3, dtype="M8[s]")),
        "np.matrix": lambda: mv(np.matrix(A), np.ones(3)),
        "masked array": lambda: mv(A, np.ma.masked_array(np.ones(3), mask=[0, 1, 0])),
        "memoryview": lambda: mv(A, memoryview(np.ones(3))),
        "bytes": lambda: mv(A, b"abc"),
        "ragged list": lambda: mv(A, [[1.0, 2.0, 3.0], [1.0]]),
        "deeply nested list": lambda: mv(A, [[[[1.0, 2.0, 3.0]]]] * 3),
        "nan and inf": lambda: mv(A, np.array([np.nan, np.inf, -np.inf])),
        "int overflow values": lambda: mv(np.full((2, 3), 2**62), np.full(3, 2**62)),
        "axis huge": lambda: mv(A, np.ones(3), axis=2**100),
        "axis float nan": lambda: mv(A, np.ones(3), axis=float("nan")),
        "backend NUL": lambda: mv(A, np.ones(3), backend="\x00"),
        "backend newline": lambda: mv(A, np.ones(3), backend="numpy\n"),
        "out is A": lambda: mv(np.ones((3, 3)), np.ones((3, 3)), out=np.ones((3, 3))),
        "out overlaps A": lambda: (lambda B: mv(B, np.ones((3, 3)), out=B))(np.ones((3, 3))),
        "out overlaps A torch": lambda: (lambda B: mv(B, torch.ones(3, 3), out=B))(torch.ones(3, 3)),
        "out overlaps x partially": lambda: (lambda b: mv(np.ones((3, 3)), b[:4], out=b[2:]))(np.ones((6, 3))),
        "out broadcast": lambda: mv(A, np.ones((4, 3)), out=np.broadcast_to(np.zeros(2), (4, 2))),
        "out expanded torch": lambda: mv(torch.ones(2, 3), torch.ones(4, 3), out=torch.zeros(2).expand(4, 2)),
        "bad dlpack": lambda: mv(A, BadDLPack()),
        "lying dlpack": lambda: mv(A, LyingDLPack()),
        "dlpack without device": lambda: mv(A, NoDevice()),
        "dlpack to numpy engine": lambda: mv(A, BadDLPack(), backend="numpy"),
        "sparse tensor": lambda: mv(torch.ones(2, 3).to_sparse(), torch.ones(3)),
        "sparse x": lambda: mv(torch.ones(2, 3), torch.ones(4, 3).to_sparse()),
        "meta tensor": lambda: mv(torch.ones(2, 3, device="meta"), torch.ones(3, device="meta")),
        "meta to numpy engine": lambda: mv(torch.ones(2, 3, device="meta"), torch.ones(3, device="meta"), backend="numpy"),
        "nested tensor": lambda: mv(torch.ones(2, 3), torch.nested.nested_tensor([torch.ones(3), torch.ones(3)])),
        "quantized": lambda: mv(torch.ones(2, 3), torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.quint8)),
        "conj view to numpy": lambda: mv(torch.ones(2, 3, dtype=torch.complex64).conj(), torch.ones(3, dtype=torch.complex64), backend="numpy"),
        "conj out": lambda: mv(torch.ones(2, 3, dtype=torch.complex64), torch.ones(4, 3, dtype=torch.complex64),
                               out=torch.zeros(4, 2, dtype=torch.complex64).conj()),
        "neg out": lambda: mv(torch.ones(2, 3), torch.ones(4, 3), out=torch._neg_view(torch.zeros(4, 2))),
        "bfloat16 to numpy": lambda: mv(torch.ones(2, 3, dtype=torch.bfloat16), torch.ones(3, dtype=torch.bfloat16), backend="numpy"),
        "complex32": lambda: mv(torch.ones(2, 3, dtype=torch.complex32), torch.ones(3, dtype=torch.complex32)),
        "float8": lambda: mv(torch.ones(2, 3).to(torch.float8_e4m3fn), torch.ones(3).to(torch.float8_e4m3fn)),
        "mixed numpy A torch x with torch out": lambda: mv(A, torch.ones(4, 3, dtype=torch.float64), out=torch.zeros(4, 2, dtype=torch.float64)),
        "tensor subclass": lambda: mv(torch.nn.Parameter(torch.ones(2, 3)), torch.ones(3)),
        "zero-size everything": lambda: mv(np.ones((0, 0)), np.ones((5, 0, 7)), axis=1, backend="torch"),
        "x with 32 dimensions": lambda: mv(A, np.ones((1,) * 31 + (3,))),
        "x with 64 dimensions": lambda: mv(A, np.ones((1,) * 63 + (3,))),
    }
    return list(cases.items())


CRASH_CHILD = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import numpy as np
import torch
import batchmv
import test_errors
outcomes = {}
for name, thunk in test_errors.weird_inputs():
    print("running:", name, flush=True)
    try:
        result = thunk()
        outcomes[name] = "ok " + type(result).__name__
    except Exception as err:
        checked = isinstance(err, (TypeError, ValueError, ImportError, MemoryError, OverflowError))
        checked = checked or "allocate" in str(err)  # the library's own out-of-memory error
        outcomes[name] = ("raised " if checked else "LEAKED ") + type(err).__name__ + ": " + str(err)[:200]
print("@@" + json.dumps(outcomes), flush=True)
"""



@torch_only
@pytest.mark.slow
def test_strange_inputs_never_crash_the_process():
    proc = support.run_python(CRASH_CHILD, timeout=300)
    last = [line for line in proc.stdout.splitlines() if line.startswith("running:")][-1:]
    assert proc.returncode == 0, f"the process died (exit code {proc.returncode}) at {last}: {proc.stderr[-2000:]}"
    outcomes = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("@@"))[2:])
    # TypeError/ValueError (or an out-of-memory error) for every refusal; anything else is an unchecked leak
    leaks = {k: v for k, v in outcomes.items() if v.startswith("LEAKED")}
    assert not leaks, "errors batchmv does not check for:\n" + "\n".join(f"  {k}: {v}" for k, v in leaks.items())


# ---------------------------------------------------------------------------------------
# refusals found by the strange-input batch, one test each
# ---------------------------------------------------------------------------------------
@torch_only
def test_out_with_stride_zero_refused():
    import torch

    out = torch.zeros(2).expand(4, 2)
    with pytest.raises(ValueError, match="stride 0"):
        batchmv.matvec(torch.ones(2, 3), torch.ones(4, 3), out=out)


@torch_only
@pytest.mark.filterwarnings("ignore::UserWarning")  # nested and quantized tensors are prototypes/deprecated
@pytest.mark.parametrize("kind", ["sparse", "nested", "quantized"])
def test_torch_non_dense_tensors_refused(kind):
    import torch

    x = {
        "sparse": lambda: torch.ones(4, 3).to_sparse(),
        "nested": lambda: torch.nested.nested_tensor([torch.ones(3), torch.ones(3)]),
        "quantized": lambda: torch.quantize_per_tensor(torch.ones(4, 3), 0.1, 0, torch.quint8),
    }[kind]()
    with pytest.raises(TypeError, match=f"dense.*{kind}"):
        batchmv.matvec(torch.ones(2, 3), x)


class _Producer:
    def __init__(self, device=(1, 0), fail=None, has_device=True):
        self._device, self._fail = device, fail
        if not has_device:
            self.__dlpack_device__ = None

    def __dlpack__(self, **kwargs):
        if self._fail:
            raise self._fail
        return np.ones(3).__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._device


@torch_only
@pytest.mark.parametrize(
    "producer",
    [_Producer(fail=BufferError("cannot export")), _Producer(device=(2, 0)), _Producer(has_device=False)],
    ids=["export fails", "claims CUDA", "no device"],
)
def test_bad_dlpack_producers_raise_type_error(producer):
    # (a producer on a CUDA device is refused before its import: A is on the CPU)
    with pytest.raises(TypeError, match="DLPack|x \\(_Producer\\) on cuda:0; batchmv never moves"):
        batchmv.matvec(np.ones((2, 3)), producer)
