"""What the bench times: batchmv's calls, each library's best native call, and the peers
(the alternatives people are usually pointed to).

Cross-library engines (``matvec(A_numpy, X_numpy, backend="torch")``) run in float32
only, ``backend="fastest"`` in float32 with A in C order up to batch 4096, and the peers
other than the broadcast matmul and ``numpy.matvec`` in float32 with A in C order only
(``--all-peers``: everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .config import DTYPES, HOMES, LAYOUTS


class NotApplicable(Exception):
    """The approach cannot run on these arrays (the message says why)."""


@dataclass(frozen=True)
class Approach:
    name: str
    home: str  #: the library of the arrays it takes and returns
    engine: str  #: the library that computes (its peak is the roofline)
    kind: str  #: "batchmv", "prepare", "native" or "peer"
    make: Callable[[Any, Any], Callable[[], Any]]  #: (A, X) -> the call to time (the timer waits for its result)
    linear: bool = False  #: cost linear in the batch: may be timed on the first rows and scaled
    dtypes: tuple[str, ...] = ("float32", "float64")
    core: bool = False  #: a peer that runs at every dtype and layout (the others: float32, A in C order)
    layouts: tuple[str, ...] = LAYOUTS
    max_batch: int | None = None

    def runs_at(self, dtype: str, layout: str, batch: int, all_peers: bool) -> bool:
        if dtype not in self.dtypes or layout not in self.layouts or (layout != "C" and self.home == "jax"):
            return False  # (jax arrays have no strides: no transposed view)
        if self.max_batch is not None and batch > self.max_batch:
            return False
        return self.kind != "peer" or self.core or all_peers or (dtype == "float32" and layout == "C")


def available(libs: dict[str, Any], batchmv: Any, cross: bool) -> list[Approach]:
    """Every approach whose library is installed, batchmv's first."""
    found: list[Approach] = []
    matvec = batchmv.matvec
    engines = [name for name in HOMES if name in batchmv.available_backends() and name in libs]
    for home in HOMES:
        if home not in libs:
            continue
        dtypes = DTYPES if home == "torch" else ("float32", "float64")
        for engine in engines:
            if engine != home and not cross:
                continue
            found.append(Approach(
                f"batchmv.matvec {home}" + ("" if engine == home else f" -> {engine} engine"), home, engine, "batchmv",
                lambda A, X, engine=engine: (lambda: matvec(A, X, backend=engine)),
                dtypes=dtypes if engine == home else ("float32",),  # across libraries: float32 only, to save time
            ))  # fmt: skip
        if hasattr(batchmv, "prepare"):
            prepared = _prepared(batchmv)
            found.append(Approach(f"batchmv.prepare(A) {home}", home, home, "prepare", prepared, dtypes=dtypes))
        fastest = _fastest(matvec)
        found.append(
            Approach(f"batchmv backend='fastest' {home}", home, home, "batchmv", fastest,
                     dtypes=("float32",), layouts=("C",), max_batch=4096)  # its first call at a shape tunes: seconds
        )
    np = libs.get("numpy")
    if np is not None:
        def numpy_(name: str, kind: str, call: Callable[[Any, Any], Any], **kw: Any) -> Approach:
            return Approach(name, "numpy", "numpy", kind, lambda A, X: (lambda: call(A, X)), **kw)

        found += [
            numpy_("numpy X @ A.T", "native", lambda A, X: X @ A.T),
            numpy_("numpy.einsum('mn,bn->bm')", "peer", lambda A, X: np.einsum("mn,bn->bm", A, X), linear=True),
            numpy_("numpy loop A @ x[i]", "peer", lambda A, X: np.stack([A @ v for v in X]), linear=True),
        ]
        if hasattr(np, "matvec"):  # numpy >= 2.2
            found.append(numpy_("numpy.matvec(A, X)", "peer", lambda A, X: np.matvec(A, X), linear=True, core=True))
    torch = libs.get("torch")
    if torch is not None:
        linear_f = torch.nn.functional.linear
        vmapped = torch.func.vmap(torch.mv, in_dims=(None, 0))

        def torch_(name: str, kind: str, call: Callable[[Any, Any], Any], **kw: Any) -> Approach:
            return Approach(name, "torch", "torch", kind, lambda A, X: (lambda: call(A, X)), dtypes=DTYPES, **kw)

        found += [
            torch_("torch X @ A.T", "native", lambda A, X: X @ A.T),
            torch_("torch F.linear(X, A)", "native", lambda A, X: linear_f(X, A)),
            torch_("torch.matmul(A, X[..., None])", "peer", lambda A, X: torch.matmul(A, X[..., None]), linear=True, core=True),
            torch_("torch.bmm(A.expand(b, m, n), X[..., None])", "peer",
                   lambda A, X: torch.bmm(A.expand(X.shape[0], *A.shape), X[..., None]), linear=True),
            torch_("torch.einsum('mn,bn->bm')", "peer", lambda A, X: torch.einsum("mn,bn->bm", A, X)),
            torch_("torch.func.vmap(torch.mv)", "peer", lambda A, X: vmapped(A, X)),
            torch_("torch loop A @ x[i]", "peer", lambda A, X: torch.stack([A @ v for v in X]), linear=True),
        ]  # fmt: skip
    jax = libs.get("jax")
    if jax is not None:
        jnp = jax.numpy
        native = jax.jit(lambda A, X: X @ A.T)
        vmapped_jax = jax.jit(jax.vmap(lambda A, x: A @ x, in_axes=(None, 0)))

        def jax_(name: str, kind: str, call: Callable[[Any, Any], Any], **kw: Any) -> Approach:
            return Approach(name, "jax", "jax", kind, lambda A, X: (lambda: call(A, X)), **kw)

        found += [
            jax_("jax jit(X @ A.T)", "native", native),
            jax_("jax jit(vmap(A @ x))", "peer", vmapped_jax),
            jax_("jax loop A @ x[i]", "peer", lambda A, X: jnp.stack([A @ v for v in X]), linear=True),
        ]
    return found


def _prepared(batchmv: Any) -> Callable[[Any, Any], Callable[[], Any]]:
    def make(A: Any, X: Any) -> Callable[[], Any]:
        op = batchmv.prepare(A)
        return lambda: op(X)

    return make


def _fastest(matvec: Callable[..., Any]) -> Callable[[Any, Any], Callable[[], Any]]:
    def make(A: Any, X: Any) -> Callable[[], Any]:
        try:
            matvec(A[:1, :1], X[:1, :1], backend="fastest")
        except ValueError as err:
            if "fastest" in str(err):  # this version has no backend 'fastest'
                raise NotApplicable("no backend 'fastest' in this batchmv") from None
            raise
        return lambda: matvec(A, X, backend="fastest")

    return make
