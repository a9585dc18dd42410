"""``batchmv apply``: streaming .npy files through matvec within a memory budget, loss-free
(kills, full disks, resume), bad input, the progress bar, and the Dask scheduler path."""

from __future__ import annotations

import faulthandler
import io
import json
import os
import pty
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import batchmv
from batchmv.tools.apply import command, runners

APPLY = [sys.executable, "-m", "batchmv.tools.apply"]


def run(*args, timeout=60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*APPLY, *map(str, args)], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kwargs
    )


def leftovers(out: Path) -> list[str]:
    return [p.name for p in (out.with_name(out.name + ".partial"), out.with_name(out.name + ".journal")) if p.exists()]


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@pytest.fixture
def small(tmp_path, rng):
    """A (64, 128) float32 and 32768 vectors (16 MB): 160 blocks with a 256K budget."""
    A = rng.standard_normal((64, 128)).astype(np.float32)
    X = rng.standard_normal((32768, 128)).astype(np.float32)
    np.save(tmp_path / "A.npy", A)
    np.save(tmp_path / "X.npy", X)
    return tmp_path, A, X


def reference(tmp_path: Path, budget: str = "256K") -> bytes:
    """OUT of an uninterrupted run of the standard small job."""
    ref = tmp_path / "ref.npy"
    assert command.main([str(tmp_path / "A.npy"), str(tmp_path / "X.npy"), "-o", str(ref), "--memory-budget", budget]) == 0
    return ref.read_bytes()


# -- results ----------------------------------------------------------------------------------


CASES = {
    # name: (A shape, A dtype, A fortran, x shape, x dtype, x fortran, axis, budget)
    "rows": ((24, 16), "f8", False, (1000, 16), "f8", False, -1, "4K"),
    "rows-one-block": ((24, 16), "f8", False, (1000, 16), "f8", False, -1, "64M"),
    "fortran-3d-axis0": ((24, 16), "f8", True, (16, 50, 7), "f8", True, 0, "3K"),
    "middle-axis-long-rows": ((8, 16), "f4", False, (3, 16, 500), "f4", False, 1, "2K"),  # a block is part of a row
    "columns": ((8, 16), "f8", False, (16, 300), "f8", False, 0, "1K"),
    "one-vector": ((5, 16), "f8", False, (16,), "f8", False, 0, "1K"),
    "no-vectors": ((5, 16), "f8", False, (0, 16), "f8", False, -1, "1K"),
    "int-x-float32-A": ((6, 16), "f4", False, (200, 16), "i4", False, -1, "2K"),  # float64 result
    "big-endian-x": ((6, 16), "f8", False, (200, 16), ">f8", False, -1, "2K"),
    "complex": ((6, 16), "c16", False, (100, 16), "c8", False, -1, "4K"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_result_equals_in_memory(tmp_path, rng, case):
    a_shape, a_dtype, a_f, x_shape, x_dtype, x_f, axis, budget = CASES[case]
    A = rng.standard_normal(a_shape).astype(a_dtype)
    X = (rng.standard_normal(x_shape) * 5).astype(x_dtype)
    if np.dtype(a_dtype).kind == "c":
        A = A + 1j * rng.standard_normal(a_shape)
    np.save(tmp_path / "A.npy", np.asfortranarray(A) if a_f else A)
    np.save(tmp_path / "X.npy", np.asfortranarray(X) if x_f else X)
    out = tmp_path / "Y.npy"
    rc = command.main([str(tmp_path / "A.npy"), str(tmp_path / "X.npy"), "-o", str(out), "--axis", str(axis),
                      "--memory-budget", budget, "--quiet"])  # fmt: skip
    assert rc == 0
    expected = batchmv.matvec(A, X, axis=axis)
    got = np.load(out)
    assert got.shape == expected.shape and got.dtype == expected.dtype.newbyteorder("=")
    np.testing.assert_allclose(got, expected, rtol=1e-5 if "f4" in (a_dtype, x_dtype) else 1e-12, atol=1e-5)
    # a standard .npy: the header numpy.save writes for the same array and order
    header = npy_bytes(np.asfortranarray(expected) if x_f else np.ascontiguousarray(expected))[:128]
    assert out.read_bytes()[: len(header)] == header
    assert leftovers(out) == []


def test_cli_entry_points(small):
    tmp_path, A, X = small
    out = tmp_path / "Y.npy"
    r = subprocess.run([sys.executable, "-m", "batchmv", "apply", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--memory-budget" in r.stdout and "--scheduler" in r.stdout
    from batchmv.tools import cli

    assert cli.main(["apply", str(tmp_path / "A.npy"), str(tmp_path / "X.npy"), "-o", str(out), "--quiet"]) == 0
    np.testing.assert_allclose(np.load(out), X @ A.T, rtol=1e-5, atol=1e-5)


def test_existing_out_is_never_overwritten_without_force(small, capsys):
    tmp_path, A, X = small
    out = tmp_path / "Y.npy"
    out.write_bytes(b"precious")
    args = [str(tmp_path / "A.npy"), str(tmp_path / "X.npy"), "-o", str(out), "--quiet"]
    assert command.main(args) == 2
    assert "exists; use --force" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert command.main([*args, "--force"]) == 0
    np.testing.assert_allclose(np.load(out), X @ A.T, rtol=1e-5, atol=1e-5)


# -- bad input ----------------------------------------------------------------------------------


def _bad_inputs(d: Path) -> dict:
    """name: (MATRIX, VECTORS, extra args, expected text in the message)."""
    np.save(d / "A.npy", np.ones((4, 3)))
    np.save(d / "X.npy", np.ones((10, 3)))
    np.save(d / "A3.npy", np.ones((2, 4, 3)))
    np.save(d / "A1.npy", np.ones(3))
    np.save(d / "X5.npy", np.ones((10, 5)))
    np.save(d / "Xobj.npy", np.array([None, 1, "a"], dtype=object).reshape(1, 3), allow_pickle=True)
    np.save(d / "Xstr.npy", np.array([["a", "b", "c"]]))
    np.save(d / "Xrec.npy", np.zeros((2, 3), dtype=[("a", "f8")]))
    (d / "text.npy").write_text("this is not a .npy file\n")
    np.save(d / "Xtrunc.npy", np.ones((10, 3)))
    with open(d / "Xtrunc.npy", "r+b") as f:
        f.truncate(os.path.getsize(d / "Xtrunc.npy") - 9)
    (d / "dir.npy").mkdir()
    (d / "empty.npy").write_bytes(b"")
    return {
        "missing-matrix": ("nope.npy", "X.npy", [], "no such file"),
        "missing-vectors": ("A.npy", "nope.npy", [], "no such file"),
        "unreadable": ("A.npy", "dir.npy", [], "it is a directory"),
        "not-npy": ("text.npy", "X.npy", [], "not a .npy file"),
        "empty-file": ("A.npy", "empty.npy", [], "not a .npy file"),
        "truncated": ("A.npy", "Xtrunc.npy", [], "truncated"),
        "A-3d": ("A3.npy", "X.npy", [], "2-D"),
        "A-1d": ("A1.npy", "X.npy", [], "2-D"),
        "n-mismatch": ("A.npy", "X5.npy", [], "n = 3"),
        "object-dtype": ("A.npy", "Xobj.npy", [], "Python objects"),
        "string-dtype": ("A.npy", "Xstr.npy", [], "not numeric"),
        "structured-dtype": ("A.npy", "Xrec.npy", [], "not numeric"),
        "axis-out-of-range": ("A.npy", "X.npy", ["--axis", "2"], "out of range"),
        "axis-negative-out-of-range": ("A.npy", "X.npy", ["--axis", "-3"], "out of range"),
        "budget-too-small": ("A.npy", "X.npy", ["--memory-budget", "16"], "too small"),
        "unknown-backend": ("A.npy", "X.npy", ["--backend", "fortran"], "unknown backend"),
        "out-dir-missing": ("A.npy", "X.npy", ["-o", str(d / "no" / "Y.npy")], "does not exist"),
        "out-is-input": ("A.npy", "X.npy", ["-o", str(d / "X.npy"), "--force"], "same file"),
    }


def test_bad_input(tmp_path, capsys):
    cases = _bad_inputs(tmp_path)
    before = sorted(os.listdir(tmp_path))
    for name, (a, x, extra, text) in cases.items():
        out = tmp_path / "Y.npy"
        args = [str(tmp_path / a), str(tmp_path / x), "-o", str(out), *extra]
        rc = command.main(args)
        err = capsys.readouterr().err
        assert rc == 2, (name, err)
        assert err.count("\n") == 1 and err.startswith("batchmv apply: error: "), (name, err)
        assert text in err, (name, err)
        assert not out.exists(), name
        assert sorted(os.listdir(tmp_path)) == before, name  # nothing written: no OUT, no partial, no journal


def test_bad_input_exit_status_from_the_command_line(tmp_path):
    np.save(tmp_path / "A.npy", np.ones((4, 3)))
    r = run(tmp_path / "A.npy", tmp_path / "missing.npy", "-o", tmp_path / "Y.npy")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no such file" in r.stderr
    assert not (tmp_path / "Y.npy").exists()


# -- loss-free: kills, full disks, resume -----------------------------------------------------


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_byte_identical(small):
    tmp_path, A, X = small
    ref = reference(tmp_path)
    np.testing.assert_allclose(np.load(io.BytesIO(ref)), X @ A.T, rtol=1e-5, atol=1e-5)
    out = tmp_path / "Y.npy"
    out.write_bytes(b"the previous result")  # replaced only by a complete new one (--force)
    cmd = [*APPLY, tmp_path / "A.npy", tmp_path / "X.npy", "-o", out, "--memory-budget", "256K", "--force", "--resume"]
    start = time.monotonic()
    subprocess.run([*APPLY, "--help"], capture_output=True, timeout=60)
    startup = time.monotonic() - start
    seed = random.randrange(2**32)
    rnd = random.Random(seed)
    journal = out.with_name("Y.npy.journal")
    progress = []  # blocks done after each kill that landed mid-run

    def blocks_done() -> int:
        if not journal.exists():
            return 0
        return max(0, len(journal.read_bytes().split(b"\n")) - 2)  # (a torn last line is no block)

    for attempt in range(8):
        proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if attempt >= 4:  # anywhere: during start-up, set-up, a block, a journal line
            time.sleep(rnd.uniform(0.0, startup + 0.4))
        else:  # first mid-run, however slow or fast the machine: after a few more finished blocks
            target = blocks_done() + rnd.randint(1, 20)
            deadline = time.monotonic() + 60
            while proc.poll() is None and blocks_done() < target and time.monotonic() < deadline:
                time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        if proc.returncode != -signal.SIGKILL:
            break  # it finished before the kill
        if out.read_bytes() != b"the previous result":  # killed after the atomic rename: OUT complete
            assert out.read_bytes() == ref, f"seed {seed}: attempt {attempt}"
            break
        done = blocks_done()
        if 0 < done < 160:
            progress.append(done)
    assert len(progress) >= 2, f"seed {seed}: kills mid-run after {progress} blocks"
    assert progress == sorted(progress), f"seed {seed}"  # --resume never loses finished blocks
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == ref, f"seed {seed}"
    assert leftovers(out) == []


def _fsize_limited(limit: int):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_file_size_limit_keeps_partial_work_then_resume(small):
    """EFBIG (RLIMIT_FSIZE) stops the run cleanly; --resume finishes it byte for byte; a
    journal that no longer matches its inputs, or a torn last line, is handled."""
    tmp_path, A, X = small
    ref = reference(tmp_path)
    out = tmp_path / "Y.npy"
    base = [tmp_path / "A.npy", tmp_path / "X.npy", "-o", out, "--memory-budget", "256K"]
    r = run(*base, preexec_fn=_fsize_limited(3_000_000))
    assert r.returncode == 1, r.stderr
    assert "file size limit" in r.stderr and "--resume" in r.stderr
    assert not out.exists()
    assert sorted(leftovers(out)) == ["Y.npy.journal", "Y.npy.partial"]
    journal = out.with_name("Y.npy.journal")
    done = len(journal.read_text().splitlines()) - 1
    assert 0 < done < 160

    r = run(*base)  # neither --resume nor --force: refused, nothing lost
    assert r.returncode == 2 and "--resume" in r.stderr and not out.exists()

    r = run(*base, "--resume", "--memory-budget", "512K")  # other options: other blocks
    assert r.returncode == 2 and "does not match" in r.stderr and "block_vectors" in r.stderr, r.stderr

    a_path = tmp_path / "A.npy"
    st = os.stat(a_path)
    saved = a_path.read_bytes()
    with open(a_path, "r+b") as f:  # A changed in place: same size, same mtime
        f.seek(len(saved) - 4)
        f.write(np.float32(7).tobytes())
    os.utime(a_path, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = run(*base, "--resume")
    assert r.returncode == 2 and "does not match" in r.stderr and "matrix.sha256" in r.stderr, r.stderr
    assert not out.exists() and len(leftovers(out)) == 2
    a_path.write_bytes(saved)

    st = os.stat(tmp_path / "X.npy")  # a new mtime alone is no change: the content decides
    os.utime(tmp_path / "X.npy", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with open(journal, "ab") as f:  # a run killed while appending a line
        f.write(b'{"block":12')
    r = run(*base, "--resume")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == ref
    assert leftovers(out) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the RLIMIT_FSIZE test covers EFBIG")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_keeps_partial_work_then_resume(small, small_tmpfs):
    tmp_path, A, X = small
    ref = reference(tmp_path)  # 8 MB: does not fit into the 2 MB file system
    out = small_tmpfs / "Y.npy"
    base = [tmp_path / "A.npy", tmp_path / "X.npy", "-o", out, "--memory-budget", "256K"]
    r = run(*base)
    assert r.returncode == 1, r.stderr
    assert "no space left" in r.stderr and "--resume" in r.stderr
    assert r.stderr.startswith("batchmv apply: warning: OUT needs")  # said up front
    assert not out.exists() and sorted(leftovers(out)) == ["Y.npy.journal", "Y.npy.partial"]
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_tmpfs)], check=True)
    r = run(*base, "--resume")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == ref


# -- memory ------------------------------------------------------------------------------------

_HWM = (
    "import sys\n"
    "from batchmv.tools.apply import command\n"
    "rc = command.main(sys.argv[1:])\n"
    "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
    "print(int(hwm) * 1024)\n"
    "sys.exit(rc)\n"
)


def _peak_rss(*args) -> int:
    r = subprocess.run([sys.executable, "-c", _HWM, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


@pytest.mark.slow
def test_peak_memory_stays_within_the_budget_whatever_the_file_size(tmp_path, rng):
    """A 200 MB VECTORS file with a 32 MB budget: the peak resident set (VmHWM, file-backed
    pages included) exceeds that of a 10-vector run by at most the budget."""
    budget = 32 * 2**20
    A = rng.standard_normal((64, 512)).astype(np.float32)
    np.save(tmp_path / "A.npy", A)
    rows = 100_000  # 512 float32 each: 205 MB
    X = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float32, shape=(rows, 512))
    for i in range(0, rows, 10_000):
        X[i : i + 10_000] = rng.standard_normal((10_000, 512), dtype=np.float32)
    X.flush()
    del X
    np.save(tmp_path / "Xtiny.npy", np.ones((10, 512), np.float32))
    size = os.path.getsize(tmp_path / "X.npy")
    assert size > 6 * budget
    common = ["--memory-budget", "32M", "--quiet"]
    baseline = _peak_rss(tmp_path / "A.npy", tmp_path / "Xtiny.npy", "-o", tmp_path / "Ytiny.npy", *common)
    peak = _peak_rss(tmp_path / "A.npy", tmp_path / "X.npy", "-o", tmp_path / "Y.npy", *common)
    assert peak - baseline <= budget, (peak, baseline)  # (the baseline run holds A too)
    Y = np.load(tmp_path / "Y.npy", mmap_mode="r")
    X = np.load(tmp_path / "X.npy", mmap_mode="r")
    for sl in (slice(0, 1000), slice(rows - 1000, rows)):
        np.testing.assert_allclose(Y[sl], X[sl] @ A.T, rtol=1e-4, atol=1e-4)


# -- progress ------------------------------------------------------------------------------------


def _stderr_on_a_terminal(cmd: list) -> str:
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=60) == 0
    return b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal_only(small):
    tmp_path, A, X = small
    base = [*APPLY, tmp_path / "A.npy", tmp_path / "X.npy", "-o", tmp_path / "Y.npy", "--memory-budget", "1M", "--force"]
    shown = _stderr_on_a_terminal(base)
    assert "100%" in shown and "rows/s" in shown and "32.8k/32.8k" in shown, shown
    assert _stderr_on_a_terminal([*base, "--quiet"]) == ""
    r = subprocess.run([str(c) for c in base], capture_output=True, text=True, timeout=60)  # stderr is a pipe
    assert r.returncode == 0 and r.stderr == ""


def test_parse_size():
    assert command.parse_size("32M") == command.parse_size("32MiB") == command.parse_size("32mb") == 32 * 2**20
    assert command.parse_size("1.5G") == 3 * 2**29
    assert command.parse_size("100") == command.parse_size("100B") == 100
    for bad in ("", "M", "-1M", "1X", "0", "1" * 401):
        with pytest.raises(Exception):
            command.parse_size(bad)


# -- Dask -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_scheduler_runs_the_same_job_on_a_dask_cluster(small, monkeypatch):
    distributed = pytest.importorskip("distributed")
    tmp_path, A, X = small
    ref = reference(tmp_path, "1M")
    out = tmp_path / "Y.npy"
    faulthandler.dump_traceback_later(120, exit=True)
    try:
        with distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster:
            args = [str(tmp_path / "A.npy"), str(tmp_path / "X.npy"), "-o", str(out), "--memory-budget", "1M"]
            assert command.main([*args, "--scheduler", cluster.scheduler_address, "--quiet"]) == 0
            assert out.read_bytes()[:128] == ref[:128]
            # the same blocks; the workers' BLAS runs single-threaded, so the last bits may differ
            np.testing.assert_allclose(np.load(out), np.load(io.BytesIO(ref)), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(np.load(out), X @ A.T, rtol=1e-5, atol=1e-5)
            assert leftovers(out) == []
    finally:
        faulthandler.cancel_dump_traceback_later()
    monkeypatch.setattr(runners, "CONNECT_TIMEOUT", 1)
    assert command.main([*args, "--scheduler", "tcp://127.0.0.1:9", "--force", "--quiet"]) == 2  # nobody there
