"""``batchmv bench``: a tiny grid end to end (JSON report and PNG plot), and the pieces."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from batchmv.tools.bench import command, config, roofline, targets, timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_bench_quick_tiny_grid_writes_json_and_png(tmp_path):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    # a child process: the bench sets thread counts and jax's x64 flag for its run
    cmd = [sys.executable, "-m", "batchmv", "bench", "--quick", "--m", "64", "--n", "64", "--batch", "16",
           "--layout", "C", "T", "--threads", "1", "--min-time", "0.005", "--no-progress",
           "--json", str(out), "--plot", str(png)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert {"machine", "config", "roofline", "approaches", "results", "overhead", "targets"} <= set(report)
    machine = report["machine"]
    for key in ("cpu_model", "cpu_count", "load_average_start", "load_average_end", "versions", "blas", "threads"):
        assert key in machine
    assert machine["threads"] == 1 and "numpy" in machine["versions"]
    roof = report["roofline"]
    assert roof["bandwidth_gbs"] > 0 and roof["peak_gflops"]["numpy"]["float32"] > 0
    points = {(r["m"], r["n"], r["batch"], r["dtype"], r["layout"]) for r in report["results"]}
    assert points == {(64, 64, 16, "float32", "C"), (64, 64, 16, "float32", "T")}
    measured = {r["approach"]: r for r in report["results"] if r["layout"] == "C" and "median_s" in r}
    for name in ("batchmv.matvec numpy", "batchmv.matvec torch", "numpy X @ A.T", "torch X @ A.T", "numpy loop A @ x[i]",
                 "torch.matmul(A, X[..., None])", "torch.func.vmap(torch.mv)"):  # fmt: skip
        row = measured[name]
        assert row["median_s"] > 0 and row["gflops"] > 0 and 0 < row["pct_roofline"]
        assert row["iqr_s"] >= 0 and row["max_rel_error"] <= row["tolerance"]
    assert {t["id"] for t in report["targets"]} >= {"1", "2", "3", "4"}
    assert all(t["status"] in ("PASS", "FAIL", "n/a") for t in report["targets"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Targets:" in done.stdout and "batchmv.matvec numpy" in done.stdout


def test_bench_script_and_subcommand_share_the_parser():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--help"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and "--max-call" in done.stdout and "--plot" in done.stdout


def test_config_grids():
    parse = command.build_parser().parse_args
    quick = config.Config.from_args(parse(["--quick"]))
    assert quick.dtypes == ["float32"] and (1024, 1024) in quick.shapes and 4096 in quick.batches and not quick.cross
    full = config.Config.from_args(parse([]))
    assert set(full.dtypes) == {"float32", "float64", "bfloat16"} and 100_000 in full.batches and full.cross
    assert any(m != n for m, n in full.shapes)
    custom = config.Config.from_args(parse(["--m", "8", "16", "--n", "4", "--batch", "3", "1"]))
    assert custom.shapes == [(8, 4), (16, 4)] and custom.batches == [1, 3]
    with pytest.raises(SystemExit):
        parse(["--batch", "0"])


def test_roofline_and_measure():
    ai, attainable = roofline.roof(100.0, 10.0, 64, 64, 1, "float32")
    assert ai == pytest.approx(2 * 64 * 64 / ((64 * 64 + 128) * 4)) and attainable == pytest.approx(ai * 10.0)
    assert roofline.roof(100.0, 10.0, 1024, 1024, 4096, "float32")[1] == 100.0  # compute bound
    t = timing.measure(lambda: sum(range(100)), 0.01)
    assert t.blocks >= 3 and t.best <= t.median and t.iqr >= 0


def test_paired_ratio():
    ratio, pairs = timing.paired(lambda: sum(range(2000)), lambda: sum(range(1000)), 2e-5, 1e-5, 0.01)
    assert 1.2 < ratio < 4 and pairs >= 7


def _row(approach, kind, home, seconds, **extra):
    base = {"m": 1024, "n": 1024, "batch": 4096, "dtype": "float32", "layout": "C", "engine": home}
    return {**base, "approach": approach, "kind": kind, "home": home, "median_s": seconds, "timed_rows": 4096, **extra}


def test_targets_pass_and_fail():
    report = {
        "approaches": [{"kind": "batchmv"}],
        "results": [
            _row("batchmv.matvec torch", "batchmv", "torch", 0.060, pct_peak=95.0, peak_gflops=150.0, paired={"ratio": 1.01},
                 paired_speedups={"torch loop A @ x[i]": {"speedup": 9.0, "pairs": 3}}),
            _row("torch X @ A.T", "native", "torch", 0.049),
            _row("torch.matmul(A, X[..., None])", "peer", "torch", 3.0),
            _row("torch loop A @ x[i]", "peer", "torch", 0.3),
            _row("batchmv.matvec numpy", "batchmv", "numpy", 0.060, pct_peak=72.0, peak_gflops=200.0),
            _row("numpy X @ A.T", "native", "numpy", 0.050),
            _row("numpy.matvec(A, X)", "peer", "numpy", 0.125),
        ],
        "overhead": [
            {"home": "numpy", "x_shape": "(1, 16)", "call": "batchmv.matvec(A, x)", "median_s": 2.5e-6,
             "best_native": "native x @ A.T", "overhead_s": 1.5e-6},
        ],
    }  # fmt: skip
    status = {(t["id"], t["target"].split(">=")[-1].strip()): t["status"] for t in targets.check(report)}
    by_id = {}
    for (tid, _), s in status.items():
        by_id.setdefault(tid, []).append(s)
    assert by_id["1"] == ["FAIL"]  # numpy: 0.060 > 1.05 * 0.050; torch passes on its paired ratio
    (one,) = [t for t in targets.check(report) if t["id"] == "1"]
    assert one["failures"] == ["1.200 numpy 1024x1024 batch 4096 float32 A C vs numpy X @ A.T"]
    assert by_id["2"] == ["PASS"]
    # numpy.matvec 2.08x, bcast 50x, torch loop 5x on the medians but 9x timed alternately: PASS; no numpy loop
    assert sorted(by_id["3"]) == ["PASS", "PASS", "PASS", "n/a"]
    assert by_id["4"] == ["FAIL"]  # numpy at 72 % of its peak (torch at 95 %)


def test_fastest_and_one_engine_each_time_in_their_own_process():
    """The children of the "fastest" section: a real process per engine, real timings."""
    import types

    from batchmv.tools.bench import isolation

    config = types.SimpleNamespace(min_time=0.005, threads=1, quick=True)
    alone = isolation._child("numpy", "numpy", ((16, 16, 8), (32, 16, 4)), config)
    assert [row["chosen"] for row in alone] == ["numpy", "numpy"] and all(row["median_s"] > 0 for row in alone)
    (fast,) = isolation._child("numpy", "fastest", ((16, 16, 8),), config)
    assert "error" not in fast, fast
    assert fast["median_s"] > 0 and fast["note"].startswith(f"fastest: {fast['chosen']}")
    assert "numpy's own work between calls" in fast["note"] or fast["chosen"] == "numpy"
    assert set(fast["between"]) == {"home_engine_s", "fastest_s", "work_alone_s"}
    broken = isolation._child("numpy", "no-such-engine", ((16, 16, 8),), config)
    assert "unknown backend" in broken[0]["error"]


def test_the_fastest_target_compares_with_the_best_engine_alone():
    def row(ratio_numpy: float) -> dict:
        isolated = {"numpy": 1e-3 * ratio_numpy, "torch": 1e-3}
        return {"home": "torch", "m": 64, "n": 64, "batch": 256, "isolated": isolated, "best_isolated": "torch",
                "fastest_s": 1e-3 * ratio_numpy, "chosen": "numpy", "ratio": ratio_numpy}  # fmt: skip

    for ratios, status in (((1.0, 1.04), "PASS"), ((1.0, 1.3), "FAIL")):
        report = {"results": [], "overhead": [], "approaches": [], "fastest": [row(r) for r in ratios]}
        (found,) = [t for t in targets.check(report) if t["id"] == "5"]
        assert found["status"] == status, found
        assert found["measured"].startswith(f"worst ratio {max(ratios):.3f}")


def test_the_skinny_section_is_configured():
    parse = command.build_parser().parse_args
    full = config.Config.from_args(parse([]))
    assert full.main and len(full.skinny) == 2 * 2 * 7  # 32 and 128 MiB, float32 and float64, batch 1 to 64
    assert {(m * n * (4 if d == "float32" else 8)) >> 20 for m, n, _, d, _ in full.skinny} == {32, 128}
    only = config.Config.from_args(parse(["--only", "skinny", "--batch", "2", "8"]))
    assert not only.main and {p[2] for p in only.skinny} == {2, 8}
    quick = config.Config.from_args(parse(["--quick"]))
    assert quick.main and quick.skinny == [(8192, 4096, 2, "float32", "C")]
    assert config.Config.from_args(parse(["--m", "64"])).skinny is None  # a grid of one's own
    assert config.Config.from_args(parse(["--only", "fastest"])).skinny is None


def test_skinny_section_runs_and_pairs_every_batchmv_call(monkeypatch):
    """The section on small arrays with the row-block rule forced: every row, the kernel
    plan reports, the GEMV roof and the paired ratios, the table and the targets."""
    import types

    from batchmv import _skinny
    from batchmv.tools.bench import approaches, grid, machine, report, skinny

    monkeypatch.setattr(_skinny, "A_BYTES_MIN", 0)
    libs = {k: v for k, v in machine.import_libraries().items() if k in ("numpy", "torch")}
    import batchmv

    cfg = types.SimpleNamespace(
        skinny=[(300, 64, 2, "float32", "C"), (300, 64, 8, "float32", "C")], min_time=0.002, max_call=1.0,
        max_memory_gb=1.0, loop_rows=16, all_peers=False, threads=1,
    )  # fmt: skip
    roof = {"peak_gflops": {"numpy": {"float32": 50.0}, "torch": {"float32": 50.0}}, "bandwidth_gbs": 10.0,
            "bandwidth_by_dtype": {"float32": 10.0}, "fresh_write_gbs": 5.0}  # fmt: skip
    found = approaches.available(libs, batchmv, cross=False)
    rows = skinny.run(libs, batchmv, cfg, found, roof, lambda *a: None, grid.run)
    names = {r["approach"] for r in rows}
    assert {"batchmv.matvec numpy", "numpy X @ A.T", skinny.ROOF, "batchmv one GEMM (before) numpy"} <= names
    assert not any("fastest" in n or "loop" in n for n in names)
    ours = [r for r in rows if r["approach"] == "batchmv.matvec numpy"]
    assert all(r["kernel"] == "gemm row blocks" and "paired" in r and "paired_roof" in r for r in ours), ours
    assert all(r["max_rel_error"] <= r["tolerance"] for r in rows if "median_s" in r)
    full = {"results": rows, "roofline": roof, "config": {"threads": 1, "main": False},
            "machine": {"llc_bytes": 0}, "overhead": [], "approaches": []}  # fmt: skip
    text = "\n".join(skinny.table(full))
    assert "A 300x64 float32" in text and "batchmv.matvec numpy" in text and "*" in text
    found_targets = {t["id"]: t for t in targets.check(full)}
    assert {"S1", "S2", "S3"} <= set(found_targets) and "3" not in found_targets
    assert found_targets["S3"]["measured"].startswith("worst")
    assert report.fmt_time(1e-3) == "1.00ms"


def test_skinny_targets_pass_and_fail():
    def row(approach, batch, pct_bw, pct_roof, ratio, kernel="gemm row blocks"):
        return {"section": "skinny", "approach": approach, "kind": "batchmv", "home": "numpy", "engine": "numpy",
                "m": 8192, "n": 4096, "dtype": "float32", "layout": "C", "batch": batch, "median_s": 0.01, "a_gbs": 10.0,
                "pct_roofline": pct_roof, "kernel": kernel, "paired": {"ratio": ratio, "native": "numpy X @ A.T"},
                "paired_roof": {"ratio": 100 / pct_bw, "pct_bandwidth": pct_bw, "pct_roofline": pct_roof}}  # fmt: skip

    rows = [row("batchmv.matvec numpy", 2, 90, 90, 0.3), row("batchmv.matvec numpy", 4, 75, 75, 0.5),
            row("batchmv.matvec numpy", 16, 72, 72, 0.9), row("batchmv.matvec numpy", 1, 99, 99, 1.04, "gemm"),
            row("batchmv.matvec numpy", 64, 60, 60, 1.01)]  # fmt: skip
    report = {"results": rows, "roofline": {"bandwidth_by_dtype": {"float32": 20.0}}, "overhead": [], "approaches": [],
              "config": {"threads": 2, "main": False}, "machine": {"llc_bytes": 32 * 2**20}}  # fmt: skip
    found = {t["id"]: t for t in targets.check(report)}
    assert found["S1"]["status"] == "FAIL" and found["S1"]["failures"] == ["75% batchmv.matvec numpy 8192x4096 float32 batch 4"]
    assert found["S2"]["status"] == "PASS"  # batch 16 at 72 %; batch 64 is outside 8-32
    assert found["S3"]["status"] == "FAIL" and len(found["S3"]["failures"]) == 1  # 1.01 with row blocks; 1.04 at batch 1 is within
    assert "1.010" in found["S3"]["failures"][0]


def test_outputs_are_checked_before_the_run_and_never_overwritten_unasked(tmp_path):
    """bench writes only the files it is given (and the skinny plot beside --plot): a missing
    folder, an existing file without --force, a symbolic link or a folder end the command at
    once, with one line and exit 2, before anything is timed; nothing is written."""
    base = [sys.executable, "-m", "batchmv", "bench", "--quick", "--m", "16", "--batch", "4", "--threads", "1",
            "--min-time", "0.001", "--no-progress"]  # fmt: skip
    existing = tmp_path / "r.json"
    existing.write_text("mine")
    target = tmp_path / "target.txt"
    target.write_text("not bench's")
    (tmp_path / "link.json").symlink_to(target)
    for extra, message in ((["--json", str(tmp_path / "nodir" / "r.json")], "does not exist"),
                           (["--json", str(existing)], "use --force"),
                           (["--json", str(tmp_path / "link.json"), "--force"], "symbolic link"),
                           (["--json", str(tmp_path)], "not a regular file")):  # fmt: skip
        done = subprocess.run(base + extra, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert "batch" not in done.stdout  # (nothing ran)
    assert existing.read_text() == "mine" and target.read_text() == "not bench's"
    done = subprocess.run(base + ["--json", str(existing), "--force"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0 and json.loads(existing.read_text())["results"]


def test_sparse_section_runs_against_each_librarys_own_product(tmp_path):
    out = tmp_path / "sparse.json"
    cmd = [sys.executable, "-m", "batchmv", "bench", "--sparse", "--quick", "--threads", "1", "--min-time", "0.002",
           "--no-progress", "--json", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["section"] == "sparse" and report["machine"]["threads"] == 1
    for key in ("cpu_model", "caches", "blas", "versions", "load_average_end"):
        assert key in report["machine"]
    rows = report["results"]
    libraries = {"scipy", *(lib for lib in ("torch", "jax") if lib in report["machine"]["versions"])}
    assert {r["library"] for r in rows} == libraries
    assert {(r["density"], r["batch"]) for r in rows} == {(d, b) for d in (1e-3, 1e-1) for b in (1, 64)}
    for r in rows:
        assert r["ratio"] > 0 and r["native_s"] > 0 and r["batchmv_s"] > 0 and r["dense_s"] > 0
        assert r["max_rel_error"] < 1e-12  # batchmv's result is the library's own product's
    (target,) = report["targets"]
    assert target["id"] == "SP1" and target["status"] in ("PASS", "FAIL")
    assert "Sparse A (float64 CSR" in done.stdout and "SP1" in done.stdout


def test_sparse_target_passes_and_fails():
    from batchmv.tools.bench import sparse

    rows = [
        {"library": "scipy", "density": 0.01, "batch": 16, "ratio": 1.02, "native_s": 1e-3},
        {"library": "torch", "density": 0.01, "batch": 16, "ratio": 1.3, "native_s": 2e-5},
        {"library": "jax", "density": 0.1, "batch": 4096, "native_s": None},  # skipped: no ratio, not counted
    ]
    result = sparse.check(rows)
    assert result["status"] == "FAIL" and result["measured"] == "1 of 2 points within 1.05x"
    assert result["failures"] == ["torch density 0.01 batch 16: 1.30x (20.0 us native)"]
    assert sparse.check(rows[:1])["status"] == "PASS" and sparse.check(rows[2:])["status"] == "n/a"
