"""Which engine runs: argument > use_backend context > BATCHMV_BACKEND (read once) > auto.

And importing batchmv imports no array library but numpy.
"""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest

import batchmv
import support

A = np.ones((2, 3))
X = np.ones((4, 3))


def engine_used(**kwargs) -> str:
    return batchmv.plan(A, X, **kwargs).backend


@pytest.fixture
def other():
    """An engine other than numpy (the home engine of A and X)."""
    others = [name for name in support.testable() if name != "numpy"]
    if not others:
        pytest.skip("needs a second engine besides numpy")
    return others[0]


def test_auto_is_the_home_library(xp_name):
    A_, X_ = support.to_lib(A, xp_name), support.to_lib(X, xp_name)
    assert batchmv.plan(A_, X_).backend == xp_name
    assert batchmv.plan(A_, X_, backend="auto").backend == xp_name
    if support.lib_device(xp_name) == "cpu":
        assert batchmv.plan(A_, [1.0, 2.0, 3.0]).backend == xp_name  # x a list: A's library
    else:  # a list becomes a numpy array on the CPU, which a GPU library's call refuses
        with pytest.raises(TypeError, match="never moves data"):
            batchmv.plan(A_, [1.0, 2.0, 3.0])
    assert batchmv.plan([[1.0, 2.0, 3.0]], [1.0, 2.0, 3.0]).backend == "numpy"


def test_argument_overrides_context_and_environment(fresh_selection, monkeypatch, other):
    monkeypatch.setenv("BATCHMV_BACKEND", other)
    with batchmv.use_backend(other):
        assert engine_used(backend="numpy") == "numpy"
        assert engine_used() == other
    assert engine_used() == other  # from the environment


def test_context_overrides_environment(fresh_selection, monkeypatch, other):
    monkeypatch.setenv("BATCHMV_BACKEND", other)
    with batchmv.use_backend("numpy"):
        assert engine_used() == "numpy"


def test_use_backend_nests_and_restores(other):
    assert engine_used() == "numpy"
    with batchmv.use_backend(other) as name:
        assert name == other
        assert engine_used() == other
        with batchmv.use_backend("numpy"):
            assert engine_used() == "numpy"
            with batchmv.use_backend("auto"):
                assert engine_used() == "numpy"
        assert engine_used() == other
    assert engine_used() == "numpy"


def test_use_backend_restores_after_an_exception(other):
    with pytest.raises(RuntimeError):
        with batchmv.use_backend(other):
            raise RuntimeError("boom")
    assert engine_used() == "numpy"


def test_use_backend_normalises_its_name(other):
    with batchmv.use_backend(f"  {other.upper()} ") as name:
        assert name == other
        assert engine_used() == other


def test_new_thread_starts_from_the_default(other):
    seen = {}

    def worker():
        seen["start"] = engine_used()
        with batchmv.use_backend(other):
            seen["inside"] = engine_used()

    with batchmv.use_backend(other):
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        assert engine_used() == other
    assert seen == {"start": "numpy", "inside": other}
    assert engine_used() == "numpy"  # the thread's setting did not leak


def test_threads_do_not_see_each_other(other):
    barrier = threading.Barrier(2)
    seen = {}

    def worker(name):
        with batchmv.use_backend(name):
            barrier.wait()  # both threads are inside their own context now
            seen[name] = engine_used()
            barrier.wait()

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("numpy", other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"numpy": "numpy", other: other}


def test_asyncio_tasks_see_their_own_value(other):
    async def task(name, log):
        with batchmv.use_backend(name):
            for _ in range(3):
                await asyncio.sleep(0)  # let the other task run inside its own context
                log.append((name, engine_used()))

    async def main():
        log: list = []
        await asyncio.gather(task("numpy", log), task(other, log))
        return log

    log = asyncio.run(main())
    assert len(log) == 6
    assert all(name == used for name, used in log)


def test_environment_read_once_on_first_use(fresh_selection, monkeypatch, other):
    monkeypatch.setenv("BATCHMV_BACKEND", other)
    assert fresh_selection._env_value is fresh_selection._UNREAD, "read before first use"
    assert engine_used() == other
    monkeypatch.setenv("BATCHMV_BACKEND", "numpy")
    assert engine_used() == other  # not read again
    monkeypatch.delenv("BATCHMV_BACKEND")
    assert engine_used() == other


@pytest.mark.parametrize("value", ["", "   ", "\t"])
def test_empty_environment_value_is_unset(fresh_selection, monkeypatch, value):
    monkeypatch.setenv("BATCHMV_BACKEND", value)
    assert engine_used() == "numpy"


def test_environment_case_and_whitespace(fresh_selection, monkeypatch, other):
    monkeypatch.setenv("BATCHMV_BACKEND", f"  {other.upper()} ")
    assert engine_used() == other


def test_explicit_backend_does_not_consult_a_bad_environment(fresh_selection, monkeypatch):
    monkeypatch.setenv("BATCHMV_BACKEND", "bogus")
    assert engine_used(backend="numpy") == "numpy"
    with batchmv.use_backend("numpy"):
        assert engine_used() == "numpy"
    assert fresh_selection._env_value is fresh_selection._UNREAD, "the environment was read without need"


def test_bad_environment_raises_when_consulted(fresh_selection, monkeypatch):
    monkeypatch.setenv("BATCHMV_BACKEND", "bogus")
    for call in (lambda: batchmv.plan(A, X), lambda: batchmv.matvec(A, X)):
        with pytest.raises(ValueError, match="BATCHMV_BACKEND") as err:
            call()
        assert "bogus" in str(err.value)


def test_argument_case_and_whitespace(other):
    assert engine_used(backend=f" {other.title()}  ") == other


CHILD = r"""
import json, sys
watched = ("torch", "jax", "jaxlib", "cupy", "dask", "tensorflow")
def loaded():
    return sorted(m for m in sys.modules if m.split(".")[0] in watched)
import batchmv
after_import = loaded()
backends = batchmv.available_backends()
after_available = loaded()
import numpy as np
y = batchmv.matvec(np.ones((2, 3)), np.ones((4, 3)))
p = batchmv.plan(np.ones((2, 3)), [1.0, 2.0, 3.0])
after_numpy_call = loaded()
print(json.dumps({"import": after_import, "available": after_available, "numpy call": after_numpy_call,
                  "backends": list(backends)}))
"""


def test_import_and_numpy_calls_load_no_other_array_library():
    proc = support.run_python(CHILD)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["import"] == [], f"import batchmv imported {report['import']}"
    assert report["available"] == [], f"available_backends() imported {report['available']}"
    assert "numpy" in report["backends"]
    assert report["numpy call"] == [], f"a numpy-only call imported {report['numpy call']}"


def test_environment_not_read_at_import():
    code = r"""
import os
import batchmv, numpy as np
os.environ["BATCHMV_BACKEND"] = "numpy"  # set after import: still used, since read on first use
print(batchmv.plan(np.ones((2, 2)), np.ones(2)).backend)
"""
    proc = support.run_python(code, env=support.child_env(BATCHMV_BACKEND="bogus"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "numpy"
