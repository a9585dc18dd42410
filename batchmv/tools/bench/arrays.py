"""The arrays of a grid point, shared between numpy and torch (jax holds its own copy,
jax arrays having no strides), and how a result is checked against float64."""

from __future__ import annotations

import math
from typing import Any


def itemsize(dtype: str) -> int:
    return {"float32": 4, "float64": 8, "bfloat16": 2}[dtype]


def to(lib: str, libs: dict[str, Any], arr: Any, dtype: str) -> Any:
    """The numpy array ``arr`` as an array of ``lib`` in ``dtype`` (numpy and torch share it)."""
    if lib == "numpy":
        return arr
    if lib == "torch":
        torch = libs["torch"]
        t = torch.from_numpy(arr)
        return t.to(torch.bfloat16) if dtype == "bfloat16" else t
    return libs["jax"].numpy.asarray(arr)


def at_point(libs, cache, m, n, b, dtype, layout) -> dict[str, Any]:  # noqa: ANN001
    """The point's arrays per home library: (A in ``layout``, X); numpy and torch share buffers.
    ``cache`` keeps A and what is made from it for every batch of one (m, n), and X and
    what is made from it for one batch at a time."""
    np = libs["numpy"]
    if "A32" not in cache:
        cache["A32"] = np.random.default_rng([m, n]).standard_normal((m, n), dtype=np.float32)
    if cache.get("batch") != b:  # a new X: forget the previous batch's arrays
        for key in [k for k in cache if isinstance(k, tuple) and k[0] in ("X", "bf16X", "jaxX")]:
            del cache[key]
        cache["batch"] = b
        cache[("X", "float32")] = np.random.default_rng([m, n, b]).random((b, n), dtype=np.float32) - np.float32(0.5)
    base = "float32" if dtype == "bfloat16" else dtype
    if ("A", base) not in cache:
        cache[("A", base)] = cache["A32"].astype(base, copy=False)
        cache[("A64", base)] = cache[("A", base)].astype(np.float64)
    if ("X", base) not in cache:
        cache[("X", base)] = cache[("X", "float32")].astype(base, copy=False)
    A, X = cache[("A", base)], cache[("X", base)]
    if layout == "T" and ("B", base) not in cache:  # A as the transposed view of a C-order (n, m) buffer
        cache[("B", base)] = np.ascontiguousarray(A.T)
    B = cache.get(("B", base))
    out = {"A64": cache[("A64", base)], "X64": X[:8].astype(np.float64)}
    if dtype == "bfloat16":  # the reference is computed from the rounded values
        torch = libs["torch"]
        if ("bf16",) not in cache:
            Ab = torch.from_numpy(A).to(torch.bfloat16)
            cache[("bf16",)] = (Ab, Ab.T.contiguous())
        if ("bf16X",) not in cache:
            cache[("bf16X",)] = torch.from_numpy(X).to(torch.bfloat16)
        (Ab, Bb), Xb = cache[("bf16",)], cache[("bf16X",)]
        out["A64"] = Ab.double().numpy()
        out["X64"] = Xb[:8].double().numpy()
        out["torch"] = (Ab if layout == "C" else Bb.T, Xb)
        return out
    out["numpy"] = (A if layout == "C" else B.T, X)
    if "torch" in libs:
        torch = libs["torch"]
        out["torch"] = (torch.from_numpy(A) if layout == "C" else torch.from_numpy(B).T, torch.from_numpy(X))
    if "jax" in libs and layout == "C":
        jnp = libs["jax"].numpy
        if ("jaxA", base) not in cache:
            cache[("jaxA", base)] = jnp.asarray(A)
        if ("jaxX", base) not in cache:
            cache[("jaxX", base)] = jnp.asarray(X)
        out["jax"] = (cache[("jaxA", base)], cache[("jaxX", base)])
    return out


def max_rel_error(libs: dict[str, Any], y: Any, ref: Any, rows: int) -> float:
    """Max |y - ref| / max |ref| over the first ``rows`` vectors."""
    np = libs["numpy"]
    torch = libs.get("torch")
    if torch is not None and isinstance(y, torch.Tensor):
        y = y[:rows].double().numpy()
    y = np.asarray(y[:rows], dtype=np.float64)
    if y.ndim == 3:  # the broadcast peers return (b, m, 1)
        y = y[..., 0]
    ref = ref[: y.shape[0]]  # (a call on the first vector only: the GEMV of the skinny section)
    scale = float(np.max(np.abs(ref))) or 1.0
    return float(np.max(np.abs(y - ref))) / scale


def tolerance(dtype: str, n: int) -> float:
    eps = {"float32": 2.0**-23, "float64": 2.0**-52, "bfloat16": 2.0**-7}[dtype]
    return min(8 * math.sqrt(n) * eps, 0.05)
