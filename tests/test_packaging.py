"""The built wheel: what it contains, and that an installed copy (not this checkout) works."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

import support

pytestmark = pytest.mark.slow

IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Build the wheel from a copy of the repository (so the build leaves nothing in it)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(support.REPO_ROOT, src, ignore=IGNORE)
    out = tmp / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheels = list(out.glob("batchmv-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for required in ("batchmv/__init__.py", "batchmv/backends/__init__.py", "batchmv/backends/numpy.py", "batchmv/backends/torch.py"):
        assert required in names, f"{required} missing from {names}"
    top = {name.split("/")[0] for name in names}
    assert "backends" not in top, "backends/ must be installed as batchmv.backends, not as a top-level package"
    assert "tests" not in top
    assert {t for t in top if not t.endswith(".dist-info")} == {"batchmv"}, top


INSTALLED_CHILD = r"""
import sys, pathlib
target = pathlib.Path(sys.argv[1]).resolve()
import batchmv
import batchmv.backends.numpy, batchmv.backends.torch
for module in (batchmv, batchmv.backends.numpy, batchmv.backends.torch):
    path = pathlib.Path(module.__file__).resolve()
    assert target in path.parents, f"{module.__name__} imported from {path}, not from {target}"
import numpy as np
import torch
A = np.arange(6.0).reshape(2, 3)
x = np.ones((4, 3))
for engine in ("numpy", "torch"):
    y = batchmv.matvec(A, x, backend=engine)
    assert isinstance(y, np.ndarray) and y.tolist() == [[3.0, 12.0]] * 4, (engine, y)
    t = batchmv.matvec(torch.from_numpy(A), torch.from_numpy(x), backend=engine)
    assert isinstance(t, torch.Tensor) and t.tolist() == [[3.0, 12.0]] * 4, (engine, t)
print("installed copy works:", batchmv.__file__)
"""


@support.needs("torch")
def test_installed_wheel_runs_on_both_engines(wheel, tmp_path):
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not (target / "backends").exists()
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = support.child_env()
    env["PYTHONPATH"] = str(target)  # the installed copy, not this checkout
    proc = subprocess.run(
        [sys.executable, "-c", INSTALLED_CHILD, str(target)], capture_output=True, text=True, timeout=300, env=env, cwd=work
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "installed copy works" in proc.stdout
