"""Helpers of the ``batchmv apply`` tests: running it, and checking what it left on disk."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from batchmv.tools.apply import command

APPLY = [sys.executable, "-m", "batchmv.tools.apply"]
SIDE = (".partial", ".journal", ".lock")


def run(*args, timeout=60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*APPLY, *map(str, args)], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kwargs
    )


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([*APPLY, *map(str, args)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def side_files(out: Path) -> list[str]:
    return sorted(p.name for p in (out.with_name(out.name + s) for s in SIDE) if os.path.lexists(p))


def snapshot(d: Path) -> dict:
    """Every entry of ``d``: its kind, inode and (regular files) bytes; symlinks: target."""
    found = {}
    for p in sorted(d.iterdir()):
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode):
            found[p.name] = ("file", st.st_ino, p.read_bytes())
        elif stat.S_ISLNK(st.st_mode):
            found[p.name] = ("link", st.st_ino, os.readlink(p))
        else:
            found[p.name] = (stat.S_IFMT(st.st_mode), st.st_ino, None)
    return found


def one_error_line(err: str) -> bool:
    return err.count("\n") == 1 and err.startswith("batchmv apply: error: ") and "Traceback" not in err


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) if the block takes longer than ``seconds``."""

    def expired(*_):
        raise TimeoutError(f"still running after {seconds} s: blocked?")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def main(*args) -> int:
    """``batchmv apply`` in this process (fast; exceptions other than its own propagate)."""
    with deadline(60):
        return command.main([str(a) for a in args])


def npy_bytes(arr: np.ndarray, version=None) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, version=version)
    return buf.getvalue()


def reference(a: Path, x: Path, out: Path, *extra) -> bytes:
    """OUT of an uninterrupted run (in this process)."""
    assert main(a, x, "-o", out, "--quiet", *extra) == 0
    data = out.read_bytes()
    out.unlink()
    return data


def journal_blocks(journal: Path) -> int:
    if not journal.exists():
        return 0
    return max(0, len(journal.read_bytes().split(b"\n")) - 2)  # (a torn last line is no block)


def kill_after_blocks(proc: subprocess.Popen, journal: Path, blocks: int, limit: float = 60) -> int:
    """SIGKILL ``proc`` once its journal records at least ``blocks`` finished blocks."""
    end = time.monotonic() + limit
    while proc.poll() is None and journal_blocks(journal) < blocks and time.monotonic() < end:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    return journal_blocks(journal)
