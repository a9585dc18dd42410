"""Test configuration: which array libraries are under test.

Like SciPy's array-API tests, the libraries come from ``BATCHMV_TEST_BACKENDS``
(comma-separated, e.g. ``numpy,torch``).  Unset or empty: every library batchmv knows
(numpy, torch, jax, cupy); those that are not installed, or for which batchmv has no
engine yet, are skipped with the reason.  A library that the variable names explicitly
but that is not installed fails the run (a CI job that asked for torch must not pass by
skipping every torch test); so does naming cupy where it sees no CUDA device.  Unnamed,
cupy without a usable GPU is skipped with the reason ("no CUDA device"), and tests that
pair libraries whose arrays live on different devices here (cupy and numpy) are skipped.
Tests marked ``gpu`` need a CUDA device and skip without one; ``pytest -m gpu`` runs them.

Fixtures:

* ``xp_name`` — parametrised over the libraries under test (``"numpy"``, ``"torch"``, ...).
* ``engine_name`` — the same list, for the engine that computes.
* ``rng`` — a seeded numpy Generator.
* ``fresh_selection`` — batchmv's engine selection reset: no context, env not read yet.
"""

from __future__ import annotations

import numpy as np
import pytest

import support


def pytest_configure(config: pytest.Config) -> None:
    problems = support.usage_problems()
    if problems:
        raise pytest.UsageError("; ".join(problems))
    if "jax" in support.testable():
        # as in SciPy's array-API tests: jax computes in 64 bits like the other libraries
        import jax

        jax.config.update("jax_enable_x64", True)


def pytest_report_header(config: pytest.Config) -> list[str]:
    names, explicit = support.requested_libraries()
    state = ", ".join(f"{n} ({support.skip_reason(n) or 'tested'})" for n in names)
    return [f"batchmv array libraries ({'from ' + support.ENV_VAR if explicit else 'default'}): {state}"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for name in ("xp_name", "engine_name"):
        if name in metafunc.fixturenames and not _parametrized(metafunc, name):
            metafunc.parametrize(name, support.lib_params())


#: Test parameters that name an array library (a home library or an engine).
LIBRARY_PARAMS = ("xp_name", "engine_name", "home", "engine")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip, with the reason, a test whose libraries cannot meet in one call because their
    arrays live on different devices here (cupy on a GPU with numpy on the CPU); the
    TypeError such a call raises is tested in test_gpu.py."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        names = [params[key] for key in LIBRARY_PARAMS if params.get(key) in support.KNOWN_LIBRARIES]
        reason = support.cross_device_reason(*names) if len(set(names)) > 1 else None
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


def _parametrized(metafunc: pytest.Metafunc, name: str) -> bool:
    return any(name in mark.args[0] for mark in metafunc.definition.iter_markers("parametrize"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture
def fresh_selection(monkeypatch: pytest.MonkeyPatch):
    """batchmv's selection state as in a new process: BATCHMV_BACKEND unset and not yet read."""
    import batchmv._select as select

    monkeypatch.delenv(select.ENV_VAR, raising=False)
    monkeypatch.setattr(select, "_env_value", select._UNREAD)
    yield select


@pytest.fixture(autouse=True)
def _isolated_selection(monkeypatch: pytest.MonkeyPatch):
    """Every test starts as a fresh process would: no BATCHMV_BACKEND from the shell that
    runs the suite, and the variable not read yet (tests may set it with monkeypatch)."""
    import batchmv._select as select

    monkeypatch.delenv(select.ENV_VAR, raising=False)
    monkeypatch.setattr(select, "_env_value", select._UNREAD)
    yield


@pytest.fixture(autouse=True)
def _fresh_call_memory(monkeypatch: pytest.MonkeyPatch):
    """Every test starts with no remembered calls, as a fresh process would: a call that an
    earlier test remembered (with the engine its settings gave) must not skip this test's
    checks."""
    from batchmv import _cache

    monkeypatch.setattr(_cache, "calls", _cache.Runners(_cache.MAX_CALLS))
    yield


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``builds[0]``: the number of calls that went through the full checks
    (``_call.build``) since the test began (no call remembered yet, ``BATCHMV_BACKEND``
    read, as after a process's first call)."""
    from batchmv import _call, _select

    count = [0]
    original = _call.build

    def counting(*args: object, **kwargs: object) -> object:
        count[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(_call, "build", counting)
    _select._environment()
    return count
