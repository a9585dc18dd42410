"""The ``"fastest"`` engine: among the engines that can take a call without a copy and keep
its meaning, the one measured fastest for this kind of call.

A kind of call is (result library, device, dtype, each operand's dtype, layout, stride
signs, writability and alignment, shape bucket): what decides which engines can take the
call and which is fastest.  Each kind is measured once, in the state it will run in, and the choice is
cached in memory and, when ``BATCHMV_TUNE_CACHE`` names a file, on disk
(:mod:`batchmv._tune_cache`: a file that cannot be trusted is ignored with a warning).  A
remembered choice is used only for arrays its engine takes without a copy; arrays it
cannot take are a kind of their own, keyed by the engines that can.

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

import math
import os
import platform
import threading
from typing import Any

from . import _call, _registry, _run, _timing, _tune_cache
from ._errors import CopyRequiredError
from ._memory import ALIGNMENT

CACHE_ENV = "BATCHMV_TUNE_CACHE"
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


def kind_of(home: Any, a: Any, x: Any, axis: int, dtype: Any, op: str = "N", out: Any = None) -> str:
    """The cache key of a call: what decides which engines can take it without a copy and
    which is fastest, not the values.

    >>> import numpy as np
    >>> from batchmv._registry import get_engine
    >>> a, x = np.ones((3, 4), np.float32), np.ones((20, 4), np.float32)
    >>> kind_of(get_engine("numpy"), a, x, 1, np.dtype(np.float32))  # doctest: +ELLIPSIS
    'numpy|cpu|float32|A:float32,C,...|x:float32,vectors-contiguous,...|m,n,b~2^(2, 2, 5)'
    """
    a_strides, x_strides = home.strides(a), home.strides(x)
    m, n = home.shape(a)
    a_layout = "C" if a_strides[1] == 1 else "F" if a_strides[0] == 1 else "strided"
    x_layout = "vectors-contiguous" if x_strides[axis] == 1 else "batch-contiguous"
    batch = math.prod(s for i, s in enumerate(home.shape(x)) if i != axis)
    bucket = tuple(max(0, math.ceil(math.log2(max(v, 1)))) for v in (m, n, batch))
    kind = (
        f"{home.name}|{home.device(x)}|{dtype}|A:{_operand(home, a, a_layout, a_strides)}"
        f"|x:{_operand(home, x, x_layout, x_strides)}|m,n,b~2^{bucket}"
    )
    if out is not None:  # an engine that cannot write into out would copy into it
        out_strides = home.strides(out)
        kind += f"|out:{_operand(home, out, 'strided' if None in out_strides else 'given', out_strides)}"
    return kind if op == "N" else f"{kind}|op:{op}"


def _operand(home: Any, arr: Any, layout: str, strides: tuple) -> str:
    """What decides whether an engine can share an operand: its dtype (byte order
    included), its layout, the signs of its strides, whether it is writable (libraries
    import read-only memory by other routes), and how its data is aligned (another library
    may share only element-aligned data, and JAX only ``ALIGNMENT``-aligned)."""
    signs = "?" if None in strides else "neg" if any(s < 0 for s in strides) else "pos"
    try:
        access = "rw" if home.is_writable(arr) else "ro"
    except Exception:  # noqa: BLE001 - immutable arrays (jax) say so by raising
        access = "ro"
    try:
        address = home.address(arr)[0]
    except Exception:  # noqa: BLE001 - no observable address (tracers, sharded arrays)
        align = "align?"
    else:
        itemsize = home.itemsize(arr)
        align = f"align{ALIGNMENT}" if address % ALIGNMENT == 0 else "aligned" if address % itemsize == 0 else "misaligned"
    return f"{home.dtype_name(arr)},{layout},{signs},{access},{align}"


def _load_disk() -> None:
    global _disk_loaded
    _disk_loaded = True
    path = os.environ.get(CACHE_ENV)
    if path:
        _choices.update(_tune_cache.load(path, _machine(), frozenset(_registry.available_backends())))


def _save_disk(choices: dict[str, dict[str, Any]]) -> None:
    path = os.environ.get(CACHE_ENV)
    if path:
        _tune_cache.save(path, _machine(), frozenset(_registry.available_backends()), choices)


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


#: What building a call raises for an engine that cannot take it without a copy.
_REFUSALS = (CopyRequiredError, TypeError, ValueError, ImportError, RuntimeError, BufferError)


def _candidates(home: Any, a: Any, x: Any, axis: int, op: str, out: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The calls of the home library's engine and of every available engine that takes this
    call without a copy and keeps its meaning, checked (nothing computed), and the engines
    refused, with the reason."""
    calls: dict[str, Any] = {}
    refused: dict[str, str] = {}
    for name in dict.fromkeys((home.name, *_registry.available_backends())):
        try:
            calls[name] = _build_for(name, home, a, x, axis, op, out)
        except _REFUSALS as err:
            refused[name] = type(err).__name__
    return calls, refused


def _build_for(name: str, home: Any, a: Any, x: Any, axis: int, op: str, out: Any) -> Any:
    """The call on engine ``name`` with copy=False, checked ("auto" for the home engine,
    which backend= cannot name when it is an array-API library's)."""
    return _call.build(a, x, axis, out, "auto" if name == home.name else name, False, op=op)


#: Answers of :func:`_takes` kept at most; beyond, they start over.
_MAX_CHECKS = 1024
_checks: dict[tuple, bool] = {}


def _takes(name: str, home: Any, a: Any, x: Any, axis: int, op: str, out: Any, key: str) -> bool:
    """Whether engine ``name`` takes this very call without a copy, keeping its meaning:
    a call built for it with copy=False.  The answer is kept for arrays that agree in
    everything the checks read (the home engine's signature of A and x, and the kind,
    which adds alignment and writability); a call is built only for new ones."""
    signature = home.signature(a, x)
    memo = None if signature is None else (name, type(a), type(x), signature, axis, key)
    try:
        return _checks[memo]
    except (KeyError, TypeError):  # TypeError: a signature that cannot be hashed
        pass
    try:
        _build_for(name, home, a, x, axis, op, out)
        takes = True
    except _REFUSALS:
        takes = False
    if memo is not None:
        if len(_checks) >= _MAX_CHECKS:
            _checks.clear()
        try:
            _checks[memo] = takes
        except TypeError:
            pass
    return takes


def _known(key: str) -> dict[str, Any] | None:
    with _lock:
        if not _disk_loaded:
            _load_disk()
        return _choices.get(key)


def _decide(home: Any, a: Any, x: Any, axis: int, dtype: Any, op: str, out: Any, measure: bool) -> tuple[str, str]:
    """The choice for this call: the remembered one when its engine takes these very
    arrays; otherwise measured (``measure``) or, until measured, the home engine."""
    key = kind_of(home, a, x, axis, dtype, op, out)
    known = _known(key)
    if known is not None and _takes(known["engine"], home, a, x, axis, op, out, key):
        return _cached(known, key)
    calls, refused = _candidates(home, a, x, axis, op, out)
    if known is not None:
        # these arrays differ from the kind's in something the kind does not show, and
        # the remembered engine cannot take them: the engines that can make the kind
        key = f"{key}|engines:{','.join(sorted(calls))}"
        known = _known(key)
        if known is not None and known["engine"] in calls:
            return _cached(known, key)
    skipped = f"; not eligible: {refused}" if refused else ""
    if not measure:
        return home.name, (
            f"fastest: not measured yet for {key}; the first matvec of this kind times {', '.join(calls) or 'no engine'}"
            f" and keeps the fastest; until then this plan shows {home.name}, the home library's engine{skipped}"
        )
    if not calls:
        return home.name, f"fastest: no engine takes this call without a copy ({refused}); using {home.name}"
    best, times, work = _measure(home, x, calls)
    with _lock:
        _choices[key] = {"engine": best, "times": times}
        snapshot = dict(_choices)
    _save_disk(snapshot)
    state = f", each with {home.name}'s own work between calls" if work else ""
    return best, f"fastest: {best} (measured {_show(times)}{state} for {key}{skipped})"


def _cached(known: dict[str, Any], key: str) -> tuple[str, str]:
    return known["engine"], f"fastest: {known['engine']} (cached choice for {key}; measured {_show(known['times'])})"


def _measure(home: Any, x: Any, calls: dict[str, Any]) -> tuple[str, dict[str, float], bool]:
    """(the fastest engine by the decision rule, each engine's share of a round in
    seconds, whether the home library's work ran between calls)."""
    work = home_work(home, x) if len(calls) > 1 else None
    work_alone = _timing.median_seconds(work) if work is not None else 0.0
    times: dict[str, float] = {}
    for name, call in calls.items():  # seconds per call, or per round of work and call
        run = lambda call=call: _run.execute(call)  # noqa: E731
        times[name] = _timing.median_seconds(run) if work is None else _timing.rounds_in_use(run, work)
    best = min(times, key=times.__getitem__)
    if home.name in times and times[home.name] <= times[best] * (1 + HOME_MARGIN):
        best = home.name
    return best, {name: max(float(t - work_alone), 0.0) for name, t in times.items()}, work is not None


def recall(home: Any, a: Any, x: Any, axis: int, dtype: Any, op: str = "N", out: Any = None) -> tuple[str, str]:
    """(engine name, why) as :func:`choose` decides for this call, without timing anything:
    the home library's engine, and the candidates, while no decision exists."""
    return _decide(home, a, x, axis, dtype, op, out, measure=False)


def choose(home: Any, a: Any, x: Any, axis: int, dtype: Any, op: str = "N", out: Any = None) -> tuple[str, str]:
    """(engine name, why) for a call whose inputs ``a``, ``x`` belong to ``home``: measured
    once per kind of call, then remembered."""
    return _decide(home, a, x, axis, dtype, op, out, measure=True)


def _show(times: dict[str, float]) -> str:
    return ", ".join(f"{k} {v * 1e3:.3g} ms" for k, v in sorted(times.items(), key=lambda kv: kv[1]))
