"""`batchmv.prepare` (a prepared operator) and the "fastest" engine, across libraries."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import batchmv
import support


def _problem(rng, lib, dtype="float64", m=24, n=16, batch=(5, 7)):
    a = support.random_values(rng, (m, n), dtype)
    x = support.random_values(rng, (*batch, n), dtype)
    return support.to_lib(a, lib), support.to_lib(x, lib)


@pytest.mark.parametrize(("home", "engine"), support.pair_params())
@pytest.mark.parametrize("axis", [-1, 0])
def test_prepared_operator_equals_matvec(rng, home, engine, axis):
    a, x = _problem(rng, home)
    if axis == 0:
        x = support.to_lib(np.ascontiguousarray(np.moveaxis(support.to_numpy(x), -1, 0)), home)
    op = batchmv.prepare(a, backend=engine)
    assert op.backend == engine and op.shape == (24, 16)
    for _ in range(3):  # first call builds the schedule, later calls reuse it
        y = op(x, axis=axis)
        assert support.library_of_array(y) == home
        support.assert_matvec_close(y, support.reference(a, x, axis), support.magnitude(a, x, axis), 16, "float64")
    assert op.plan(x, axis=axis).backend == engine


def test_prepared_operator_reuses_schedule_only_for_the_same_layout(rng):
    a, x = _problem(rng, "numpy")
    op = batchmv.prepare(a)
    op(x)
    strided = support.to_lib(support.random_values(rng, (5, 14, 16), "float64"), "numpy")[:, ::2]
    y = op(strided)  # another layout: a new schedule, still correct
    support.assert_matvec_close(y, support.reference(a, strided, -1), support.magnitude(a, strided, -1), 16, "float64")
    assert len(op._runners) == 2


def test_prepared_operator_out_and_errors(rng):
    a, x = _problem(rng, "numpy")
    op = batchmv.prepare(a)
    out = np.empty((5, 7, 24))
    assert op(x, out=out) is out
    np.testing.assert_allclose(out, support.reference(a, x, -1), rtol=1e-12)
    with pytest.raises(ValueError, match=r"A must be 2-D.*\(3,\)"):
        batchmv.prepare(np.ones(3))
    with pytest.raises(ValueError, match="unknown backend"):
        batchmv.prepare(a, backend="nope")
    with pytest.raises(ValueError, match="fixed engine"):
        batchmv.prepare(a, backend="fastest")
    with pytest.raises(ValueError, match="x.shape\\[axis\\] must equal n"):
        op(np.ones((3, 5)))


def test_prepared_operator_keeps_gradients():
    support.need("torch")
    import torch

    a = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    op = batchmv.prepare(a)
    assert torch.autograd.gradcheck(lambda a_, x_: batchmv.prepare(a_)(x_), (a, x))
    op(x).sum().backward()
    torch.testing.assert_close(a.grad, torch.ones(3, 6, dtype=torch.float64).T @ x.detach())
    with pytest.raises(TypeError, match="requires grad"):
        batchmv.prepare(a, backend="numpy")


@pytest.mark.parametrize("home", support.lib_params())
def test_fastest_picks_an_eligible_engine_and_says_why(rng, home, monkeypatch, tmp_path):
    monkeypatch.setenv("BATCHMV_TUNE_CACHE", str(tmp_path / "tune.json"))
    monkeypatch.setattr(batchmv._tune, "_choices", {})
    monkeypatch.setattr(batchmv._tune, "_disk_loaded", False)
    a, x = _problem(rng, home, dtype="float32", m=64, n=48, batch=(300,))
    assert any("not measured yet" in note for note in batchmv.plan(a, x, backend="fastest").notes)
    batchmv.matvec(a, x, backend="fastest")  # measures
    p = batchmv.plan(a, x, backend="fastest")
    assert p.backend in batchmv.available_backends()
    assert p.copies == ()  # only engines that take the call without a copy compete
    assert any(note.startswith(f"fastest: {p.backend}") for note in p.notes)
    y = batchmv.matvec(a, x, backend=" Fastest ")
    assert support.library_of_array(y) == home
    support.assert_matvec_close(y, support.reference(a, x, -1), support.magnitude(a, x, -1), 48, "float32")
    # measured once: the second plan uses the cached choice
    assert any("cached choice" in note for note in batchmv.plan(a, x, backend="fastest").notes)
    saved = json.loads((tmp_path / "tune.json").read_text())
    assert saved["format"] == "batchmv-tune-1" and p.backend in {v["engine"] for v in saved["choices"].values()}


def test_fastest_cache_file_is_reloaded_and_bad_files_are_ignored(rng, monkeypatch, tmp_path):
    path = tmp_path / "tune.json"
    monkeypatch.setenv("BATCHMV_TUNE_CACHE", str(path))
    tune = batchmv._tune
    a, x = _problem(rng, "numpy", dtype="float32", m=64, n=48, batch=(300,))
    monkeypatch.setattr(tune, "_choices", {})
    monkeypatch.setattr(tune, "_disk_loaded", False)
    batchmv.matvec(a, x, backend="fastest")  # measures
    chosen = batchmv.plan(a, x, backend="fastest").backend
    # a new process would load the file and trust it: the choice is the cached one
    monkeypatch.setattr(tune, "_choices", {})
    monkeypatch.setattr(tune, "_disk_loaded", False)
    notes = batchmv.plan(a, x, backend="fastest").notes
    assert any(f"fastest: {chosen} (cached choice" in n for n in notes)
    # corrupt, foreign and tampered files are ignored with a warning and re-measured
    data = json.loads(path.read_text())
    missing = next((e for e in batchmv._registry.ENGINES if e not in batchmv.available_backends()), "no-such-engine")
    tampered = dict(data, choices={k: {"engine": missing, "times": {}} for k in data["choices"]})
    foreign = dict(data, machine={"node": "elsewhere"})
    for content in ("{not json", json.dumps({"format": "other"}), json.dumps(foreign), json.dumps(tampered)):
        path.write_text(content)
        monkeypatch.setattr(tune, "_choices", {})  # a new process: nothing decided, nothing remembered
        monkeypatch.setattr(tune, "_disk_loaded", False)
        monkeypatch.setattr(batchmv._cache, "calls", batchmv._cache.Runners(batchmv._cache.MAX_CALLS))
        with pytest.warns(RuntimeWarning, match="ignoring the tuning cache"):
            notes = batchmv.plan(a, x, backend="fastest").notes
        assert any("not measured yet" in n for n in notes)  # the file's choice is not trusted
        batchmv.matvec(a, x, backend="fastest")  # measured again
        assert any(n.startswith("fastest: ") and "cached choice" in n for n in batchmv.plan(a, x, backend="fastest").notes)


def test_fastest_keeps_gradients_on_torch():
    support.need("torch")
    import torch

    a = torch.randn(6, 4, requires_grad=True)
    p = batchmv.plan(a, torch.randn(3, 4), backend="fastest")
    assert p.backend == "torch" and "requires grad" in p.notes[0]


def test_fastest_is_a_valid_name_everywhere(fresh_selection, monkeypatch, rng):
    a, x = _problem(rng, "numpy")
    with batchmv.use_backend("fastest"):
        assert batchmv.plan(a, x).backend in batchmv.available_backends()
    monkeypatch.setenv("BATCHMV_BACKEND", "fastest")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert batchmv.plan(a, x).backend in batchmv.available_backends()


def test_prepared_operator_keeps_a_bounded_number_of_schedules(rng):
    a, _ = _problem(rng, "numpy")
    op = batchmv.prepare(a)
    for rows in range(1, 80):  # 79 layouts of x
        x = support.random_values(rng, (rows, 16), "float64")
        np.testing.assert_allclose(op(x), x @ a.T, rtol=1e-12)
    assert 0 < len(op._runners) <= batchmv._operator._MAX_LAYOUTS


@pytest.mark.parametrize(("torch_time", "chosen"), [(0.99, "numpy"), (0.9, "torch"), (1.5, "numpy")])
def test_fastest_keeps_the_home_engine_unless_another_is_clearly_faster(rng, monkeypatch, torch_time, chosen):
    """The decision rule on given timings (seconds per round of home work and call): the
    home library's engine is kept within HOME_MARGIN; the times shown are net of the work."""
    support.need("torch")
    tune = batchmv._tune
    monkeypatch.delenv("BATCHMV_TUNE_CACHE", raising=False)
    monkeypatch.setattr(tune, "_choices", {})
    monkeypatch.setattr(tune, "_disk_loaded", True)
    rounds = {"numpy": 1.0, "torch": torch_time, "jax": 2.0, "cupy": 2.0}
    timing = batchmv._timing
    monkeypatch.setattr(timing, "rounds_in_use", lambda run, work, budget_s=0.05: rounds[run.__defaults__[0].engine.name])
    monkeypatch.setattr(timing, "median_seconds", lambda run, **_: 0.25)  # the home library's work alone
    a, x = _problem(rng, "numpy", dtype="float32", m=8, n=8, batch=(4,))
    batchmv.matvec(a, x, backend="fastest")  # measures
    plan = batchmv.plan(a, x, backend="fastest")
    assert plan.backend == chosen
    assert "numpy 750 ms" in plan.notes[0] and f"torch {(torch_time - 0.25) * 1e3:.3g} ms" in plan.notes[0]


@pytest.mark.parametrize("home", support.lib_params())
def test_plan_with_fastest_times_nothing(rng, home, monkeypatch):
    """plan(..., backend="fastest") on a kind never measured runs no GEMM and no timer: it
    names the home engine and the candidates (counted by wrapping every engine's kernels
    and the timer; a matvec afterwards is the positive control)."""
    monkeypatch.delenv("BATCHMV_TUNE_CACHE", raising=False)
    monkeypatch.setattr(batchmv._tune, "_choices", {})
    monkeypatch.setattr(batchmv._tune, "_disk_loaded", True)
    kernels = []
    for name in batchmv.available_backends():
        engine = batchmv._registry.get_engine(name)
        for method in ("gemm", "expression"):
            if hasattr(engine, method):
                original = getattr(engine, method)
                monkeypatch.setattr(engine, method, lambda *a, _f=original, **k: kernels.append(1) or _f(*a, **k))
    timed = []
    original_times = batchmv._timing.run_times
    monkeypatch.setattr(batchmv._timing, "run_times", lambda *a, **k: timed.append(1) or original_times(*a, **k))
    a, x = _problem(rng, home, dtype="float32", m=16, n=8, batch=(40,))
    p = batchmv.plan(a, x, backend="fastest")
    assert kernels == [] and timed == []
    assert p.backend == home and "not measured yet" in p.notes[0] and "the first matvec of this kind times" in p.notes[0]
    batchmv.matvec(a, x, backend="fastest")
    assert kernels and timed
