"""The ``"fastest"`` engine: among the engines that can take a call without a copy and keep
its meaning, the one measured fastest for this kind of call.

A kind of call is (result library, device, dtype, layout of A and x, shape bucket).  Each
kind is measured once, in the state it will run in, and the choice is cached in memory
and, when ``BATCHMV_TUNE_CACHE`` names a file, on disk.  A cache file that is corrupt, of
another format, or written on another machine or library set is ignored with a warning,
never trusted.

The state it will run in: a program whose arrays belong to one library does that
library's own work between its matvec calls.  On the CPU each library keeps its own thread
pool, and the threads of one pool that wait for work by spinning take the cores from the
other (benchmarks/README.md, "thread pools", has the measurements).  So each engine is timed in rounds of a GEMM of the home library (:data:`HOME_WORK`
squared, float32) and a call, and the engines are compared on the time of a round: what the
two pools cost each other is counted.  The home library's engine is kept unless another is
faster by more than :data:`HOME_MARGIN`.  This takes ``_timing.SETTLE_S`` seconds and more per
engine, once per kind of call; the times the notes show are a round less the GEMM alone.
With several threads per pool the interference is erratic, and a choice measured once can
fail to hold (README, "Benchmarks and targets").

:func:`choose` measures (``matvec``); :func:`recall` only reports what was decided
(``plan``, which never computes).
"""

from __future__ import annotations

import json
import math
import os
import platform
import threading
import warnings
from typing import Any

from . import _call, _registry, _run, _timing
from ._errors import CopyRequiredError

CACHE_ENV = "BATCHMV_TUNE_CACHE"
_FORMAT = "batchmv-tune-1"
_lock = threading.Lock()
_choices: dict[str, dict[str, Any]] = {}
_disk_loaded = False


def _machine() -> dict[str, Any]:
    from importlib import metadata

    versions = {}
    for name in _registry.available_backends():
        try:
            versions[name] = metadata.version(_registry.ENGINES[name].package)
        except metadata.PackageNotFoundError:
            versions[name] = "?"
    return {"node": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count(), "versions": versions}


def kind_of(home: Any, a: Any, x: Any, axis: int, dtype: Any, op: str = "N") -> str:
    """The cache key of a call: what decides which engine is fastest, not the values."""
    a_strides, x_strides = home.strides(a), home.strides(x)
    m, n = home.shape(a)
    a_layout = "C" if a_strides[1] == 1 else "F" if a_strides[0] == 1 else "strided"
    x_layout = "vectors-contiguous" if x_strides[axis] == 1 else "batch-contiguous"
    batch = math.prod(s for i, s in enumerate(home.shape(x)) if i != axis)
    bucket = tuple(max(0, math.ceil(math.log2(max(v, 1)))) for v in (m, n, batch))
    kind = f"{home.name}|{home.device(x)}|{dtype}|A:{a_layout}|x:{x_layout}|m,n,b~2^{bucket}"
    return kind if op == "N" else f"{kind}|op:{op}"


def _load_disk() -> None:
    global _disk_loaded
    _disk_loaded = True
    path = os.environ.get(CACHE_ENV)
    if not path or not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError("not a batchmv tuning cache")
        if data.get("machine") != _machine():
            raise ValueError("written on another machine or with other library versions")
        entries = data["choices"]
        valid = set(_registry.available_backends())
        if not isinstance(entries, dict) or not all(
            isinstance(v, dict) and v.get("engine") in valid for v in entries.values()
        ):
            raise ValueError("entries name engines that are not available here")
    except (OSError, ValueError, KeyError, TypeError) as err:
        warnings.warn(f"ignoring the tuning cache {path} ({err}); it will be rewritten", RuntimeWarning, stacklevel=4)
        return
    _choices.update(entries)


def _save_disk() -> None:
    path = os.environ.get(CACHE_ENV)
    if not path:
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"format": _FORMAT, "machine": _machine(), "choices": _choices}, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


#: The home library's own engine is kept unless another is faster by more than this fraction
#: (timings on a shared machine vary by a few percent; a tie never sends a call elsewhere).
HOME_MARGIN = 0.02

#: The side of the square float32 GEMM of the home library run between timed calls (large
#: enough that its library runs it on all of its threads).
HOME_WORK = 192


def home_work(home: Any, x: Any) -> Any:
    """A call that makes the home library use its CPU thread pool (its own matmul of a
    :data:`HOME_WORK`-square float32 matrix), or None (GPU arrays)."""
    if home.device(x) != "cpu":
        return None
    import numpy as np

    w = home.asarray(np.full((HOME_WORK, HOME_WORK), 0.5, np.float32))
    return lambda: _timing.wait(home.expression(w, w, 1))


def _candidates(home: Any, a: Any, x: Any, axis: int, op: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The calls of every available engine that takes this call without a copy and keeps
    its meaning, checked (nothing computed), and the engines refused, with the reason."""
    calls: dict[str, Any] = {}
    refused: dict[str, str] = {}
    for name in _registry.available_backends():
        try:
            calls[name] = _call.build(a, x, axis, None, name, False, op=op)
        except (CopyRequiredError, TypeError, ValueError, ImportError, RuntimeError, BufferError) as err:
            refused[name] = type(err).__name__
    return calls, refused


def _known(key: str) -> dict[str, Any] | None:
    with _lock:
        if not _disk_loaded:
            _load_disk()
        return _choices.get(key)


def recall(home: Any, a: Any, x: Any, axis: int, dtype: Any, op: str = "N") -> tuple[str, str]:
    """(engine name, why) as :func:`choose` decided for this kind of call, without timing
    anything: the home library's engine, and the candidates, while no decision exists."""
    key = kind_of(home, a, x, axis, dtype, op)
    known = _known(key)
    if known is not None:
        return known["engine"], f"fastest: {known['engine']} (cached choice for {key}; measured {_show(known['times'])})"
    calls, refused = _candidates(home, a, x, axis, op)
    skipped = f"; not eligible: {refused}" if refused else ""
    return home.name, (
        f"fastest: not measured yet for {key}; the first matvec of this kind times {', '.join(calls) or 'no engine'}"
        f" and keeps the fastest; until then this plan shows {home.name}, the home library's engine{skipped}"
    )


def choose(home: Any, a: Any, x: Any, axis: int, dtype: Any, op: str = "N") -> tuple[str, str]:
    """(engine name, why) for a call whose inputs ``a``, ``x`` belong to ``home``: measured
    once per kind of call, then remembered."""
    key = kind_of(home, a, x, axis, dtype, op)
    known = _known(key)
    if known is not None:
        return known["engine"], f"fastest: {known['engine']} (cached choice for {key}; measured {_show(known['times'])})"
    calls, refused = _candidates(home, a, x, axis, op)
    work = home_work(home, x) if len(calls) > 1 else None
    work_alone = _timing.median_seconds(work) if work is not None else 0.0
    times: dict[str, float] = {}
    for name, call in calls.items():  # seconds per call, or per round of work and call
        run = lambda call=call: _run.execute(call)  # noqa: E731
        times[name] = _timing.median_seconds(run) if work is None else _timing.rounds_in_use(run, work)
    if not times:
        return home.name, f"fastest: no engine takes this call without a copy ({refused}); using {home.name}"
    best = min(times, key=times.__getitem__)
    if home.name in times and times[home.name] <= times[best] * (1 + HOME_MARGIN):
        best = home.name
    times = {name: max(t - work_alone, 0.0) for name, t in times.items()}  # shown: the call's share
    with _lock:
        _choices[key] = {"engine": best, "times": times}
        _save_disk()
    skipped = f"; not eligible: {refused}" if refused else ""
    state = f", each with {home.name}'s own work between calls" if work is not None else ""
    return best, f"fastest: {best} (measured {_show(times)}{state} for {key}{skipped})"


def _show(times: dict[str, float]) -> str:
    return ", ".join(f"{k} {v * 1e3:.3g} ms" for k, v in sorted(times.items(), key=lambda kv: kv[1]))
