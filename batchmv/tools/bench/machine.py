"""The machine and the libraries of a run: thread placement, imports, and what is recorded
about them."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
import sys
from typing import Any

from .config import HOMES, Config


def pin(threads: int) -> set[int] | None:
    """Run this thread, and the threads it starts from now on, on ``threads`` CPUs when that
    is fewer than it may use; return the CPUs it had (None: unchanged).

    threadpoolctl and ``torch.set_num_threads`` fix the BLAS and torch pools, but XLA's CPU
    thread pool (jax) has no such knob: it is bounded by the CPUs it may run on.
    """
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = os.sched_getaffinity(0)
    if threads >= len(cpus):
        return None
    os.sched_setaffinity(0, sorted(cpus)[:threads])
    return cpus


def import_libraries() -> dict[str, Any]:
    """The home libraries that import here, by name."""
    libs = {}
    for name in HOMES:
        if importlib.util.find_spec(name) is not None:
            try:
                libs[name] = importlib.import_module(name)
            except Exception as err:  # a broken installation must not stop the others
                print(f"warning: cannot import {name}: {err}", file=sys.stderr)
    if "jax" in libs:
        importlib.import_module("jax.numpy")
    return libs


def describe(libs: dict[str, Any], config: Config, cpus: int) -> dict[str, Any]:
    """What the report records about the machine: CPU, memory, load, versions, BLAS pools,
    threads."""
    from threadpoolctl import threadpool_info

    import batchmv
    from batchmv import _skinny

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = None
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    versions = {"python": platform.python_version(), "batchmv": batchmv.__version__}
    for name in ("numpy", "torch", "jax", "jaxlib", "threadpoolctl", "matplotlib"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    info: dict[str, Any] = {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": cpus,
        "memory_bytes": memory,
        "platform": platform.platform(),
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": versions,
        "blas": [{k: v for k, v in pool.items()} for pool in threadpool_info()],
        "threads": config.threads,
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads_note": "BLAS pools: threadpoolctl; torch: set_num_threads; jax (XLA): the CPU affinity of the run",
        "caches": caches(),
        "llc_bytes": _skinny.LLC_BYTES,
        "l2_bytes": _skinny.L2_BYTES,
    }
    torch = libs.get("torch")
    if torch is not None:
        config_text = torch.__config__.show()
        info["torch"] = {
            "intra_op_threads": torch.get_num_threads(),
            "mkl": torch.backends.mkl.is_available(),
            "mkldnn": torch.backends.mkldnn.is_available(),
            "blas": config_text.split("BLAS_INFO=")[1].split(",")[0] if "BLAS_INFO=" in config_text else "?",
        }
    jax = libs.get("jax")
    if jax is not None:
        info["jax_devices"] = [str(d) for d in jax.devices()]
    return info


def caches(root: str = "/sys/devices/system/cpu/cpu0/cache") -> list[dict[str, str]]:
    """The caches of the first CPU as sysfs lists them: level, type, size, CPUs sharing it."""
    found = []
    try:
        entries = sorted(e for e in os.listdir(root) if e.startswith("index"))
    except OSError:
        return found
    for entry in entries:
        item = {}
        for key in ("level", "type", "size", "shared_cpu_list"):
            try:
                with open(os.path.join(root, entry, key)) as fh:
                    item[key] = fh.read().strip()
            except OSError:
                item[key] = "?"
        found.append(item)
    return found
