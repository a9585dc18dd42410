"""A remembered "fastest" choice is used only for arrays its engine takes without a copy
(batchmv/_tune.py): arrays that differ from the measured ones in alignment, byte order,
stride signs or writability never get a copy, nor a CopyRequiredError under copy=False,
from a choice made for other arrays (only the copies "auto" makes too); plan reports what
matvec does."""

from __future__ import annotations

import numpy as np
import pytest

import batchmv
import support
from batchmv import _registry, _tune
from batchmv._memory import ALIGNMENT, aligned_empty

HOME = _registry.get_engine("numpy")


@pytest.fixture
def fresh(monkeypatch):
    """Nothing decided, no cache file, no remembered call; timings replaced by constants
    (numpy fastest) so that measuring takes no time."""
    monkeypatch.delenv(_tune.CACHE_ENV, raising=False)
    monkeypatch.setattr(_tune, "_choices", {})
    monkeypatch.setattr(_tune, "_disk_loaded", True)
    monkeypatch.setattr(_tune, "_checks", {})
    monkeypatch.setattr(batchmv._cache, "calls", batchmv._cache.Runners(batchmv._cache.MAX_CALLS))
    rounds = {"numpy": 1.0, "torch": 2.0, "jax": 3.0, "cupy": 4.0}
    monkeypatch.setattr(batchmv._timing, "rounds_in_use", lambda run, work, budget_s=0.05: rounds[run.__defaults__[0].engine.name])
    monkeypatch.setattr(batchmv._timing, "median_seconds", lambda run, **_: 0.25)
    return _tune._choices


def _at_offset(values: np.ndarray, offset: int, dtype=None) -> np.ndarray:
    """``values`` copied into a buffer ``offset`` bytes past a 64-byte boundary."""
    dtype = np.dtype(dtype or values.dtype)
    raw = aligned_empty(values.size * dtype.itemsize + ALIGNMENT, np.uint8)
    arr = np.frombuffer(raw.data, dtype, count=values.size, offset=offset).reshape(values.shape)
    arr[...] = values
    return arr


def _values():
    rng = np.random.default_rng(3)
    return rng.standard_normal((64, 48)).astype(np.float32), rng.standard_normal((300, 48)).astype(np.float32)


#: Arrays numpy computes on without a copy and another engine cannot share, and that engine.
ODD = {
    "misaligned for JAX (16 bytes past 64)": ("jax", lambda v: _at_offset(v, 16)),
    "read-only, misaligned for JAX": ("jax", lambda v: _readonly(_at_offset(v, 16))),
}


def _readonly(arr):
    arr.flags.writeable = False
    return arr


def _remember(choices, engine, a, x):
    """A remembered choice of ``engine`` for the kind of ``a``, ``x`` (as a cache file
    written by another version, or with other arrays of one kind, would give)."""
    key = _tune.kind_of(HOME, a, x, 1, HOME.result_dtype(a, x))
    choices[key] = {"engine": engine, "times": {engine: 1e-6}}
    return key


def _reference(a, x):
    return x.astype(np.float64) @ a.T.astype(np.float64)


@pytest.mark.parametrize("case", list(ODD))
@pytest.mark.parametrize("remembered_for", ["these arrays' kind", "the aligned arrays' kind"])
def test_a_remembered_engine_that_cannot_take_the_arrays_is_not_used(fresh, case, remembered_for):
    engine, make = ODD[case]
    support.need(engine)
    a0, x0 = _values()
    a, x = make(a0), make(x0)
    assert batchmv.plan(a, x, backend=engine).copies  # the engine would copy these arrays
    assert batchmv.plan(a, x, backend="auto", copy=False).copies == ()
    if remembered_for == "the aligned arrays' kind":
        _remember(fresh, engine, aligned_empty(a0.shape, a0.dtype), aligned_empty(x0.shape, x0.dtype))
    else:
        _remember(fresh, engine, a, x)
    before = batchmv.plan(a, x, backend="fastest", copy=False)
    assert before.backend != engine and before.copies == ()
    y = batchmv.matvec(a, x, backend="fastest", copy=False)  # measures among the engines that can
    np.testing.assert_allclose(y, _reference(a0, x0), rtol=1e-4, atol=1e-4)
    after = batchmv.plan(a, x, backend="fastest")  # copy=None: still no copy
    assert after.backend != engine and after.copies == ()
    assert "cached choice" in after.notes[0]
    # recall reports what choose decides, and choose measures no more
    dtype = HOME.result_dtype(a, x)
    assert _tune.recall(HOME, a, x, 1, dtype) == _tune.choose(HOME, a, x, 1, dtype)


def test_the_reported_case_makes_the_copies_auto_makes(fresh):
    """Issue 11, item 10: float32 views one byte into a buffer, torch remembered.  No engine
    computes on them in place (numpy's matmul copies them itself: now reported), so
    "fastest" makes the copies "auto" makes, and copy=False refuses them."""
    support.need("torch")
    a0, x0 = _values()
    buf_a, buf_x = bytearray(a0.nbytes + 1), bytearray(x0.nbytes + 1)
    a = np.frombuffer(buf_a, np.float32, offset=1).reshape(a0.shape)
    x = np.frombuffer(buf_x, np.float32, offset=1).reshape(x0.shape)
    a[...], x[...] = a0, x0
    assert not a.flags.aligned and not x.flags.aligned
    _remember(fresh, "torch", a, x)
    p = batchmv.plan(a, x, backend="fastest")
    assert p.backend == "numpy" and p.copies == batchmv.plan(a, x, backend="auto").copies
    assert [c.split(" is ")[0] for c in p.copies] == ["A", "x"] and all("aligned" in c for c in p.copies)
    with pytest.raises(batchmv.CopyRequiredError, match="aligned"):
        batchmv.matvec(a, x, backend="fastest", copy=False)
    np.testing.assert_allclose(batchmv.matvec(a, x, backend="fastest"), _reference(a0, x0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("engine", ["torch", "jax"])
def test_aligned_arrays_keep_the_remembered_choice(fresh, engine):
    """Positive control: arrays the remembered engine takes are computed by it, no copy."""
    support.need(engine)
    a0, x0 = _values()
    a, x = _at_offset(a0, 0), _at_offset(x0, 0)
    key = _remember(fresh, engine, a, x)
    p = batchmv.plan(a, x, backend="fastest", copy=False)
    assert p.backend == engine and p.copies == () and p.notes[0].startswith(f"fastest: {engine} (cached choice for {key}")
    np.testing.assert_allclose(batchmv.matvec(a, x, backend="fastest", copy=False), _reference(a0, x0), rtol=1e-4, atol=1e-4)
    assert fresh[key]["engine"] == engine and len(fresh) == 1  # nothing measured


#: Arrays no engine takes without a copy (numpy's matmul copies an operand that is not
#: aligned to its itemsize before calling BLAS: test_remembered_kernels measures it).
COPIED = {
    "byte-swapped": lambda v: _at_offset(v, 0, v.dtype.newbyteorder(">")),
    "negative strides": lambda v: _at_offset(v[::-1], 0)[::-1],
    "misaligned (one byte into a buffer)": lambda v: _at_offset(v, 1),
    "read-only, misaligned": lambda v: _readonly(_at_offset(v, 1)),
}


@pytest.mark.parametrize("case", list(COPIED))
def test_arrays_every_engine_copies_get_no_more_copies_than_auto(fresh, case):
    """"fastest" then uses the home engine, whatever is remembered, and makes the copies
    "auto" makes."""
    support.need("torch")
    a0, x0 = _values()
    a, x = COPIED[case](a0), COPIED[case](x0)
    _remember(fresh, "torch", a, x)
    p = batchmv.plan(a, x, backend="fastest")
    assert p.backend == "numpy" and p.copies == batchmv.plan(a, x, backend="auto").copies
    np.testing.assert_allclose(batchmv.matvec(a, x, backend="fastest"), _reference(a0, x0), rtol=1e-4, atol=1e-4)


def test_the_kind_tells_apart_what_decides_eligibility():
    a0, x0 = _values()
    plain = _tune.kind_of(HOME, _at_offset(a0, 0), _at_offset(x0, 0), 1, np.dtype(np.float32))
    makers = {**{name: make for name, (_, make) in ODD.items()}, **COPIED}
    for name, make in makers.items():
        odd_x = make(x0)
        odd = _tune.kind_of(HOME, _at_offset(a0, 0), odd_x, 1, np.dtype(np.float32))
        assert odd != plain, name
    assert "misaligned" in _tune.kind_of(HOME, _at_offset(a0, 1), x0, 1, np.dtype(np.float32))


def test_the_check_is_kept_only_for_arrays_that_agree_in_everything_it_reads(fresh, monkeypatch):
    """A repeated call does not build the remembered engine's call again; arrays of the same
    shapes, strides and dtype but another alignment are checked afresh."""
    support.need("torch")
    built = []
    original = batchmv._call.build
    monkeypatch.setattr(batchmv._call, "build", lambda a, x, axis, out, backend, *r, **kw: built.append(backend) or original(a, x, axis, out, backend, *r, **kw))
    a0, x0 = _values()
    a, x = _at_offset(a0, 0), _at_offset(x0, 0)
    _remember(fresh, "torch", a, x)
    for _ in range(3):
        assert batchmv.plan(a, x, backend="fastest").backend == "torch"
        batchmv.matvec(a, x, backend="fastest")
    assert built.count("torch") == 1
    a1, x1 = _at_offset(a0, 1), _at_offset(x0, 1)  # same signature, misaligned
    _remember(fresh, "torch", a1, x1)
    assert batchmv.plan(a1, x1, backend="fastest").backend == "numpy"
    assert built.count("torch") > 1  # checked afresh (then among the candidates)


def test_out_takes_part_in_the_choice(monkeypatch):
    """With out=, only engines that write into out without a copy compete (jax, which cannot
    write, is not a candidate), and the choice for out= is a kind of its own."""
    monkeypatch.setattr(batchmv._tune, "_choices", {})
    monkeypatch.setattr(batchmv._tune, "_disk_loaded", True)
    rng = np.random.default_rng(3)
    a, x = rng.standard_normal((16, 8)).astype(np.float32), rng.standard_normal((64, 8)).astype(np.float32)
    out = np.empty((64, 16), np.float32)
    assert batchmv.matvec(a, x, out=out, backend="fastest") is out
    np.testing.assert_allclose(out, x @ a.T, rtol=1e-5, atol=1e-5)
    p = batchmv.plan(a, x, out=out, backend="fastest")
    assert p.copies == () and p.backend != "jax", p
    assert "|out:" in p.notes[0]
    if "jax" in batchmv.available_backends():
        assert "'jax'" in p.notes[0] or "jax" not in p.notes[0].split("measured")[1]
