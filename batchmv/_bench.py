"""``batchmv bench``: batchmv against the native calls and the usual alternatives, on a
grid of shapes, batch sizes, dtypes and layouts of A, with the machine's roofline.

Every approach at a grid point runs on the same arrays (numpy and torch share buffers;
jax holds its own copy, jax arrays having no strides), in one process, with fixed thread
counts.  Each time is the median (and IQR) of blocks of calls after a warm-up, in the
manner of ``timeit``: the number of calls per block is calibrated so that a block takes
about a tenth of ``--min-time``, and blocks run until ``--min-time`` has passed (at
least 3 blocks).

The roofline: the peak GEMM throughput of each engine and dtype (a large square GEMM)
and the memory bandwidth (a large copy, 2 bytes moved per byte copied); each result is
shown as time, GFLOP/s and percent of ``min(peak, AI * bandwidth)``, where the arithmetic
intensity ``AI = 2*m*n*batch / ((m*n + batch*n + batch*m) * itemsize)`` counts A, x and
y once.

Peers whose cost grows linearly with the batch (Python loops, the broadcast matmul and
``bmm``, ``numpy.matvec``, ``numpy.einsum``: one matrix-vector product per vector) are
timed on the first k vectors and scaled to the whole batch when a call on all of them
would take longer than twice ``--min-time`` (loops: at most ``--loop-rows`` vectors); the
table marks them with ``*``.  Other calls estimated above ``--max-call`` (twice the
roofline time plus the time to write y into fresh memory) and points whose arrays exceed
``--max-memory`` are skipped and marked.  Cross-library engines
(``matvec(A_numpy, X_numpy, backend="torch")``) run in float32 only,
``backend="fastest"`` in float32 with A in C order up to batch 4096, and the peers other than the
broadcast matmul and ``numpy.matvec`` in float32 with A in C order only (``--all-peers``:
everywhere).

Target (1) compares medians; where batchmv is more than 5 % slower than the best native
call, the two are timed again alternating block by block (so that a change in the
machine's load hits both alike) and that paired ratio decides.

Importing this module imports no array library; :func:`run` imports what it uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from . import _isolation

HOMES = ("numpy", "torch", "jax")
DTYPES = ("float32", "float64", "bfloat16")
LAYOUTS = ("C", "T")

#: The full grid: square and non-square (m, n) pairs from {64, 512, 1024, 4096}.
FULL_SHAPES = ((64, 64), (512, 512), (1024, 1024), (4096, 4096), (64, 4096), (4096, 64))
FULL_BATCHES = (1, 16, 256, 4096, 100_000)
QUICK_SHAPES = ((64, 64), (1024, 1024))
QUICK_BATCHES = (1, 256, 4096)

NATIVE_LIMIT_S = 100e-6  #: target (1) applies where the best native call takes longer than this
#: target (3): the point, and (peer, batchmv call, least speed-up) at it
TARGET3_POINT = (1024, 1024, 4096, "float32", "C")
TARGET3_CHECKS = (
    ("torch.matmul(A, X[..., None])", "batchmv.matvec torch", 30.0),
    ("numpy.matvec(A, X)", "batchmv.matvec numpy", 2.0),
    ("torch loop A @ x[i]", "batchmv.matvec torch", 8.0),
    ("numpy loop A @ x[i]", "batchmv.matvec numpy", 8.0),
)
TINY = 16  #: target (2): m = n = TINY, batch 1


# -- command line -------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    grid = parser.add_argument_group("grid (default: the full grid; --quick: a small one)")
    add = grid.add_argument
    add("--quick", action="store_true", help="small grid, short timings: under a minute on 2 cores")
    add("--m", type=_positive, nargs="+", metavar="M", help="rows of A (with --n: every (m, n) pair)")
    add("--n", type=_positive, nargs="+", metavar="N", help="columns of A (default: the values of --m)")
    add("--batch", type=_positive, nargs="+", metavar="B", help="batch sizes")
    add("--dtype", choices=DTYPES, nargs="+", help="dtypes (bfloat16: torch only; default: all; --quick: float32)")
    add("--layout", choices=LAYOUTS, nargs="+", help="A in C order, or T: the transposed view of a C-order (n, m) buffer")
    add("--only", nargs="+", metavar="TEXT", help="only approaches whose name contains one of these (case-insensitive)")
    add("--no-cross", action="store_true",
        help="skip batchmv calls whose engine is not the arrays' own library (otherwise run in float32)")
    add("--cross", action="store_true", help="with --quick: include them (--quick skips them otherwise)")
    add("--all-peers", action="store_true",
        help="every peer at every dtype and layout (default: beyond float32 with A in C order, only the "
             "broadcast matmul and numpy.matvec)")
    timing = parser.add_argument_group("timing")
    add = timing.add_argument
    add("--threads", type=_positive, help="threads of every BLAS/OpenMP pool and of torch (default: all CPUs)")
    add("--min-time", type=_positive_float, help="seconds of timed calls per measurement (default 0.05; --quick 0.03)")
    add("--max-call", type=_positive_float, help="skip calls estimated above this many seconds (default 1; --quick 0.5)")
    add("--max-memory", type=_positive_float, default=2.0, help="skip points whose A, x and y exceed this many GB (default 2)")
    add("--loop-rows", type=_positive, help="vectors the Python loops run on, scaled to the batch (default 256; --quick 64)")
    output = parser.add_argument_group("output")
    add = output.add_argument
    add("--json", metavar="FILE", help="write machine info, roofline, every result and the targets")
    add("--plot", metavar="FILE.png", help="GFLOP/s against batch per approach, with the roofline (needs matplotlib)")
    add("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to ``batchmv``'s subparsers."""
    parser = commands.add_parser(
        "bench", help="time batchmv against native calls and the usual alternatives, with the roofline",
        description=__doc__.split("\n\n")[0].replace("``", ""),
    )  # fmt: skip
    add_arguments(parser)
    parser.set_defaults(run=main)
    return parser


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog="batchmv bench", description=__doc__.split("\n\n")[0]))


def main(args: argparse.Namespace | list[str] | None = None) -> int:
    """Run ``batchmv bench`` (``args``: parsed arguments, or a command line)."""
    if not isinstance(args, argparse.Namespace):
        args = build_parser().parse_args(args)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("error: --plot needs matplotlib: pip install 'batchmv[bench]'", file=sys.stderr)
            return 2
    config = Config.from_args(args)
    report = run(config)
    print_report(report)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(to_json(report))
        print(f"\nwrote {args.json}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


def to_json(report: dict[str, Any]) -> str:
    """The report as JSON: floats to 5 significant digits, one line per result."""
    report = _rounded(report)
    head = json.dumps({k: v for k, v in report.items() if k != "results"}, indent=1, default=str)
    rows = ",\n".join("  " + json.dumps(r, separators=(", ", ": "), default=str) for r in report["results"])
    return head[:-2] + ',\n "results": [\n' + rows + "\n ]\n}\n"


def _rounded(obj: Any, digits: int = 5) -> Any:
    """``obj`` with every float rounded to ``digits`` significant digits (a smaller JSON file)."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}") if math.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v, digits) for v in obj]
    return obj


@dataclass
class Config:
    shapes: list[tuple[int, int]]
    batches: list[int]
    dtypes: list[str]
    layouts: list[str]
    threads: int
    min_time: float
    max_call: float
    max_memory_gb: float
    loop_rows: int
    quick: bool
    cross: bool = True
    all_peers: bool = False
    only: list[str] | None = None
    progress: bool = True
    peak_size: int = 2048
    copy_mb: int = 256

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Config:
        quick = args.quick
        if args.m or args.n:
            ms, ns = args.m or args.n, args.n or args.m
            shapes = [(m, n) for m in ms for n in ns]
        else:
            shapes = list(QUICK_SHAPES if quick else FULL_SHAPES)
        return cls(
            shapes=shapes,
            batches=sorted(set(args.batch or (QUICK_BATCHES if quick else FULL_BATCHES))),
            dtypes=list(args.dtype or (["float32"] if quick else DTYPES)),
            layouts=list(args.layout or LAYOUTS),
            threads=args.threads or _cpu_count(),
            min_time=args.min_time or (0.03 if quick else 0.05),
            max_call=args.max_call or (0.5 if quick else 1.0),
            max_memory_gb=args.max_memory,
            loop_rows=args.loop_rows or (64 if quick else 256),
            quick=quick,
            cross=not (args.no_cross or (quick and not args.cross)),
            all_peers=args.all_peers,
            only=[text.lower() for text in args.only] if args.only else None,
            progress=not args.no_progress,
            peak_size=1024 if quick else 2048,
            copy_mb=64 if quick else 256,
        )


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# -- timing ---------------------------------------------------------------------------------


@dataclass
class Timing:
    median: float  #: seconds per call
    iqr: float  #: interquartile range of the per-call times of the blocks, seconds
    best: float  #: the fastest block's seconds per call
    blocks: int
    number: int  #: calls per block


def measure(fn: Callable[[], Any], min_time: float, first: float | None = None) -> Timing:
    """Median and IQR of the per-call time of ``fn`` over blocks of calls (after a warm-up,
    or after a call that took ``first`` seconds, which serves as the warm-up)."""
    if first is None:
        start = time.perf_counter()
        fn()
        first = time.perf_counter() - start
    if first < min_time:  # a second warm-up call (the first may include compilation)
        start = time.perf_counter()
        fn()
        first = time.perf_counter() - start
    number = max(1, int(min_time / 10 / max(first, 1e-9)))
    min_blocks = 3 if first >= min_time / 2 else 5
    times: list[float] = []
    total = 0.0
    enabled = gc.isenabled()
    gc.disable()
    try:
        while len(times) < min_blocks or (total < min_time and len(times) < 1000):
            start = time.perf_counter()
            for _ in range(number):
                fn()
            elapsed = time.perf_counter() - start
            times.append(elapsed / number)
            total += elapsed
    finally:
        if enabled:
            gc.enable()
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return Timing(statistics.median(times), q[2] - q[0], min(times), len(times), number)


# -- approaches ---------------------------------------------------------------------------


class NotApplicable(Exception):
    """The approach cannot run on these arrays (the message says why)."""


@dataclass(frozen=True)
class Approach:
    name: str
    home: str  #: the library of the arrays it takes and returns
    engine: str  #: the library that computes (its peak is the roofline)
    kind: str  #: "batchmv", "prepare", "native" or "peer"
    make: Callable[[Any, Any], Callable[[], Any]]  #: (A, X) -> the call to time
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


def _approaches(libs: dict[str, Any], batchmv: Any, cross: bool) -> list[Approach]:
    """Every approach whose library is installed, batchmv's first."""
    found: list[Approach] = []
    matvec = batchmv.matvec
    engines = [name for name in HOMES if name in batchmv.available_backends() and name in libs]
    for home in HOMES:
        if home not in libs:
            continue
        dtypes = DTYPES if home == "torch" else ("float32", "float64")
        sync = _block if home == "jax" else _same
        for engine in engines:
            if engine != home and not cross:
                continue
            found.append(Approach(
                f"batchmv.matvec {home}" + ("" if engine == home else f" -> {engine} engine"), home, engine, "batchmv",
                lambda A, X, engine=engine, sync=sync: (lambda: sync(matvec(A, X, backend=engine))),
                dtypes=dtypes if engine == home else ("float32",),  # across libraries: float32 only, to save time
            ))  # fmt: skip
        if hasattr(batchmv, "prepare"):
            prepared = _prepared(batchmv, sync)
            found.append(Approach(f"batchmv.prepare(A) {home}", home, home, "prepare", prepared, dtypes=dtypes))
        fastest = _fastest(matvec, sync)
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
            return Approach(name, "jax", "jax", kind, lambda A, X: (lambda: call(A, X).block_until_ready()), **kw)

        found += [
            jax_("jax jit(X @ A.T)", "native", native),
            jax_("jax jit(vmap(A @ x))", "peer", vmapped_jax),
            jax_("jax loop A @ x[i]", "peer", lambda A, X: jnp.stack([A @ v for v in X]), linear=True),
        ]
    return found


def _same(y: Any) -> Any:
    return y


def _block(y: Any) -> Any:
    return y.block_until_ready()


def _prepared(batchmv: Any, sync: Callable[[Any], Any]) -> Callable[[Any, Any], Callable[[], Any]]:
    def make(A: Any, X: Any) -> Callable[[], Any]:
        op = batchmv.prepare(A)
        return lambda: sync(op(X))

    return make


def _fastest(matvec: Callable[..., Any], sync: Callable[[Any], Any]) -> Callable[[Any, Any], Callable[[], Any]]:
    def make(A: Any, X: Any) -> Callable[[], Any]:
        try:
            matvec(A[:1, :1], X[:1, :1], backend="fastest")
        except ValueError as err:
            if "fastest" in str(err):  # this version has no backend 'fastest'
                raise NotApplicable("no backend 'fastest' in this batchmv") from None
            raise
        return lambda: sync(matvec(A, X, backend="fastest"))

    return make


# -- the run ------------------------------------------------------------------------------


def _pin(threads: int) -> set[int] | None:
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


def _import_libraries(config: Config) -> dict[str, Any]:
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


def _machine(libs: dict[str, Any], config: Config, cpus: int) -> dict[str, Any]:
    from threadpoolctl import threadpool_info

    import batchmv

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


def _to(lib: str, libs: dict[str, Any], arr: Any, dtype: str) -> Any:
    """The numpy array ``arr`` as an array of ``lib`` in ``dtype`` (numpy and torch share it)."""
    if lib == "numpy":
        return arr
    if lib == "torch":
        torch = libs["torch"]
        t = torch.from_numpy(arr)
        return t.to(torch.bfloat16) if dtype == "bfloat16" else t
    return libs["jax"].numpy.asarray(arr)


def _rooflines(libs: dict[str, Any], config: Config, tick: Callable[[str], None]) -> dict[str, Any]:
    """Peak GEMM GFLOP/s per engine and dtype, and the memory bandwidth (GB/s)."""
    np = libs["numpy"]
    size = config.peak_size
    rng = np.random.default_rng(1)
    square = rng.random((size, size), dtype=np.float32) - 0.5
    peaks: dict[str, dict[str, float]] = {}
    for lib in libs:
        for dtype in config.dtypes:
            if dtype == "bfloat16" and lib != "torch":
                continue
            tick(f"peak GEMM {lib} {dtype}")
            a = _to(lib, libs, square.astype("float32" if dtype == "bfloat16" else dtype), dtype)
            if lib == "jax":
                f = libs["jax"].jit(lambda a, b: a @ b)
                fn = lambda: f(a, a).block_until_ready()  # noqa: E731
            else:
                fn = lambda: a @ a  # noqa: E731
            t = measure(fn, max(config.min_time, 0.2))
            peaks.setdefault(lib, {})[dtype] = {
                "gflops": 2 * size**3 / t.best / 1e9, "gflops_median": 2 * size**3 / t.median / 1e9,
                "size": size, "best_s": t.best, "median_s": t.median, "iqr_s": t.iqr,
            }  # fmt: skip
    tick("memory bandwidth")
    count = config.copy_mb * 2**20 // 4
    src = np.ones(count, np.float32)
    dst = np.empty_like(src)
    copies = {"numpy.copyto": lambda: np.copyto(dst, src)}
    if "torch" in libs:
        ts, td = libs["torch"].from_numpy(src), libs["torch"].from_numpy(dst)
        copies["torch Tensor.copy_"] = lambda: td.copy_(ts)
    bandwidth, median = {}, {}
    for label, fn in copies.items():
        t = measure(fn, max(config.min_time, 0.2))
        bandwidth[label] = 2 * src.nbytes / t.best / 1e9
        median[label] = 2 * src.nbytes / t.median / 1e9
    # a new result array: allocated and written (page faults on fresh memory), as every call here does
    fresh = 4 * count / measure(lambda: np.full(count, 1.0, np.float32), max(config.min_time, 0.2)).median / 1e9
    return {
        "peak_gflops": {lib: {d: v["gflops"] for d, v in per.items()} for lib, per in peaks.items()},
        "peak_detail": peaks,
        "bandwidth_gbs": max(bandwidth.values()),
        "fresh_write_gbs": fresh,
        "bandwidth_detail": {"bytes_copied": src.nbytes, "gbs": bandwidth, "gbs_median": median,
                              "counted": "2 bytes moved (read + write) per byte copied; peaks and bandwidth from the fastest block"},
    }


def _merge_rooflines(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """The higher of two measurements of each peak and of the bandwidth; both are kept."""
    peaks = {
        lib: {d: max(g, second["peak_gflops"].get(lib, {}).get(d, 0.0)) for d, g in per.items()}
        for lib, per in first["peak_gflops"].items()
    }
    return {
        "peak_gflops": peaks,
        "bandwidth_gbs": max(first["bandwidth_gbs"], second["bandwidth_gbs"]),
        "fresh_write_gbs": max(first["fresh_write_gbs"], second["fresh_write_gbs"]),
        "measured": "before and after the grid; the higher of the two is used",
        "before": first,
        "after": second,
    }


def _apply_roofline(results: list[dict[str, Any]], roofline: dict[str, Any]) -> None:
    """(Re)compute each measured result's roofline fields."""
    for r in results:
        peak = _peak(roofline, r["engine"], r["dtype"])
        ai, attainable = _roof(peak or math.inf, roofline["bandwidth_gbs"], r["m"], r["n"], r["batch"], r["dtype"])
        r.update(ai=ai, attainable_gflops=attainable, peak_gflops=peak)
        if r.get("gflops") is not None:
            r.update(pct_roofline=100 * r["gflops"] / attainable, pct_peak=100 * r["gflops"] / peak if peak else None)


def _itemsize(dtype: str) -> int:
    return {"float32": 4, "float64": 8, "bfloat16": 2}[dtype]


def _roof(peak_gflops: float, bandwidth_gbs: float, m: int, n: int, b: int, dtype: str) -> tuple[float, float]:
    """(arithmetic intensity in flop/byte, attainable GFLOP/s)."""
    ai = 2 * m * n * b / ((m * n + b * n + b * m) * _itemsize(dtype))
    return ai, min(peak_gflops, ai * bandwidth_gbs)


def _peak(roofline: dict[str, Any], engine: str, dtype: str) -> float | None:
    peaks = roofline["peak_gflops"]
    return peaks.get(engine, {}).get(dtype) or max((p.get(dtype, 0) for p in peaks.values()), default=None) or None


def run(config: Config) -> dict[str, Any]:
    """Run the benchmark; return the report (JSON-serialisable)."""
    jax_before = "jax" in sys.modules  # then its thread pool may already exist, on every CPU
    cpus = _cpu_count()
    pinned = _pin(config.threads)
    try:
        return _run(config, jax_before, cpus)
    finally:
        if pinned is not None:
            os.sched_setaffinity(0, pinned)


def _run(config: Config, jax_before: bool, cpus: int) -> dict[str, Any]:
    libs = _import_libraries(config)
    if "numpy" not in libs:
        raise RuntimeError("batchmv bench needs numpy")
    import batchmv
    from threadpoolctl import threadpool_limits

    torch = libs.get("torch")
    jax = libs.get("jax")
    x64_before = None
    if jax is not None and "float64" in config.dtypes:
        x64_before = bool(jax.config.jax_enable_x64)
        jax.config.update("jax_enable_x64", True)
    torch_threads = torch.get_num_threads() if torch is not None else None
    approaches = [
        a for a in _approaches(libs, batchmv, config.cross)
        if config.only is None or any(text in a.name.lower() for text in config.only)
    ]  # fmt: skip
    started = time.time()
    try:
        with threadpool_limits(limits=config.threads):
            if torch is not None:
                torch.set_num_threads(config.threads)
            machine = _machine(libs, config, cpus)
            if jax_before and "jax" in libs:
                machine["threads_note"] += " (jax was imported before the run: its threads may use every CPU)"
            points = _points(config)
            isolation = config.cross and any("fastest" in a.name for a in approaches)
            total = 2 * (2 + len(libs) * len(config.dtypes)) + sum(
                len([a for a in approaches if a.runs_at(d, lay, b, config.all_peers)]) for (_, _, b, d, lay) in points
            ) + (_isolation.children(config) if isolation else 0)
            bar = _progress(total, config.progress)
            try:
                start = _rooflines(libs, config, lambda label: _tick(bar, label))
                results = _grid(libs, batchmv, config, approaches, points, start, bar)
                _tick(bar, "overhead at m = n = 16")
                overhead = _overhead(libs, batchmv, config)
                # the roofline again: on a shared machine the first one may have met a busy moment
                roofline = _merge_rooflines(start, _rooflines(libs, config, lambda label: _tick(bar, label)))
                _apply_roofline(results, roofline)
                fastest = _isolation.run(config, lambda label: _tick(bar, label)) if isolation else []
            finally:
                if bar is not None:
                    bar.close()
            machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    finally:
        if torch is not None:
            torch.set_num_threads(torch_threads)
        if x64_before is not None:
            jax.config.update("jax_enable_x64", x64_before)
    report = {
        "format": "batchmv-bench/1",
        "machine": machine,
        "config": dataclasses.asdict(config),
        "roofline": roofline,
        "approaches": [
            {"name": a.name, "home": a.home, "engine": a.engine, "kind": a.kind, "linear": a.linear, "dtypes": list(a.dtypes)}
            for a in approaches
        ],
        "results": results,
        "overhead": overhead,
        "fastest": fastest,
        "seconds": round(time.time() - started, 1),
    }
    report["targets"] = targets(report)
    return report


class _Counter:
    """Progress for a stderr that is not a terminal (a log file): one line every ``every`` seconds."""

    def __init__(self, total: int, every: float = 20.0) -> None:
        self.total, self.every, self.n, self.label = total, every, 0, ""
        self.start = self.last = time.monotonic()

    def set_description_str(self, label: str, refresh: bool = False) -> None:
        self.label = label

    def update(self, count: int = 1) -> None:
        self.n += count
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            elapsed = now - self.start
            print(f"batchmv bench: {self.n}/{self.total} after {elapsed:.0f} s: {self.label}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    """A tqdm progress bar on stderr when it is a terminal, otherwise a line every 20 s."""
    if not enabled:
        return None
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm

            width = shutil.get_terminal_size((100, 24)).columns or 100  # a terminal may report 0 columns
            return tqdm(total=total, file=sys.stderr, unit="run", ncols=min(width, 140), mininterval=0.5, leave=False)
        except ImportError:
            pass
    return _Counter(total)


def _tick(bar: Any, label: str, count: int = 1) -> None:
    if bar is not None:
        bar.set_description_str(label[:60], refresh=False)
        bar.update(count)


def _points(config: Config) -> list[tuple[int, int, int, str, str]]:
    """(m, n, batch, dtype, layout) in the order they run: batches ascending per shape."""
    return [
        (m, n, b, dtype, layout)
        for (m, n) in config.shapes
        for b in config.batches
        for dtype in config.dtypes
        for layout in config.layouts
    ]


def _grid(libs, batchmv, config, approaches, points, roofline, bar) -> list[dict[str, Any]]:  # noqa: ANN001
    results: list[dict[str, Any]] = []
    #: per (m, n, dtype, layout, approach): (batch, seconds) of the last measurement, to estimate the next
    last: dict[tuple[Any, ...], tuple[int, float]] = {}
    bw = roofline["bandwidth_gbs"]
    cache: dict[tuple[Any, ...], Any] = {}
    for m, n, b, dtype, layout in points:
        key = (m, n, b)
        if cache.get("key") != key:  # new arrays for each (m, n, batch); freed before the next
            cache.clear()
            gc.collect()
            cache["key"] = key
        applicable = [a for a in approaches if a.runs_at(dtype, layout, b, config.all_peers)]
        nbytes = (m * n + b * n + b * m) * _itemsize(dtype)
        point = {"m": m, "n": n, "batch": b, "dtype": dtype, "layout": layout}
        if nbytes > config.max_memory_gb * 1e9:
            for a in applicable:
                results.append({**point, **_ident(a), "skipped": f"A, x and y take {nbytes / 1e9:.1f} GB > --max-memory"})
            _tick(bar, f"{m}x{n} b={b} {dtype} {layout}: skipped (memory)", len(applicable))
            continue
        arrays = _arrays(libs, cache, m, n, b, dtype, layout)
        ref_rows = min(b, 8)
        ref = arrays["X64"][:ref_rows] @ arrays["A64"].T
        kept: dict[str, tuple[dict[str, Any], Callable[[], Any]]] = {}  # for target (1)'s paired re-measurement
        for a in applicable:
            _tick(bar, f"{m}x{n} b={b} {dtype} {layout}: {a.name}")
            row = {**point, **_ident(a)}
            results.append(row)
            peak = _peak(roofline, a.engine, dtype)
            flops = 2 * m * n * b
            ai, attainable = _roof(peak or math.inf, bw, m, n, b, dtype)
            row.update(ai=ai, attainable_gflops=attainable, peak_gflops=peak)
            # estimate: twice the roofline time; for the linear peers, the fastest block of the
            # last measurement (at a smaller batch) scaled linearly when that is longer
            est = 2 * flops / (attainable * 1e9) + b * m * _itemsize(dtype) / (roofline["fresh_write_gbs"] * 1e9)
            prev = last.get((m, n, dtype, layout, a.name))
            if prev is not None and a.linear:
                est = max(est, prev[1] * b / prev[0])
            rows = b
            if a.linear and est > 2 * config.min_time:  # exact to scale: time about 2 * --min-time worth of rows
                rows = max(min(b, 16), int(b * 2 * config.min_time / est))
            elif est > config.max_call:
                row["skipped"] = f"estimated {est:.2g} s per call > --max-call {config.max_call:g} s"
                continue
            if a.name.endswith("loop A @ x[i]"):
                rows = min(rows, config.loop_rows)
            A, X = arrays[a.home]
            wall = time.perf_counter()
            try:
                fn = a.make(A, X if rows == b else X[:rows])
                start = time.perf_counter()
                y = fn()
                first = time.perf_counter() - start
                row["first_call_s"] = first  # includes compilation (jax.jit) and tuning (backend='fastest')
                row["max_rel_error"] = _error(libs, y, ref, ref_rows)
                del y
                if first > 2 * config.max_call:  # far slower than estimated: one more call is the result
                    start = time.perf_counter()
                    fn()
                    second = time.perf_counter() - start
                    t = Timing(second, 0.0, second, 1, 1)
                    row["note"] = f"one call after a warm-up of {first:.2g} s (> 2 * --max-call)"
                else:
                    t = measure(fn, config.min_time, first)
            except NotApplicable as err:
                row["skipped"] = f"n/a: {err}"
                continue
            except Exception as err:  # report it and go on
                row["skipped"] = f"error: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
                continue
            finally:
                row["wall_s"] = time.perf_counter() - wall
            keep = a.kind in ("batchmv", "prepare", "native") and a.engine == a.home and "fastest" not in a.name
            if (keep and rows == b) or (m, n, b, dtype, layout) == TARGET3_POINT:
                kept[a.name] = (row, fn)
            fn = None
            scale = b / rows
            seconds = t.median * scale
            last[(m, n, dtype, layout, a.name)] = (b, t.best * scale)
            gflops = flops / seconds / 1e9
            row.update(
                median_s=seconds, iqr_s=t.iqr * scale, blocks=t.blocks, calls_per_block=t.number,
                timed_rows=rows, gflops=gflops, pct_roofline=100 * gflops / attainable,
                pct_peak=100 * gflops / peak if peak else None, best_s=t.best * scale,
                load=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            )  # fmt: skip
            row["tolerance"] = _tolerance(dtype, n)
        _confirm(kept, config)
        kept.clear()
    return results


def _confirm(kept: dict[str, tuple[dict[str, Any], Callable[[], Any]]], config: Config) -> None:
    """Target (1) at one point: where a batchmv call's median exceeds 1.05 x the best native
    call of its library (taking > 100 us), time the two again alternating block by block, so
    that a change of the machine's load hits both alike; the paired ratio goes in the row."""
    for peer, ours, _ in TARGET3_CHECKS:  # at target (3)'s point: each speed-up, paired too
        if peer in kept and ours in kept and "median_s" in kept[peer][0] and "median_s" in kept[ours][0]:
            (prow, pfn), (orow, ofn) = kept[peer], kept[ours]
            ratio, pairs = paired(pfn, ofn, prow["median_s"] * prow["timed_rows"] / prow["batch"], orow["median_s"], config.min_time)
            speedup = ratio * prow["batch"] / prow["timed_rows"]
            orow.setdefault("paired_speedups", {})[peer] = {"speedup": speedup, "pairs": pairs}
    for home in HOMES:
        natives = [(r, f) for r, f in kept.values() if r["home"] == home and r["kind"] == "native" and "median_s" in r]
        if not natives:
            continue
        best, best_fn = min(natives, key=lambda rf: rf[0]["median_s"])
        if best["median_s"] <= NATIVE_LIMIT_S:
            continue
        for row, fn in kept.values():
            if row["home"] != home or row["kind"] not in ("batchmv", "prepare") or "median_s" not in row:
                continue
            if row["engine"] != row["home"] or "fastest" in row["approach"] or row["timed_rows"] != row["batch"]:
                continue
            if row["median_s"] > 1.05 * best["median_s"]:
                ratio, pairs = paired(fn, best_fn, row["median_s"], best["median_s"], config.min_time)
                row["paired"] = {"native": best["approach"], "ratio": ratio, "pairs": pairs}


def paired(fa: Callable[[], Any], fb: Callable[[], Any], ta: float, tb: float, min_time: float) -> tuple[float, int]:
    """Median over alternating blocks (a, b, a, b, ...) of time(a) / time(b) per call."""
    na, nb = max(1, int(min_time / 10 / ta)), max(1, int(min_time / 10 / tb))
    least = 3 if max(ta, tb) >= min_time / 2 else 7
    ratios: list[float] = []
    total = 0.0
    enabled = gc.isenabled()
    gc.disable()
    try:
        while len(ratios) < least or (total < 2 * min_time and len(ratios) < 1000):
            start = time.perf_counter()
            for _ in range(na):
                fa()
            mid = time.perf_counter()
            for _ in range(nb):
                fb()
            end = time.perf_counter()
            ratios.append(((mid - start) / na) / ((end - mid) / nb))
            total += end - start
    finally:
        if enabled:
            gc.enable()
    return statistics.median(ratios), len(ratios)


def _ident(a: Approach) -> dict[str, Any]:
    return {"approach": a.name, "home": a.home, "engine": a.engine, "kind": a.kind}


def _arrays(libs, cache, m, n, b, dtype, layout) -> dict[str, Any]:  # noqa: ANN001
    """The point's arrays per home library: (A in ``layout``, X); numpy and torch share buffers."""
    np = libs["numpy"]
    if "A32" not in cache:
        rng = np.random.default_rng([m, n, b])
        cache["A32"] = rng.standard_normal((m, n), dtype=np.float32)
        cache["X32"] = rng.random((b, n), dtype=np.float32) - np.float32(0.5)
    base = "float32" if dtype == "bfloat16" else dtype
    src_key = ("src", base)
    if src_key not in cache:
        A = cache["A32"].astype(base, copy=False)
        cache[src_key] = (A, np.ascontiguousarray(A.T), cache["X32"].astype(base, copy=False))
    A, B, X = cache[src_key]
    if ("A64", base) not in cache:
        cache[("A64", base)] = A.astype(np.float64)
    out = {"A64": cache[("A64", base)], "X64": X[:8].astype(np.float64)}
    if dtype == "bfloat16":  # the reference is computed from the rounded values
        torch = libs["torch"]
        key = ("bf16",)
        if key not in cache:
            Ab = torch.from_numpy(A).to(torch.bfloat16)
            cache[key] = (Ab, Ab.T.contiguous(), torch.from_numpy(X).to(torch.bfloat16))
        Ab, Bb, Xb = cache[key]
        out["A64"] = Ab.double().numpy()
        out["X64"] = Xb[:8].double().numpy()
        out["torch"] = (Ab if layout == "C" else Bb.T, Xb)
        return out
    out["numpy"] = (A if layout == "C" else B.T, X)
    if "torch" in libs:
        torch = libs["torch"]
        out["torch"] = (torch.from_numpy(A) if layout == "C" else torch.from_numpy(B).T, torch.from_numpy(X))
    if "jax" in libs and layout == "C":
        jkey = ("jax", base)
        if jkey not in cache:
            jnp = libs["jax"].numpy
            cache[jkey] = (jnp.asarray(A), jnp.asarray(X))
        out["jax"] = cache[jkey]
    return out


def _error(libs: dict[str, Any], y: Any, ref: Any, rows: int) -> float:
    """Max |y - ref| / max |ref| over the first ``rows`` vectors."""
    np = libs["numpy"]
    torch = libs.get("torch")
    if torch is not None and isinstance(y, torch.Tensor):
        y = y[:rows].double().numpy()
    y = np.asarray(y[:rows], dtype=np.float64)
    if y.ndim == 3:  # the broadcast peers return (b, m, 1)
        y = y[..., 0]
    scale = float(np.max(np.abs(ref))) or 1.0
    return float(np.max(np.abs(y - ref))) / scale


def _tolerance(dtype: str, n: int) -> float:
    eps = {"float32": 2.0**-23, "float64": 2.0**-52, "bfloat16": 2.0**-7}[dtype]
    return min(8 * math.sqrt(n) * eps, 0.05)


def _overhead(libs: dict[str, Any], batchmv: Any, config: Config) -> list[dict[str, Any]]:
    """Target (2): at m = n = 16, the time of batchmv calls and of the best native call, for
    a batch of one vector (X of shape (1, 16)) and for a single vector x of shape (16,)."""
    np = libs["numpy"]
    rng = np.random.default_rng(16)
    A = rng.standard_normal((TINY, TINY), dtype=np.float32)
    X = rng.standard_normal((1, TINY), dtype=np.float32)
    min_time = max(config.min_time * 3, 0.1)
    rows = []
    for home in HOMES:
        if home not in libs or home not in batchmv.available_backends():
            continue
        a, x2 = _to(home, libs, A, "float32"), _to(home, libs, X, "float32")
        for shape, x in (("(1, 16)", x2), ("(16,)", x2[0])):
            calls = _tiny_calls(libs, batchmv, home, a, x)
            times = {}
            for label, fn in calls.items():
                try:
                    times[label] = measure(fn, min_time).median
                except Exception as err:  # report and go on
                    times[label] = None
                    print(f"warning: {home} {label}: {type(err).__name__}: {err}", file=sys.stderr)
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
    if home == "jax":
        jax = libs["jax"]
        f = jax.jit(lambda a, x: x @ a.T)
        calls["native jit(x @ A.T)"] = lambda: f(a, x).block_until_ready()
        calls["batchmv.matvec(A, x)"] = lambda: matvec(a, x).block_until_ready()
        if hasattr(batchmv, "prepare"):
            op = batchmv.prepare(a)
            calls["batchmv.prepare(A)(x)"] = lambda: op(x).block_until_ready()
        return calls
    calls["native x @ A.T"] = lambda: x @ a.T
    if x.ndim == 1:
        calls["native A @ x"] = lambda: a @ x
    if home == "torch":
        linear = libs["torch"].nn.functional.linear
        calls["native F.linear(x, A)"] = lambda: linear(x, a)
    calls["batchmv.matvec(A, x)"] = lambda: matvec(a, x)
    if hasattr(batchmv, "prepare"):
        op = batchmv.prepare(a)
        calls["batchmv.prepare(A)(x)"] = lambda: op(x)
    return calls


# -- targets ------------------------------------------------------------------------------


def _measured(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in report["results"] if r.get("median_s") is not None]


def _at(rows: list[dict[str, Any]], **where: Any) -> dict[str, dict[str, Any]]:
    return {r["approach"]: r for r in rows if all(r[k] == v for k, v in where.items())}


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The key target checks: a list of {id, target, status (PASS/FAIL/n/a), measured, details}."""
    rows = _measured(report)
    out = []
    # (1) batchmv <= 1.05 x the best native call of the same library where that takes > 100 us
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["m"], r["n"], r["batch"], r["dtype"], r["layout"], r["home"]), []).append(r)
    for kind, label in (("batchmv", "batchmv.matvec"), ("prepare", "batchmv.prepare(A)(x)")):
        checked = []
        for key, group in groups.items():
            natives = [r for r in group if r["kind"] == "native"]
            ours = [r for r in group if r["kind"] == kind and r["engine"] == r["home"] and "fastest" not in r["approach"]]
            if not natives or not ours:
                continue
            best = min(natives, key=lambda r: r["median_s"])
            if best["median_s"] <= NATIVE_LIMIT_S:
                continue
            for r in ours:  # a failure on the medians is confirmed (or not) by the paired re-measurement
                ratio = r["paired"]["ratio"] if "paired" in r else r["median_s"] / best["median_s"]
                checked.append((ratio, key, best["approach"] + (", paired" if "paired" in r else "")))
        if not checked and kind == "prepare" and not any(a["kind"] == "prepare" for a in report["approaches"]):
            continue
        worst = max(checked, default=None)
        failures = [c for c in checked if c[0] > 1.05]
        out.append({
            "id": "1" if kind == "batchmv" else "1b",
            "target": f"{label} (home engine) <= 1.05 x the best native call of the same library, wherever that takes > 100 us"
            " (medians; failures re-timed alternating with the native call)",
            "status": "n/a" if not checked else ("PASS" if not failures else "FAIL"),
            "measured": None if worst is None else
            f"worst ratio {worst[0]:.3f} ({_key(worst[1])} vs {worst[2]}); {len(checked) - len(failures)}/{len(checked)} points within 1.05",
            "failures": [f"{c[0]:.3f} {_key(c[1])} vs {c[2]}" for c in sorted(failures, reverse=True)],
            "ratios": [{"ratio": c[0], "point": _key(c[1]), "native": c[2]} for c in checked],
        })  # fmt: skip
    # (2) overhead at m = n = 16, batch 1
    for call, limit in (("batchmv.matvec(A, x)", 2e-6), ("batchmv.prepare(A)(x)", 1e-6)):
        found = [o for o in report["overhead"] if o["call"] == call and o["x_shape"] == "(1, 16)" and o["overhead_s"] is not None]
        if not found:
            continue
        worst = max(found, key=lambda o: o["overhead_s"])
        out.append({
            "id": "2" if call.startswith("batchmv.matvec") else "2b",
            "target": f"m = n = 16, batch 1: {call} overhead over the best native call <= {limit * 1e6:g} us",
            "status": "PASS" if worst["overhead_s"] <= limit else "FAIL",
            "measured": ", ".join(f"{o['home']} {o['overhead_s'] * 1e6:+.2f} us ({o['median_s'] * 1e6:.2f} vs {o['best_native']})" for o in found),
            "failures": [o["home"] for o in found if o["overhead_s"] > limit],
        })  # fmt: skip
    # (5) "fastest" <= 1.05 x the best engine measured alone (each in its own process)
    checked = [r for r in report.get("fastest", []) if r.get("ratio") is not None]
    if checked:
        worst = max(checked, key=lambda r: r["ratio"])
        fails = [r for r in checked if r["ratio"] > 1.05]
        out.append({
            "id": "5",
            "target": "backend='fastest' <= 1.05 x the fastest single engine, each measured alone in its own process",
            "status": "PASS" if not fails else "FAIL",
            "measured": f"worst ratio {worst['ratio']:.3f} ({_fastest_point(worst)}); {len(checked) - len(fails)}/{len(checked)} points within 1.05",
            "failures": [f"{r['ratio']:.3f} {_fastest_point(r)}" for r in sorted(fails, key=lambda r: -r["ratio"])],
        })  # fmt: skip
    # (3) speed-ups at m = n = 1024, batch 4096, float32, A in C order
    m3, n3, b3, d3, l3 = TARGET3_POINT
    at = _at(rows, m=m3, n=n3, batch=b3, dtype=d3, layout=l3)
    for peer, ours, factor in TARGET3_CHECKS:
        p, o = at.get(peer), at.get(ours)
        speedup = p["median_s"] / o["median_s"] if p and o else None
        pair = (o or {}).get("paired_speedups", {}).get(peer)
        decisive = pair["speedup"] if pair else speedup
        out.append({
            "id": "3",
            "target": f"m = n = {m3}, batch {b3}, {d3}: {ours} >= {factor:g}x faster than {peer}",
            "status": "n/a" if decisive is None else ("PASS" if decisive >= factor else "FAIL"),
            "measured": None if speedup is None else
            (f"{pair['speedup']:.1f}x timed alternately; " if pair else "")
            + f"medians {speedup:.1f}x ({o['median_s'] * 1e3:.2f} ms vs {p['median_s'] * 1e3:.1f} ms"
            + (f", the peer timed on {p['timed_rows']} vectors and scaled)" if p["timed_rows"] < p["batch"] else ")"),
        })  # fmt: skip
    # (4) >= 85 % of the engine's peak GEMM at batch >= 256, m, n >= 1024
    big = [
        r for r in rows
        if r["kind"] == "batchmv" and r["engine"] == r["home"] and "fastest" not in r["approach"]
        and r["batch"] >= 256 and r["m"] >= 1024 and r["n"] >= 1024 and r.get("peak_gflops")
    ]  # fmt: skip

    def best_pct(r: dict[str, Any]) -> float:  # the fastest block, as for the peak itself
        return 100 * 2 * r["m"] * r["n"] * r["batch"] / r.get("best_s", r["median_s"]) / 1e9 / r["peak_gflops"]

    worst = min(big, key=best_pct, default=None)
    fails = [r for r in big if best_pct(r) < 85]
    out.append({
        "id": "4",
        "target": "batch >= 256, m, n >= 1024: batchmv.matvec (home engine) >= 85% of the engine's measured peak GEMM"
        " (fastest blocks, as for the peak)",
        "status": "n/a" if not big else ("PASS" if not fails else "FAIL"),
        "measured": None if worst is None else
        f"worst {best_pct(worst):.0f}% (median {worst['pct_peak']:.0f}%; {worst['approach']}, {_key(_pkey(worst))}); "
        f"{len(big) - len(fails)}/{len(big)} points >= 85%; median-based: "
        f"{sum(r['pct_peak'] >= 85 for r in big)}/{len(big)}",
        "failures": [
            f"{best_pct(r):.0f}% (median {r['pct_peak']:.0f}%) {r['approach']} {_key(_pkey(r))}" for r in sorted(fails, key=best_pct)
        ],
    })  # fmt: skip
    return out


def _fastest_point(r: dict[str, Any]) -> str:
    return (f"{r['home']} {r['m']}x{r['n']} batch {r['batch']}: chose {r['chosen']}, "
            f"best alone {r['best_isolated']} {_fmt_time(r['isolated'][r['best_isolated']])}")  # fmt: skip


def _pkey(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["m"], r["n"], r["batch"], r["dtype"], r["layout"], r["home"])


def _key(key: tuple[Any, ...]) -> str:
    m, n, b, dtype, layout, home = key
    return f"{home} {m}x{n} batch {b} {dtype} A {layout}"


# -- output -------------------------------------------------------------------------------


def _fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f}us"
    if s < 1:
        return f"{s * 1e3:.2f}ms"
    return f"{s:.2f}s"


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return ""
    if r.get("median_s") is None:
        reason = r.get("skipped", "")
        return "mem" if "memory" in reason else "skip" if "estimated" in reason else "n/a" if reason.startswith("n/a") else "error"
    spread = 100 * r["iqr_s"] / r["median_s"]
    bad = "!" if r.get("max_rel_error", 0) > r.get("tolerance", 1) else ""
    star = "*" if r["timed_rows"] < r["batch"] else ""
    return f"{_fmt_time(r['median_s'])}{star}{bad} ±{spread:.0f}% {r['gflops']:.3g} {r['pct_roofline']:.0f}%"


def print_report(report: dict[str, Any]) -> None:
    mach, roof, cfg = report["machine"], report["roofline"], report["config"]
    load = mach.get("load_average_start") or [float("nan")]
    load_end = mach.get("load_average_end") or [float("nan")]
    print(f"batchmv bench: {mach['cpu_model']}, {mach['cpus_usable']} CPUs, {cfg['threads']} threads; "
          f"load average {load[0]:.2f} at start, {load_end[0]:.2f} at end; {report['seconds']:.0f} s")  # fmt: skip
    if load[0] >= 0.5 or load_end[0] >= cfg["threads"] + 0.5:  # at the end, the load includes this run's threads
        print(f"warning: the machine was busy (load average {load[0]:.2f} at start, {load_end[0]:.2f} at end, with "
              f"{cfg['threads']} threads of this run, on {mach['cpus_usable']} CPUs): timings are slow and erratic, "
              "multi-threaded ones most; each result's load average is in --json")  # fmt: skip
    versions = ", ".join(f"{k} {v}" for k, v in mach["versions"].items())
    print(f"versions: {versions}")
    blas = "; ".join(
        f"{p.get('internal_api')} {p.get('version') or ''} ({os.path.basename(p.get('filepath', ''))})" for p in mach["blas"]
    )
    print(f"BLAS (threadpoolctl): {blas}" + (f"; torch: {mach['torch']['blas']}" if "torch" in mach else ""))
    peaks = "; ".join(f"{lib} " + ", ".join(f"{d} {g:.0f}" for d, g in per.items()) for lib, per in roof["peak_gflops"].items())
    copied = roof["before"]["bandwidth_detail"]["bytes_copied"] / 2**20
    print(f"roofline (measured before and after the grid, the higher used): peak GEMM GFLOP/s ({cfg['peak_size']}^3, "
          f"fastest block): {peaks}; memory bandwidth {roof['bandwidth_gbs']:.1f} GB/s (copy of {copied:.0f} MiB; "
          f"writing a new array: {roof['fresh_write_gbs']:.1f} GB/s)")  # fmt: skip
    results = report["results"]
    batches = cfg["batches"]
    blocks: dict[tuple[Any, ...], dict[str, dict[int, dict[str, Any]]]] = {}
    for r in results:
        blocks.setdefault((r["m"], r["n"], r["dtype"], r["layout"]), {}).setdefault(r["approach"], {})[r["batch"]] = r
    width = 27
    for (m, n, dtype, layout), per in blocks.items():
        print(f"\nm={m} n={n} {dtype}, A {'C order' if layout == 'C' else 'transposed view (T)'}: "
              "median ±IQR, GFLOP/s, % of roofline")  # fmt: skip
        print(f"{'':<44}" + "".join(f"{'batch ' + str(b):>{width}}" for b in batches))
        for name, cells in per.items():
            if all(c.get("median_s") is None and c.get("skipped", "").startswith("n/a") for c in cells.values()):
                continue
            print(f"{name[:43]:<44}" + "".join(f"{_cell(cells.get(b)):>{width}}" for b in batches))
    print(
        "\n* timed on the first vectors of the batch and scaled linearly (loops: at most --loop-rows vectors; the other\n"
        "  linear peers where a call on the whole batch would exceed 2 * --min-time);\n"
        "! result differs from the float64 reference beyond tolerance;\n"
        "skip: estimated above --max-call; mem: A, x and y above --max-memory; n/a: not possible for these arrays.\n"
        "% of roofline: GFLOP/s / min(peak GEMM of the engine and dtype, AI * bandwidth), AI = flops / bytes of A, x, y."
    )
    if report["overhead"]:
        print(f"\nOverhead at m = n = {TINY}, float32 (median; overhead = time - best native call of the library):")
        for o in report["overhead"]:
            t = "error" if o["median_s"] is None else f"{o['median_s'] * 1e6:8.2f} us  {o['overhead_s'] * 1e6:+7.2f} us"
            print(f"  {o['home']:<6} x {o['x_shape']:<8} {o['call']:<24} {t}")
    if report.get("fastest"):
        print("\nbackend='fastest' against each engine alone, each in its own process (float32, A in C order; median);"
              "\n'in use': with a GEMM of the home library between calls, 'fastest' and the home library's engine:")  # fmt: skip
        for r in report["fastest"]:
            alone = ", ".join(f"{e} {_fmt_time(s)}" for e, s in sorted(r["isolated"].items(), key=lambda kv: kv[1]))
            if r.get("fastest_s") is None:
                print(f"  {r['home']:<6} {r['m']}x{r['n']} batch {r['batch']}: fastest failed ({r.get('error')}); alone: {alone}")
                continue
            between = r.get("between") or {}
            use = (f"; in use: fastest {_fmt_time(between['fastest_s'])}, {r['home']} {_fmt_time(between['home_engine_s'])}"
                   if between else "")  # fmt: skip
            print(f"  {r['home']:<6} {r['m']}x{r['n']} batch {r['batch']}: fastest -> {r['chosen']} "
                  f"{_fmt_time(r['fastest_s'])} ({r['ratio']:.2f}x the best alone); alone: {alone}{use}")  # fmt: skip
    print("\nTargets:")
    for t in report["targets"]:
        print(f"  [{t['status']:^4}] ({t['id']}) {t['target']}")
        if t.get("measured"):
            print(f"         {t['measured']}")
        for f in t.get("failures", [])[:8]:
            print(f"         fail: {f}")
        if len(t.get("failures", [])) > 8:
            print(f"         ... and {len(t['failures']) - 8} more (see --json)")


_LIB_COLOR = {"numpy": "tab:blue", "torch": "tab:red", "jax": "tab:green"}
_PEER_COLOR = (
    ("loop", "tab:gray"), ("einsum", "tab:olive"), ("numpy.matvec", "tab:orange"), ("torch.matmul", "tab:purple"),
    ("torch.bmm", "tab:pink"), ("vmap", "tab:cyan"),
)  # fmt: skip
_LIB_MARKER = {"numpy": "v", "torch": "D", "jax": "P"}


def _plot_label(r: dict[str, Any]) -> str | None:
    """The series a result belongs to in the plot (None: not drawn)."""
    if r["kind"] == "native":
        return f"best native call, {r['home']}"
    if r["kind"] == "batchmv" and r["engine"] != r["home"]:
        return None  # cross-library engines: in the table and the JSON, not in the plot
    return r.get("approach") or r["name"]


def _plot_style(label: str, kind: str, home: str) -> dict[str, Any]:
    color = _LIB_COLOR.get(home, "black")
    if kind == "batchmv" and "fastest" in label:
        return {"color": color, "ls": "-.", "lw": 1.6, "marker": "^", "ms": 4}
    if kind == "batchmv":
        return {"color": color, "ls": "-", "lw": 2.6, "marker": "o", "ms": 4}
    if kind == "prepare":
        return {"color": color, "ls": "-", "lw": 1.2, "marker": "s", "ms": 3, "alpha": 0.8}
    if kind == "native":
        return {"color": color, "ls": "--", "lw": 1.6, "marker": "x", "ms": 5}
    peer = next((c for key, c in _PEER_COLOR if key in label), "tab:brown")
    return {"color": peer, "ls": ":", "lw": 1.4, "marker": _LIB_MARKER.get(home, "."), "ms": 4}


def plot(report: dict[str, Any], path: str, max_panels: int = 12) -> None:
    """GFLOP/s against batch size per approach, one panel per (m, n, dtype) with A in C order
    (or the first layout measured), with the roofline: min(peak GEMM, AI x bandwidth) for the
    fastest engine of the dtype."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    rows = _measured(report)
    layouts = report["config"]["layouts"]
    layout = "C" if "C" in layouts else layouts[0]
    rows = [r for r in rows if r["layout"] == layout]
    # square shapes first, then by size; every dtype in turn
    panels = sorted({(r["m"], r["n"], r["dtype"]) for r in rows}, key=lambda k: (DTYPES.index(k[2]), k[0] != k[1], k[0] * k[1], k[0]))
    if len(panels) > max_panels:  # every float32 panel, then the other dtypes at the largest square shapes
        first = [p for p in panels if p[2] == "float32"]
        rest = [p for p in panels if p[2] != "float32" and p[0] == p[1]]
        per_dtype = max(1, (max_panels - len(first)) // max(1, len({p[2] for p in rest})))
        rest = [p for p in rest if sum(q[2] == p[2] and q[0] > p[0] for q in rest) < per_dtype]  # the largest per dtype
        panels = (first + rest)[:max_panels]
    kinds = {a["name"]: (a["kind"], a["home"]) for a in report["approaches"]}
    order: list[str] = []
    for a in report["approaches"]:
        label = _plot_label(a)
        if label is not None and label not in order:
            order.append(label)
            kinds.setdefault(label, (a["kind"], a["home"]))
    cols = min(3, max(1, len(panels)))
    nrows = max(1, math.ceil(len(panels) / cols))
    fig = Figure(figsize=(5.6 * cols, 4.0 * nrows + 2.4), layout="constrained")
    FigureCanvasAgg(fig)
    roof = report["roofline"]
    bw = roof["bandwidth_gbs"]
    handles: dict[str, Any] = {}
    for i, (m, n, dtype) in enumerate(panels):
        ax = fig.add_subplot(nrows, cols, i + 1)
        series: dict[str, dict[int, float]] = {}
        for r in rows:
            label = _plot_label(r) if (r["m"], r["n"], r["dtype"]) == (m, n, dtype) else None
            if label is not None:
                s = series.setdefault(label, {})
                s[r["batch"]] = max(s.get(r["batch"], 0.0), r["gflops"])
        for label in order:
            if label in series:
                s = series[label]
                xs = sorted(s)
                (line,) = ax.plot(xs, [s[b] for b in xs], label=label, **_plot_style(label, *kinds[label]))
                handles.setdefault(label, line)
        batches = sorted({b for s in series.values() for b in s})
        peaks = {lib: per[dtype] for lib, per in roof["peak_gflops"].items() if dtype in per}
        if batches and peaks:
            lo, hi = batches[0], max(batches[-1], batches[0] * 2)
            grid = [lo * (hi / lo) ** (k / 80) for k in range(81)]
            lib, peak = max(peaks.items(), key=lambda kv: kv[1])
            (line,) = ax.plot(grid, [_roof(peak, bw, m, n, b, dtype)[1] for b in grid], "-", color="black", lw=1.2, alpha=0.6)
            handles.setdefault("roofline: min(peak GEMM of the fastest engine, AI x bandwidth)", line)
            others = ", ".join(f"{k} {v:.0f}" for k, v in sorted(peaks.items(), key=lambda kv: -kv[1]))
            ax.text(0.02, 0.98, f"peak GEMM GFLOP/s: {others}", transform=ax.transAxes, fontsize=7, va="top", alpha=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"m={m}, n={n}, {dtype}, A {'C order' if layout == 'C' else 'transposed'}", fontsize=10)
        ax.set_xlabel("batch size")
        ax.set_ylabel("GFLOP/s (median)")
        ax.grid(True, which="major", alpha=0.3)
        ax.yaxis.set_minor_formatter(NullFormatter())
    mach = report["machine"]
    load = [mach.get("load_average_start", [float("nan")])[0], (mach.get("load_average_end") or [float("nan")])[0]]
    fig.suptitle(
        f"batchmv bench on {mach['cpu_model']} ({mach['cpus_usable']} CPUs, {report['config']['threads']} threads, "
        f"load average {load[0]:.1f} -> {load[1]:.1f}); memory bandwidth {bw:.1f} GB/s",
        fontsize=11,
    )
    labels = [h for h in order if h in handles] + [h for h in handles if h not in order]
    fig.legend([handles[h] for h in labels], labels, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    fig.savefig(path, dpi=100)
