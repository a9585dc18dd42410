"""``batchmv apply`` runs against each other and against changed files (issue 11, items 5-7
and "fastest"): one OUT, one run at a time (real concurrent processes); ``--resume`` after
VECTORS, OUT.partial or the journal changed in place; an unreachable scheduler leaves
nothing; "fastest" is measured on a block before the run."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from apply_support import (
    journal_blocks, kill_after_blocks, main, one_error_line, reference, run, side_files, snapshot, start,
)  # fmt: skip

import batchmv
from batchmv.tools.apply import command, job as job_module, runners


@pytest.fixture
def two(tmp_path, rng):
    """A (64, 128) float32 and two VECTORS files of 32768 vectors (16 MB): 184 blocks at 256K."""
    np.save(tmp_path / "A.npy", rng.standard_normal((64, 128)).astype(np.float32))
    for name in ("X1.npy", "X2.npy"):
        np.save(tmp_path / name, rng.standard_normal((32768, 128)).astype(np.float32))
    return tmp_path


def args_for(d: Path, x: str, *extra) -> list:
    return [d / "A.npy", d / x, "-o", d / "Y.npy", "--memory-budget", "256K", *extra]


# -- 5. one OUT, one run at a time ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("flags", [[], ["--force"], ["--force", "--resume"]])
def test_a_second_run_on_the_same_out_is_refused_at_once(two, flags):
    """The report of issue 11: run 2 with --force while run 1 was in progress; run 1 exited 0
    with half of each run's rows in OUT.  Run 1 is stopped (SIGSTOP) mid-run, holding the lock."""
    ref1 = reference(two / "A.npy", two / "X1.npy", two / "Y.npy", "--memory-budget", "256K")
    out, journal = two / "Y.npy", two / "Y.npy.journal"
    first = start(*args_for(two, "X1.npy"))
    try:
        deadline = time.monotonic() + 60
        while journal_blocks(journal) < 2 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(first.pid, signal.SIGSTOP)
        assert first.poll() is None and journal_blocks(journal) < 184, "run 1 finished before it could be stopped"
        before = snapshot(two)
        began = time.monotonic()
        second = run(*args_for(two, "X2.npy", *flags))
        assert time.monotonic() - began < 30
        assert second.returncode == 2 and one_error_line(second.stderr), second.stderr
        assert "another batchmv apply run is writing OUT" in second.stderr
        assert snapshot(two) == before  # nothing of run 1's touched
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert out.read_bytes() == ref1  # exactly run 1's result
    assert side_files(out) == []


@pytest.mark.slow
@pytest.mark.parametrize("force", [False, True])
def test_simultaneous_starts_leave_one_run_s_result(two, force):
    """Six runs on one OUT started together, alternating X1 and X2: without --force exactly
    one succeeds; with it, each success is whole, and OUT is the last one's result."""
    refs = {x: reference(two / "A.npy", two / x, two / "Y.npy", "--memory-budget", "256K") for x in ("X1.npy", "X2.npy")}
    xs = ["X1.npy", "X2.npy"] * 3
    procs = [start(*args_for(two, x, *(["--force"] if force else []))) for x in xs]
    results = [(x, p.wait(timeout=300), p.stderr.read()) for x, p in zip(xs, procs)]
    for p in procs:
        p.stderr.close()
    ok = [x for x, rc, _ in results if rc == 0]
    for x, rc, err in results:
        assert rc in (0, 2), err
        assert rc == 0 or (one_error_line(err) and ("another batchmv apply run" in err or "exists" in err)), err
    assert len(ok) == 1 if not force else len(ok) >= 1
    assert (two / "Y.npy").read_bytes() in [refs[x] for x in ok]
    assert side_files(two / "Y.npy") == []


def test_a_lock_held_elsewhere_refuses_and_a_stale_one_is_taken_over(two, capsys):
    out, lock = two / "Y.npy", two / "Y.npy.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a run in progress holds it
        before = snapshot(two)
        assert main(*args_for(two, "X1.npy")) == 2
        err = capsys.readouterr().err
        assert one_error_line(err) and "another batchmv apply run" in err, err
        assert snapshot(two) == before
    finally:
        os.close(fd)  # now it is what a killed run leaves: an empty, unlocked file
    assert main(*args_for(two, "X1.npy", "--quiet")) == 0
    assert side_files(out) == []


# -- 6. --resume trusts content, not size and mtime ----------------------------------------------------


def _killed_run(d: Path, blocks: int) -> int:
    proc = start(*args_for(d, "X1.npy"))
    done = kill_after_blocks(proc, d / "Y.npy.journal", blocks)
    assert 0 < done < 184 and not (d / "Y.npy").exists(), done
    # a killed run leaves its lock file, empty and unlocked: the next run takes it over and
    # removes it; nothing else of the killed run is touched
    assert (d / "Y.npy.lock").read_bytes() == b""
    return done


def unchanged_but_the_lock(before: dict, d: Path) -> bool:
    before = {k: v for k, v in before.items() if k != "Y.npy.lock"}
    return snapshot(d) == before


def _rewrite_rows(path: Path, rows: slice, rng) -> None:
    """Change ``rows`` of the (N, 128) float32 file in place: same size, same mtime."""
    st = os.stat(path)
    X = np.load(path, mmap_mode="r+")
    X[rows] = rng.standard_normal(X[rows].shape).astype(np.float32)
    X.flush()
    del X
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_ino == st.st_ino


@pytest.mark.slow
@pytest.mark.parametrize("where", ["finished", "both", "unfinished"])
def test_resume_after_vectors_changed_in_place(two, rng, where):
    """The report of issue 11: kill, change 1,000 rows with the same size and mtime, resume:
    it exited 0 with 1,000 rows computed from the old data.  Rows that finished blocks came
    from are checked: a change there is refused (one line, nothing touched); a change in rows
    not yet computed is simply read, so the result is that of the file as it is now."""
    done = _killed_run(two, 20)  # 20 blocks of 179 rows: 3,580 rows at least
    rows = {"finished": slice(1000, 2000), "both": slice(done * 179 - 500, done * 179 + 500),
            "unfinished": slice(31000, 32000)}[where]  # fmt: skip
    _rewrite_rows(two / "X1.npy", rows, rng)
    new_ref = reference(two / "A.npy", two / "X1.npy", two / "fresh.npy", "--memory-budget", "256K")
    before = snapshot(two)
    r = run(*args_for(two, "X1.npy", "--resume"))
    if where == "unfinished":
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 2 and one_error_line(r.stderr), r.stderr
        assert "VECTORS" in r.stderr and "changed since the interrupted run" in r.stderr
        assert unchanged_but_the_lock(before, two)
        assert side_files(two / "Y.npy") == ["Y.npy.journal", "Y.npy.partial"] and not (two / "Y.npy").exists()
        r = run(*args_for(two, "X1.npy", "--resume", "--force"))  # starts over
        assert r.returncode == 0 and "starting over" in r.stderr, r.stderr
    assert (two / "Y.npy").read_bytes() == new_ref  # never a row from the old data
    assert side_files(two / "Y.npy") == []


@pytest.mark.slow
def test_resume_does_not_trust_a_changed_partial_file_or_journal(two):
    ref = reference(two / "A.npy", two / "X1.npy", two / "Y.npy", "--memory-budget", "256K")
    _killed_run(two, 10)
    partial, journal = two / "Y.npy.partial", two / "Y.npy.journal"
    header = len(ref) - 32768 * 64 * 4
    with open(partial, "r+b") as f:  # one result byte of block 3
        f.seek(header + 3 * 179 * 64 * 4 + 17)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    before = snapshot(two)
    r = run(*args_for(two, "X1.npy", "--resume"))
    assert r.returncode == 2 and one_error_line(r.stderr) and "Y.npy.partial changed" in r.stderr, r.stderr
    assert unchanged_but_the_lock(before, two)
    with open(partial, "r+b") as f:
        f.seek(header + 3 * 179 * 64 * 4 + 17)
        f.write(byte)
    lines = journal.read_bytes().split(b"\n")
    record = json.loads(lines[2])
    record["y"] = "0" * 64  # a journal edited to vouch for other bytes
    lines[2] = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    journal.write_bytes(b"\n".join(lines))
    r = run(*args_for(two, "X1.npy", "--resume"))
    assert r.returncode == 2 and one_error_line(r.stderr) and "block 1 differs" in r.stderr, r.stderr
    r = run(*args_for(two, "X1.npy", "--resume", "--force"))
    assert r.returncode == 0, r.stderr
    assert (two / "Y.npy").read_bytes() == ref


# -- 7. nothing is made before everything that can fail has been checked --------------------------


def test_an_unreachable_scheduler_leaves_nothing(two, capsys, monkeypatch):
    """The report of issue 11: side files were left, so the next plain run was refused."""
    pytest.importorskip("distributed")
    monkeypatch.setattr(runners, "CONNECT_TIMEOUT", 1)
    before = snapshot(two)
    for address in ("tcp://127.0.0.1:9", "nonsense://x", ""):
        assert main(*args_for(two, "X1.npy", "--scheduler", address)) == 2
        err = capsys.readouterr().err
        assert one_error_line(err) and "scheduler" in err.lower(), err
        assert snapshot(two) == before
    assert main(*args_for(two, "X1.npy", "--quiet")) == 0  # the next plain run is not refused


# -- "fastest": measured on a block of the real shape, once, before any block runs -----------------


def test_fastest_is_measured_on_a_template_block_before_the_run(two, monkeypatch):
    calls = []
    real = batchmv.matvec

    def matvec(a, x, *args, **kwargs):
        calls.append((tuple(x.shape), kwargs.get("backend")))
        return real(a, x, *args, **kwargs)

    monkeypatch.setattr(batchmv, "matvec", matvec)
    out = two / "Y.npy"
    assert main(*args_for(two, "X1.npy", "--backend", "fastest", "--memory-budget", "1M", "--quiet")) == 0
    first, rest = calls[0], calls[1:]
    assert first[1] == "fastest"  # the measurement, on the template
    engines = {b for _, b in rest}
    assert len(engines) == 1 and "fastest" not in engines  # every block on the engine decided
    assert {s for s, _ in rest} == {first[0]}  # the template had the blocks' shape
    A, X = np.load(two / "A.npy"), np.load(two / "X1.npy")
    np.testing.assert_allclose(np.load(out), X @ A.T, rtol=1e-4, atol=1e-4)
    job = job_module.make_job(command.build_parser().parse_args(
        [str(a) for a in args_for(two, "X1.npy", "--backend", "fastest", "--memory-budget", "1M", "--force")]), 2**20)
    try:
        notes = " ".join(job.block_report.notes)
        assert "not measured yet" not in notes and job.engine == job.block_report.backend == engines.pop(), notes
    finally:
        job.close()


def test_names_have_one_meaning(two):
    """Issue 9: Job.block_report (a batchmv.Plan), make_job, and "executor" where the
    library says "runner" for its fast path."""
    assert not hasattr(job_module, "prepare") and hasattr(job_module, "make_job")
    job = job_module.make_job(command.build_parser().parse_args([str(a) for a in args_for(two, "X1.npy")]), 2**18)
    try:
        assert isinstance(job.block_report, batchmv.Plan) and not hasattr(job, "plan")
        assert "executor" in job.fingerprint and "runner" not in json.dumps(job.fingerprint)
        assert job.fingerprint["format"].endswith("/2")
    finally:
        job.close()
