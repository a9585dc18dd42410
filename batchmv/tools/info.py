"""``batchmv info``: the installation: versions, engines, devices, BLAS libraries and what
``BATCHMV_BACKEND`` selects."""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import sys
from typing import Any, Callable


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add the ``info`` subcommand to ``batchmv``'s subparsers."""
    parser = commands.add_parser("info", help="versions, engines, devices, BLAS, BATCHMV_BACKEND")
    parser.set_defaults(run=run)
    return parser


def _torch_devices(torch: Any) -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    return devices


def _cupy_devices(cupy: Any) -> list[str]:
    """cupy's CUDA devices with their names; a line saying why there are none (no driver,
    no GPU) instead of an error: cupy installs fine on machines without a GPU."""
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDARuntimeError without a driver; never stop the report
        return [f"no usable CUDA device ({type(err).__name__}: {err})"]
    if count == 0:
        return ["no CUDA device"]
    devices = []
    for i in range(count):
        try:
            name = cupy.cuda.runtime.getDeviceProperties(i)["name"]
            name = name.decode() if isinstance(name, bytes) else str(name)
        except Exception:  # noqa: BLE001 - the device is listed even when its name is not
            name = "?"
        devices.append(f"cuda:{i} ({name})")
    return devices


#: For each array library, the devices it can compute on (given the imported module).
_DEVICES: dict[str, Callable[[Any], list[str]]] = {
    "numpy": lambda np: ["cpu"],
    "torch": _torch_devices,
    "jax": lambda jax: [str(d) for d in jax.devices()],
    "cupy": _cupy_devices,
}


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distribution_version(package: str) -> str:
    """Version of the distribution that provides the top-level module ``package`` (no import)."""
    for dist in _distributions().get(package, [package]):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return "?"


def _library_line(name: str, package: str, install: str, devices: Callable[[Any], list[str]] | None) -> str:
    """One line on an array library: version, whether batchmv supports it, its devices
    (importing the library only when it is installed and ``devices`` is given)."""
    from batchmv import _registry

    support = "batchmv module: yes" if _registry.engine_module_exists(name) else "batchmv module: not yet"
    if importlib.util.find_spec(package) is None:
        return f"  {name:<6} not installed ({install}); {support}"
    line = f"  {name:<6} {_distribution_version(package):<12} {support}"
    if devices is None:
        return line
    try:
        found = ", ".join(devices(importlib.import_module(package)))
    except Exception as err:  # a broken installation must not stop the report
        found = f"unavailable ({type(err).__name__}: {err})"
    return f"{line}; devices: {found}"


def run(args: argparse.Namespace) -> int:
    """Print the report; always exit status 0 (a broken library is reported, not raised)."""
    import batchmv
    from batchmv import _registry

    print(f"batchmv   {batchmv.__version__}")
    print(f"Python    {platform.python_version()} ({sys.executable})")
    print(f"platform  {platform.platform()}")
    print(f"CPUs      {os.cpu_count()}")
    print("engines:")
    for name, spec in _registry.ENGINES.items():
        print(_library_line(name, spec.package, spec.install, _DEVICES.get(name, lambda module: ["?"])))
    print("adapters (home libraries of lazy collections whose blocks go to the engines):")
    for name, adapter in _registry.ADAPTERS.items():
        print(_library_line(name, adapter.package, adapter.install, None))

    from threadpoolctl import threadpool_info

    print("thread pools (threadpoolctl, after importing the libraries above):")
    for pool in threadpool_info():
        print(
            f"  {pool['user_api']:<6} {pool['internal_api']:<9} {pool.get('version') or '?':<14} "
            f"threads={pool['num_threads']:<3} {os.path.basename(pool['filepath'])}"
        )
    torch = sys.modules.get("torch")
    if torch is not None:
        mkl = "MKL, linked into torch (invisible to threadpoolctl)" if torch.backends.mkl.is_available() else "see above"
        print(f"  torch  intra-op threads={torch.get_num_threads()}; BLAS: {mkl}")
    print(_backend_env_report())
    return 0


def _backend_env_report() -> str:
    """What the environment variable BATCHMV_BACKEND selects, or why it is invalid."""
    from batchmv import _registry, _select

    raw = os.environ.get(_select.ENV_VAR)
    if raw is None or raw.strip() == "":
        return f"{_select.ENV_VAR}: not set -> auto (each call runs on the engine of its home library)"
    try:
        name = _select.normalize(raw, f"the environment variable {_select.ENV_VAR}={raw!r}")
    except ValueError as err:
        return f"{_select.ENV_VAR}={raw!r} -> invalid, every call without backend= will raise: {err}"
    if name == "auto":
        return f"{_select.ENV_VAR}={raw!r} -> auto (each call runs on the engine of its home library)"
    try:
        _registry.get_engine(name)
    except ImportError as err:
        return f"{_select.ENV_VAR}={raw!r} -> {name}, which cannot run here: {err}"
    return f"{_select.ENV_VAR}={raw!r} -> {name} (every call without backend= runs on it)"
