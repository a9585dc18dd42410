"""The test suite's own configuration: BATCHMV_TEST_BACKENDS selects the libraries, and
naming a library that is not installed fails the run instead of skipping it."""

from __future__ import annotations

import subprocess
import sys

import pytest

import support


def collect(value: str) -> subprocess.CompletedProcess:
    env = support.child_env(**{support.ENV_VAR: value})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider", str(support.TESTS_DIR / "test_errors.py")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=support.REPO_ROOT,
    )


@pytest.mark.slow
def test_requested_library_that_is_missing_fails_the_run():
    missing = next((name for name in support.KNOWN_LIBRARIES if not support.installed(name)), None)
    if missing is None:
        pytest.skip("every known array library is installed here")
    proc = collect(f"numpy,{missing}")
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"{missing} is not installed" in proc.stderr


@pytest.mark.slow
def test_unknown_library_fails_the_run():
    proc = collect("numpy,notalibrary")
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR
    assert "notalibrary" in proc.stderr


@pytest.mark.slow
def test_selection_limits_the_libraries():
    proc = collect("numpy")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "[numpy]" in proc.stdout or "-numpy" in proc.stdout
    assert "[torch]" not in proc.stdout and "[jax]" not in proc.stdout


def test_default_is_every_known_library(monkeypatch):
    monkeypatch.delenv(support.ENV_VAR, raising=False)
    assert support.requested_libraries() == (support.KNOWN_LIBRARIES, False)
    monkeypatch.setenv(support.ENV_VAR, " Torch , numpy,torch ")
    assert support.requested_libraries() == (("torch", "numpy"), True)
