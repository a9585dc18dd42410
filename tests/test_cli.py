"""The command line: ``batchmv info``, ``batchmv demo --quick``, ``python -m batchmv``."""

from __future__ import annotations

import subprocess
import sys

import pytest

import batchmv
from batchmv.tools.cli import main


def test_info_reports_engines_blas_and_backend_variable(monkeypatch, capsys):
    monkeypatch.delenv("BATCHMV_BACKEND", raising=False)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("batchmv", "numpy", "torch", "jax", "cupy", "thread pools", "BATCHMV_BACKEND: not set -> auto"):
        assert word in out


def test_info_survives_an_invalid_backend_variable(monkeypatch, capsys):
    monkeypatch.setenv("BATCHMV_BACKEND", "no-such-engine")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "BATCHMV_BACKEND='no-such-engine' -> invalid" in out
    assert "unknown backend 'no-such-engine'" in out  # the error every call would raise


def test_info_resolves_a_valid_backend_variable(monkeypatch, capsys):
    monkeypatch.setenv("BATCHMV_BACKEND", "  NumPy ")
    assert main(["info"]) == 0
    assert "BATCHMV_BACKEND='  NumPy ' -> numpy (every call" in capsys.readouterr().out


def test_demo_quick_agrees_without_copies(capsys):
    assert main(["demo", "--quick", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "copies" in out and "OK: all" in out
    libraries = [name for name in ("numpy", "torch", "jax") if name in batchmv.available_backends()]
    table = [line.split() for line in out.splitlines() if line.split()[:1] in ([lib] for lib in libraries)]
    assert {row[1] for row in table} == set(libraries)  # every engine, for every home library
    assert {row[0] for row in table} == set(libraries)
    assert {" ".join(row[2:-8]) for row in table} == {"C", "F", "T view"}
    # jax arrays are dense and row-major: jax takes part with A in C order only
    assert all(" ".join(row[2:-8]) == "C" for row in table if "jax" in row[:2])


def test_demo_fails_when_a_view_does_not_point_into_a(monkeypatch, capsys):
    from batchmv.tools import demo

    real = demo._layouts
    monkeypatch.setattr(demo, "_layouts", lambda P: [(label, buf, view, offset + 4) for label, buf, view, offset in real(P)])
    assert main(["demo", "--m", "8", "--n", "8", "--batch", "16", "--repeat", "1", "--threads", "1"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and " NO " in out


def test_demo_rejects_a_size_below_one(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--batch", "0"])
    assert "must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_python_m_batchmv_help():
    done = subprocess.run([sys.executable, "-m", "batchmv", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "info" in done.stdout and "demo" in done.stdout


@pytest.mark.slow
def test_importing_the_cli_imports_no_array_library():
    code = "import sys, batchmv.tools.cli; print(sorted({'torch', 'jax', 'cupy', 'dask'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
