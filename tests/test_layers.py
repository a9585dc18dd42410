"""The layer contracts of pyproject.toml ([tool.importlinter]), checked by import-linter on
the package laid out as installed (``backends/`` is ``batchmv.backends`` only in the
wheel), with a positive control: an upward import breaks them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")


def _installed_layout(where: Path) -> Path:
    shutil.copytree(ROOT / "batchmv", where / "batchmv", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "backends", where / "batchmv" / "backends", ignore=shutil.ignore_patterns("__pycache__"))
    return where


def _lint(where: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(where), "HOME": str(where)}
    return subprocess.run(
        [str(LINT), "--no-cache", str(ROOT / "pyproject.toml")], cwd=where, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_the_layer_contracts_hold(tmp_path):
    proc = _lint(_installed_layout(tmp_path))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "3 kept, 0 broken" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("_checks.py", "from . import _api", "one-way layers"),  # an upward import
        ("backends/numpy.py", "from . import torch", "one-way layers"),  # engines are independent
        ("_call.py", "from .tools import cli", "never imports the tools"),
        ("tools/apply/npy.py", "from . import command", "No import cycles"),
    ],
)
def test_an_upward_import_breaks_them(tmp_path, module, line, broken):
    where = _installed_layout(tmp_path)
    path = where / "batchmv" / module
    path.write_text(path.read_text() + f"\n{line}\n")
    proc = _lint(where)
    assert proc.returncode != 0 and broken in proc.stdout, proc.stdout[-4000:]
