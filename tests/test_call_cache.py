"""Remembered calls (batchmv._cache): a repeated call skips the checks, and nothing that
would change the call's meaning or its checks is skipped."""

from __future__ import annotations

import threading
from contextlib import nullcontext

import numpy as np
import pytest

import batchmv
import support
from batchmv import _cache, _call, _registry


def _check(y, a, x, axis=-1, dtype="float64"):
    n = support.to_numpy(a).shape[1]
    support.assert_matvec_close(y, support.reference(a, x, axis), support.magnitude(a, x, axis), n, dtype)


@pytest.mark.parametrize("lib", support.lib_params())
def test_a_repeated_call_skips_the_checks_and_stays_correct(rng, lib, builds):
    a = support.to_lib(support.random_values(rng, (24, 16), "float64"), lib)
    xs = [support.to_lib(support.random_values(rng, (7, 16), "float64"), lib) for _ in range(3)]
    for x in xs:  # the same signature, other values
        y = batchmv.matvec(a, x)
        assert support.library_of_array(y) == lib
        _check(y, a, x)
    assert builds[0] == 1
    # positive control: another layout of x (or another axis) goes through the checks again
    strided = support.to_lib(support.random_values(rng, (7, 32), "float64"), lib)[:, ::2]
    _check(batchmv.matvec(a, strided), a, strided)
    assert builds[0] == (1 if lib == "jax" else 2)  # (a jax slice is a new array: no strides)
    columns = support.to_lib(support.random_values(rng, (16, 7), "float64"), lib)
    for _ in range(2):
        _check(batchmv.matvec(a, columns, axis=0), a, columns, axis=0)
    assert builds[0] == (2 if lib == "jax" else 3)


def test_calls_with_out_or_copies_always_go_through_the_checks(rng, builds):
    a = support.random_values(rng, (24, 16), "float64")
    x = support.random_values(rng, (7, 16), "float64")
    out = np.empty((7, 24))
    for _ in range(2):
        assert batchmv.matvec(a, x, out=out) is out
    x32 = x.astype(np.float32)  # float32 x with float64 A: x is cast, a copy the plan reports
    for _ in range(2):
        _check(batchmv.matvec(a, x32), a, x32)
    assert builds[0] == 4


def test_argument_checks_are_never_skipped(rng, builds):
    a = support.random_values(rng, (24, 16), "float64")
    x = support.random_values(rng, (16, 7), "float64")
    batchmv.matvec(a, x, axis=0)
    with pytest.raises(TypeError, match="axis must be an integer"):
        batchmv.matvec(a, x, axis=False)  # False == 0, but is no axis
    with pytest.raises(ValueError, match="copy must be None"):
        batchmv.matvec(a, x, axis=0, copy=0)
    with pytest.raises(ValueError, match="unknown backend"):
        batchmv.matvec(a, x, axis=0, backend="nope")
    with pytest.raises(TypeError, match="backend must be a string"):
        batchmv.matvec(a, x, axis=0, backend=["numpy"])  # unhashable: no look-up, the checks say
    batchmv.matvec(a, x, axis=0, copy=False)
    batchmv.matvec(a, x, axis=0, copy=False)
    for almost_false in (0, 0.0, np.False_):  # equal to False, and refused by the checks
        with pytest.raises(ValueError, match="copy must be None"):
            batchmv.matvec(a, x, axis=0, copy=almost_false)


def test_the_environment_is_read_when_a_call_first_needs_it(rng, fresh_selection, monkeypatch):
    a = support.random_values(rng, (24, 16), "float64")
    x = support.random_values(rng, (7, 16), "float64")
    for _ in range(2):
        batchmv.matvec(a, x, backend="numpy")  # an explicit engine: BATCHMV_BACKEND not needed
    monkeypatch.setenv("BATCHMV_BACKEND", "nope")
    with pytest.raises(ValueError, match="BATCHMV_BACKEND"):
        batchmv.matvec(a, x)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_numpy_subclasses_get_what_the_checks_give(rng, builds):
    a = support.random_values(rng, (24, 16), "float64")
    x = np.asmatrix(support.random_values(rng, (7, 16), "float64"))
    for _ in range(3):  # numpy.matrix computes as a plain ndarray, every time
        y = batchmv.matvec(a, x)
        assert type(y) is np.ndarray and y.shape == (7, 24)
        _check(y, a, np.asarray(x))
    assert builds[0] == 3


def test_an_array_changed_in_place_is_checked_again(rng):
    a = support.random_values(rng, (24, 16), "float64")
    x = support.random_values(rng, (7, 16), "float64")
    batchmv.matvec(a, x)
    a.shape = (16, 24)  # same object, same data, another shape
    with pytest.raises(ValueError, match="x.shape\\[axis\\] must equal n"):
        batchmv.matvec(a, x)


def test_selection_settings_are_part_of_the_key(rng, fresh_selection, monkeypatch, builds):
    support.need("torch")
    a = support.random_values(rng, (24, 16), "float64")
    x = support.random_values(rng, (7, 16), "float64")
    torch_engine = _registry.get_engine("torch")
    seen = []
    original = torch_engine.gemm
    monkeypatch.setattr(torch_engine, "gemm", lambda *args: seen.append(1) or original(*args))
    batchmv.matvec(a, x)
    batchmv.matvec(a, x)
    assert seen == []  # numpy's own engine
    with batchmv.use_backend("torch"):
        _check(batchmv.matvec(a, x), a, x)
    assert seen == [1]
    monkeypatch.setenv("BATCHMV_BACKEND", "torch")
    monkeypatch.setattr(fresh_selection, "_env_value", fresh_selection._UNREAD)  # a new process
    _check(batchmv.matvec(a, x), a, x)
    assert seen == [1, 1]


@pytest.mark.parametrize("how", ["argument", "context", "environment"])
def test_calls_whose_engine_is_measured_are_not_remembered(rng, fresh_selection, monkeypatch, builds, how):
    """"fastest" measures per kind of call, and a kind holds more than a key's layouts (the
    arrays' alignment): a call with the same layouts as a remembered one may be measured to
    another engine, so a "fastest" call, however it is asked for, goes through the checks
    every time and gets the engine measured for its own kind (a tuner's choice seeded for two
    kinds whose arrays differ only in their alignment to 64 bytes)."""
    support.need("torch")
    from batchmv import _tune

    def at(shape, offset):  # float64 values whose address is `offset` bytes past a 64-byte boundary
        raw = np.zeros(int(np.prod(shape)) * 8 + 128, np.uint8)
        start = (-raw.ctypes.data) % 64 + offset
        arr = raw[start : start + int(np.prod(shape)) * 8].view(np.float64).reshape(shape)
        arr[...] = support.random_values(rng, shape, "float64")
        return arr

    a64, x64, a8, x8 = at((30, 20), 0), at((5, 20), 0), at((30, 20), 8), at((5, 20), 8)
    home = _registry.get_engine("numpy")
    kinds = [_tune.kind_of(home, a, x, 1, np.dtype("float64")) for a, x in ((a64, x64), (a8, x8))]
    assert kinds[0] != kinds[1]
    monkeypatch.setattr(_tune, "_disk_loaded", True)
    monkeypatch.setitem(_tune._choices, kinds[0], {"engine": "torch", "times": {"torch": 1e-6, "numpy": 2e-6}})
    monkeypatch.setitem(_tune._choices, kinds[1], {"engine": "numpy", "times": {"numpy": 1e-6, "torch": 2e-6}})
    kwargs = {"backend": " Fastest"} if how == "argument" else {}
    if how == "environment":
        monkeypatch.setenv("BATCHMV_BACKEND", "FASTEST")
        monkeypatch.setattr(fresh_selection, "_env_value", fresh_selection._UNREAD)  # (a new process)
    with batchmv.use_backend("fastest") if how == "context" else nullcontext():
        for a, x, engine in ((a8, x8, "numpy"), (a8, x8, "numpy"), (a64, x64, "torch")):
            assert batchmv.plan(a, x, **kwargs).backend == engine
            before = builds[0]
            _check(batchmv.matvec(a, x, **kwargs), a, x)
            assert builds[0] == before + 1  # (checked every time)
    batchmv.matvec(a8, x8, backend="numpy")
    before = builds[0]
    batchmv.matvec(a8, x8, backend="numpy")  # (the control: a named engine is remembered)
    assert builds[0] == before


def test_torch_grad_state_and_lazy_bits_are_respected(rng):
    support.need("torch")
    import torch

    a = torch.randn(6, 4, dtype=torch.complex128)
    x = torch.randn(3, 4, dtype=torch.complex128)
    batchmv.matvec(a, x)
    batchmv.matvec(a, x)
    xc = x.conj()  # same shape, strides and dtype; a lazy conjugate bit
    assert "conjugate" in " ".join(batchmv.plan(a, xc).copies)
    torch.testing.assert_close(batchmv.matvec(a, xc), xc.resolve_conj() @ a.T)
    with pytest.raises(batchmv.CopyRequiredError):
        batchmv.matvec(a, xc, copy=False)

    a = torch.randn(6, 4, dtype=torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64)
    assert not batchmv.matvec(a, x).requires_grad
    a.requires_grad_(True)  # after the call was remembered
    y = batchmv.matvec(a, x)
    y.sum().backward()
    torch.testing.assert_close(a.grad, torch.ones(3, 6, dtype=torch.float64).T @ x)
    with torch.no_grad():
        assert not batchmv.matvec(a, x).requires_grad
    with pytest.raises(TypeError, match="requires grad"):
        batchmv.matvec(a, x, backend="numpy")


def test_torch_layouts_are_part_of_the_key():
    support.need("torch")
    import torch

    a = torch.randn(5, 1)
    dense = torch.ones(1).as_strided((1, 1), (0, 0))  # the strides a sparse COO tensor reports
    for _ in range(2):
        batchmv.matvec(a, dense)
    sparse = torch.ones(1, 1).to_sparse()
    assert sparse.stride() == dense.stride()
    with pytest.raises(TypeError, match="sparse"):
        batchmv.matvec(a, sparse)


def test_threads_share_the_memory_safely(rng):
    a = support.random_values(rng, (24, 16), "float64")
    shapes = [(rows, 16) for rows in range(1, 40)]
    inputs = [support.random_values(rng, s, "float64") for s in shapes]
    errors = []

    def work(offset):
        try:
            for i in range(200):
                x = inputs[(offset + i) % len(inputs)]
                np.testing.assert_allclose(batchmv.matvec(a, x), x @ a.T, rtol=1e-12, atol=1e-12)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_memory_is_bounded(rng, monkeypatch):
    monkeypatch.setattr(_cache, "calls", _cache.Runners(_cache.MAX_CALLS))
    a = support.random_values(rng, (8, 4), "float64")
    for rows in range(1, _cache.MAX_CALLS + 40):
        batchmv.matvec(a, np.ones((rows, 4)))
    assert 0 < len(_cache.calls) <= _cache.MAX_CALLS


@pytest.mark.parametrize("lib", support.lib_params())
def test_remembered_calls_keep_no_array_alive(rng, lib):
    import gc
    import weakref

    a = support.to_lib(support.random_values(rng, (24, 16), "float64"), lib)
    x = support.to_lib(support.random_values(rng, (7, 16), "float64"), lib)
    for _ in range(2):
        y = batchmv.matvec(a, x)
    op = batchmv.prepare(a)
    op(x)
    op(x)
    refs = [weakref.ref(v) for v in (a, x, y)]
    del a, x, y
    gc.collect()
    assert [r() for r in refs[1:]] == [None, None]  # x and y are gone (op still holds A)
    del op
    gc.collect()
    assert refs[0]() is None


@pytest.mark.slow
@pytest.mark.parametrize("lib", support.lib_params())
def test_the_first_call_of_a_process_is_remembered(lib):
    """In a fresh process (BATCHMV_BACKEND not read yet), the first call of a kind is
    remembered: the second skips the checks (counted by wrapping the checks' entry)."""
    code = f"""
        import batchmv, support
        from batchmv import _call
        builds = []
        original = _call.build
        _call.build = lambda *args, **kw: builds.append(1) or original(*args, **kw)
        import numpy as np
        rng = np.random.default_rng(0)
        a = support.to_lib(rng.standard_normal((6, 4)), {lib!r})
        x = support.to_lib(rng.standard_normal((3, 4)), {lib!r})
        batchmv.matvec(a, x)
        batchmv.matvec(a, x)
        assert len(builds) == 1, builds
        other = support.to_lib(rng.standard_normal((4, 3)), {lib!r})
        batchmv.matvec(a, other, axis=0)  # positive control: a new kind is checked
        assert len(builds) == 2, builds
    """
    proc = support.run_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
