"""Target (2): the overhead of batchmv's calls over the best native call on tiny arrays."""

from __future__ import annotations

import sys
from typing import Any, Callable

from . import timing
from .arrays import to
from .config import HOMES, Config

TINY = 16  #: target (2): m = n = TINY, batch 1


def measure(libs: dict[str, Any], batchmv: Any, config: Config) -> list[dict[str, Any]]:
    """Target (2): at m = n = 16, the time of batchmv calls and of the best native call, for
    a batch of one vector (X of shape (1, 16)) and for a single vector x of shape (16,):
    medians of blocks of every call timed in alternation (:func:`.timing.alternated`)."""
    np = libs["numpy"]
    rng = np.random.default_rng(16)
    A = rng.standard_normal((TINY, TINY), dtype=np.float32)
    X = rng.standard_normal((1, TINY), dtype=np.float32)
    min_time = max(config.min_time * 3, 0.1)
    rows = []
    for home in HOMES:
        if home not in libs or home not in batchmv.available_backends():
            continue
        a, x2 = to(home, libs, A, "float32"), to(home, libs, X, "float32")
        for shape, x in (("(1, 16)", x2), ("(16,)", x2[0])):
            calls = _tiny_calls(libs, batchmv, home, a, x)
            times: dict[str, float | None] = {}
            for label, fn in list(calls.items()):
                try:
                    fn()
                except Exception as err:  # report and go on
                    times[label] = None
                    del calls[label]
                    print(f"warning: {home} {label}: {type(err).__name__}: {err}", file=sys.stderr)
            times.update({label: t.median for label, t in timing.alternated(calls, min_time).items()})
            natives = {k: v for k, v in times.items() if k.startswith("native") and v is not None}
            best = min(natives, key=natives.get)
            for label, seconds in times.items():
                rows.append({
                    "home": home, "x_shape": shape, "call": label, "median_s": seconds,
                    "best_native": best, "overhead_s": None if seconds is None else seconds - natives[best],
                })  # fmt: skip
    return rows


def _tiny_calls(libs: dict[str, Any], batchmv: Any, home: str, a: Any, x: Any) -> dict[str, Callable[[], Any]]:
    matvec = batchmv.matvec
    calls: dict[str, Callable[[], Any]] = {}
    # every native spelling of the product, the fastest one the reference: numpy.dot calls
    # BLAS with less work around it than matmul, torch.mv than matmul for one vector
    if home == "jax":
        f = libs["jax"].jit(lambda a, x: x @ a.T)
        calls["native jit(x @ A.T)"] = lambda: f(a, x)
        if x.ndim == 1:
            g = libs["jax"].jit(lambda a, x: a @ x)
            calls["native jit(A @ x)"] = lambda: g(a, x)
    else:
        calls["native x @ A.T"] = lambda: x @ a.T
        if x.ndim == 1:
            calls["native A @ x"] = lambda: a @ x
        if home == "numpy":
            dot = libs["numpy"].dot
            calls["native numpy.dot"] = (lambda: dot(a, x)) if x.ndim == 1 else (lambda: dot(x, a.T))
        if home == "torch":
            torch = libs["torch"]
            linear = torch.nn.functional.linear
            calls["native F.linear(x, A)"] = lambda: linear(x, a)
            if x.ndim == 1:
                calls["native torch.mv(A, x)"] = lambda: torch.mv(a, x)
    calls["batchmv.matvec(A, x)"] = lambda: matvec(a, x)
    if hasattr(batchmv, "prepare"):
        op = batchmv.prepare(a)
        calls["batchmv.prepare(A)(x)"] = lambda: op(x)
    return calls
