"""``batchmv apply`` against hostile files (issue 11, items 1-4 and the same kinds): every
.npy version numpy writes works; a malformed header, a special file, a side file that is
an input or a symlink, a huge budget, a journal with non-finite values: exit 2, one line,
nothing written, nothing of anyone else's touched; and a huge empty shape costs nothing."""

from __future__ import annotations

import itertools
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from apply_support import deadline, main, npy_bytes, one_error_line, run, side_files, snapshot

import batchmv
from batchmv.tools.apply import command


@pytest.fixture
def files(tmp_path):
    np.save(tmp_path / "A.npy", np.arange(12.0).reshape(4, 3))
    np.save(tmp_path / "X.npy", np.arange(30.0).reshape(10, 3))
    return tmp_path


def refused(d: Path, capsys, *args, text: str = "") -> str:
    """Run apply in this process on ``args``: exit 2, one line, nothing in ``d`` changed."""
    before = snapshot(d)
    rc = main(*args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert one_error_line(err), err
    assert text in err, err
    assert snapshot(d) == before
    return err


# -- 1. every version numpy writes ------------------------------------------------------------


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
@pytest.mark.parametrize("fortran", [False, True])
def test_every_npy_format_version_numpy_writes(tmp_path, rng, version, fortran):
    A = rng.standard_normal((5, 7))
    X = rng.standard_normal((7, 40)) if fortran else rng.standard_normal((40, 7))
    (tmp_path / "A.npy").write_bytes(npy_bytes(np.asfortranarray(A) if fortran else A, version))
    (tmp_path / "X.npy").write_bytes(npy_bytes(np.asfortranarray(X) if fortran else X, version))
    axis = 0 if fortran else -1
    assert main(tmp_path / "A.npy", tmp_path / "X.npy", "-o", tmp_path / "Y.npy", "--axis", axis, "--quiet") == 0
    np.testing.assert_allclose(np.load(tmp_path / "Y.npy"), batchmv.matvec(A, X, axis=axis), rtol=1e-12)


def test_version_3_from_the_command_line(files):
    """The report of issue 11: write_array(..., version=(3, 0)) then apply: a traceback."""
    with open(files / "X3.npy", "wb") as f:
        np.lib.format.write_array(f, np.arange(30.0).reshape(10, 3), version=(3, 0))
    r = run(files / "A.npy", files / "X3.npy", "-o", files / "Y.npy")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    np.testing.assert_array_equal(np.load(files / "Y.npy"), np.arange(30.0).reshape(10, 3) @ np.arange(12.0).reshape(4, 3).T)


# -- 1, 2. what the header says is checked; malformed ones are one line ----------------------


def raw_header(text: str, version=(1, 0), data: bytes = b"") -> bytes:
    """A .npy file whose header dict is ``text``, verbatim, padded as numpy pads."""
    body = text.encode("latin1" if version < (3, 0) else "utf8")
    size = 2 if version == (1, 0) else 4
    body += b" " * (-(8 + size + len(body) + 1) % 64) + b"\n"
    return b"\x93NUMPY" + bytes(version) + len(body).to_bytes(size, "little") + body + data


def H(shape: str, descr: str = "'<f8'", fortran: str = "False") -> str:
    return f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}"


HOSTILE = {
    "cut-in-the-middle": ("{'descr': '<f8', 'fortran_order': Fal", "damaged .npy header"),  # tokenize.TokenError
    "bool-shape": (H("(True, 3)"), "non-negative integers"),
    "negative-shape": (H("(-1, 3)"), "non-negative integers"),
    "float-shape": (H("(2.0, 3)"), "damaged .npy header"),
    "65-dims": (H("(" + "1, " * 64 + "3)"), "at most 64"),
    "int-fortran-order": (H("(10, 3)", fortran="0"), "damaged .npy header"),
    "unknown-descr": (H("(10, 3)", descr="'<q9'"), "damaged .npy header"),
    "object-descr": (H("(10, 3)", descr="'|O'"), "Python objects"),
    "huge-shape": (H("(" + ", ".join(["99999999999999999999"] * 30) + ", 3)"), "truncated"),
    "expression": (H("(10**400, 3)"), "damaged .npy header"),
    "nested-brackets": ("[" * 3000 + "]" * 3000, "damaged .npy header"),  # RecursionError or MemoryError in the parser
    "not-a-dict": ("[1, 2, 3]", "damaged .npy header"),
    "extra-key": ("{'descr': '<f8', 'fortran_order': False, 'shape': (10, 3), 'x': 1}", "damaged .npy header"),
    "latin1-garbage": ("\xff\xfe\x00{", "damaged .npy header"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
@pytest.mark.parametrize("label", ["MATRIX", "VECTORS"])
def test_hostile_header_is_one_line_and_nothing_written(files, capsys, name, label):
    text, expected = HOSTILE[name]
    (files / "bad.npy").write_bytes(raw_header(text, data=b"\0" * 240))
    a, x = ("bad.npy", "X.npy") if label == "MATRIX" else ("A.npy", "bad.npy")
    err = refused(files, capsys, files / a, files / x, "-o", files / "Y.npy", text=expected)
    assert label in err


def test_header_length_beyond_what_numpy_reads(files, capsys):
    """A 2.0 header announcing 4 GB is refused without reading (or allocating) 4 GB."""
    head = b"\x93NUMPY\x02\x00" + (2**32 - 1).to_bytes(4, "little") + b"{" + b" " * 100
    (files / "bad.npy").write_bytes(head)
    refused(files, capsys, files / "A.npy", files / "bad.npy", "-o", files / "Y.npy", text="damaged .npy header")


def test_unknown_format_version(files, capsys):
    (files / "bad.npy").write_bytes(raw_header(H("(10, 3)"), version=(2, 0), data=b"\0" * 240).replace(b"\x02\x00", b"\x04\x00", 1))
    refused(files, capsys, files / "A.npy", files / "bad.npy", "-o", files / "Y.npy", text="unsupported .npy format version 4.0")


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_a_valid_file_cut_at_every_byte(files, capsys, version):
    whole = npy_bytes(np.arange(30.0).reshape(10, 3), version)
    for cut in range(len(whole)):
        (files / "cut.npy").write_bytes(whole[:cut])
        refused(files, capsys, files / "A.npy", files / "cut.npy", "-o", files / "Y.npy")


def test_random_header_damage_is_never_a_traceback(files, capsys):
    """Bytes of a valid header changed at random: apply runs (the header still says
    something valid) or refuses with one line; never an exception, never a file left."""
    seed = random.randrange(2**32)
    rnd = random.Random(seed)
    whole = npy_bytes(np.arange(30.0).reshape(10, 3))
    alphabet = b"{}()[]',: 0123456789-TrueFals<>|fiucb\n\x00\xff"
    for trial in range(300):
        data = bytearray(whole)
        for _ in range(rnd.randint(1, 4)):
            data[rnd.randrange(6, 128)] = rnd.choice(alphabet)
        (files / "fuzz.npy").write_bytes(bytes(data))
        rc = main(files / "A.npy", files / "fuzz.npy", "-o", files / "Y.npy", "--force", "--quiet")
        err = capsys.readouterr().err
        assert rc in (0, 2), (seed, trial, err)
        assert rc == 0 or one_error_line(err), (seed, trial, err)
        assert side_files(files / "Y.npy") == [], (seed, trial)


# -- 3. special files are refused at once, never opened in a way that blocks -------------------


def _special(d: Path, kind: str, name: str) -> Path:
    p = d / name
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "directory":
        p.mkdir()
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(p))
        s.close()
    elif kind == "device":
        os.symlink("/dev/zero", p)  # (making a device node needs root; a link to one is the same to open())
    return p


@pytest.mark.parametrize("kind", ["fifo", "directory", "socket", "device"])
@pytest.mark.parametrize("role", ["MATRIX", "VECTORS", "OUT", ".partial", ".journal", ".lock"])
def test_special_files_are_refused_at_once(files, capsys, kind, role):
    out = files / "Y.npy"
    name = {"MATRIX": "S.npy", "VECTORS": "S.npy", "OUT": "Y.npy"}.get(role, "Y.npy" + role)
    special = _special(files, kind, name)
    a = special if role == "MATRIX" else files / "A.npy"
    x = special if role == "VECTORS" else files / "X.npy"
    start = time.monotonic()
    with deadline(20):
        err = refused(files, capsys, a, x, "-o", out, "--force")
    assert time.monotonic() - start < 10
    words = {"fifo": "a FIFO", "directory": "a directory", "socket": "a socket", "device": "a character device"}
    if role in ("MATRIX", "VECTORS") or kind != "device":
        assert words[kind] in err, err
    else:  # apply never goes through a symlink when it writes
        assert "symbolic link" in err, err


def test_fifo_as_vectors_from_the_command_line(files):
    """The report of issue 11: mkfifo F.npy; apply A.npy F.npy -o out.npy hung in open()."""
    os.mkfifo(files / "F.npy")
    r = run(files / "A.npy", files / "F.npy", "-o", files / "Y.npy", timeout=30)
    assert r.returncode == 2 and one_error_line(r.stderr) and "FIFO" in r.stderr, r.stderr
    assert not (files / "Y.npy").exists() and side_files(files / "Y.npy") == []


# -- 4. no input, and nothing apply did not make, is ever truncated, overwritten or removed ------


@pytest.mark.parametrize("flags", [[], ["--force"], ["--resume"], ["--force", "--resume"]])
@pytest.mark.parametrize("suffix", [".partial", ".journal", ".lock"])
def test_an_input_named_like_a_side_file_is_never_touched(files, capsys, flags, suffix):
    """The report of issue 11: VECTORS named out.npy.partial with -o out.npy was truncated."""
    os.replace(files / "X.npy", files / f"Y.npy{suffix}")
    refused(files, capsys, files / "A.npy", files / f"Y.npy{suffix}", "-o", files / "Y.npy", *flags, text="same file as VECTORS")
    os.replace(files / "A.npy", files / "Y.npy")  # and MATRIX as OUT itself
    refused(files, capsys, files / "Y.npy", files / f"Y.npy{suffix}", "-o", files / "Y.npy", *flags)


@pytest.mark.parametrize("how", ["hardlink", "symlink-to-input"])
def test_an_input_reached_another_way_is_never_touched(files, capsys, how):
    if how == "hardlink":
        os.link(files / "X.npy", files / "Y.npy.partial")
        text = "same file as VECTORS"
    else:
        os.symlink(files / "X.npy", files / "Y.npy.journal")
        text = "symbolic link"
    refused(files, capsys, files / "A.npy", files / "X.npy", "-o", files / "Y.npy", "--force", text=text)


@pytest.mark.parametrize("suffix", ["", ".partial", ".journal", ".lock"])
def test_symlinks_are_never_followed_or_removed(files, capsys, suffix):
    (files / "precious").write_bytes(b"not apply's")
    os.symlink(files / "precious", files / f"Y.npy{suffix}")
    refused(files, capsys, files / "A.npy", files / "X.npy", "-o", files / "Y.npy", "--force", text="symbolic link")
    os.unlink(files / f"Y.npy{suffix}")
    os.symlink(files / "missing", files / f"Y.npy{suffix}")  # dangling: nothing would be created through it
    refused(files, capsys, files / "A.npy", files / "X.npy", "-o", files / "Y.npy", "--force", text="symbolic link")


@pytest.mark.parametrize("flags", [[], ["--force"], ["--force", "--resume"]])
def test_files_that_are_not_apply_s_are_never_removed(files, capsys, flags):
    out = files / "Y.npy"
    (files / "Y.npy.journal").write_bytes(b"my notes\n")  # not a journal
    refused(files, capsys, files / "A.npy", files / "X.npy", "-o", out, *flags, text="not a batchmv apply journal")
    os.unlink(files / "Y.npy.journal")
    (files / "Y.npy.partial").write_bytes(b"my data")  # no journal: not an unfinished run of apply
    refused(files, capsys, files / "A.npy", files / "X.npy", "-o", out, *flags, text="without a journal")
    os.unlink(files / "Y.npy.partial")
    (files / "Y.npy.lock").write_bytes(b"x")  # apply's lock files are empty
    refused(files, capsys, files / "A.npy", files / "X.npy", "-o", out, *flags, text="not apply's lock file")


# -- the same kinds: a huge budget, non-finite journal values, a huge empty shape -----------------


def test_a_401_digit_budget_is_one_line(files):
    r = run(files / "A.npy", files / "X.npy", "-o", files / "Y.npy", "--memory-budget", "9" * 401)
    assert r.returncode == 2 and one_error_line(r.stderr) and "larger than any memory" in r.stderr, r.stderr
    r = run(files / "A.npy", files / "X.npy", "-o", files / "Y.npy", "--memory-budget", "12X")
    assert r.returncode == 2 and one_error_line(r.stderr) and "invalid --memory-budget" in r.stderr, r.stderr
    assert sorted(os.listdir(files)) == ["A.npy", "X.npy"]


_BAD_LINES = {
    "infinity": b'{"block":Infinity,"inner":[0,1],"outer":[0,1],"x":"0","y":"0"}',
    "nan": b'{"block":NaN,"inner":[0,1],"outer":[0,1],"x":"0","y":"0"}',
    "1e400": b'{"block":1e400,"inner":[0,1],"outer":[0,1],"x":"0","y":"0"}',
    "huge-int": b'{"block":' + b"9" * 5000 + b',"inner":[0,1],"outer":[0,1],"x":"0","y":"0"}',
    "bool": b'{"block":true,"inner":[0,1],"outer":[0,1],"x":"0","y":"0"}',
    "negative": b'{"block":-1,"inner":[0,1],"outer":[0,1],"x":"0","y":"0"}',
    "nested": b"[" * 100_000 + b"]" * 100_000,
    "not-utf8": b'{"block":\xff}',
}


def interrupt_after(blocks: int):
    """A stand-in for run_local that finishes ``blocks`` blocks, then is interrupted."""
    real = command.run_local

    def run_local(job, output, pending, *args):
        real(job, output, itertools.islice(pending, blocks), *args)
        raise KeyboardInterrupt

    return run_local


@pytest.mark.parametrize("name", list(_BAD_LINES))
def test_a_journal_with_hostile_values_is_one_line(files, capsys, monkeypatch, name):
    out = files / "Y.npy"
    args = [files / "A.npy", files / "X.npy", "-o", out, "--memory-budget", "200", "--quiet"]  # 5 blocks
    assert main(*args) == 0
    ref = out.read_bytes()
    out.unlink()
    with monkeypatch.context() as patched:  # an unfinished run: 2 blocks done
        patched.setattr(command, "run_local", interrupt_after(2))
        assert main(*args) == 130
    capsys.readouterr()
    assert len((files / "Y.npy.journal").read_bytes().splitlines()) == 3
    with open(files / "Y.npy.journal", "ab") as f:
        f.write(_BAD_LINES[name] + b"\n")
    err = refused(files, capsys, *args, "--resume", text="is damaged")
    assert "--force" in err
    assert main(*args, "--resume", "--force") == 0  # apply's own journal: --force starts over
    assert out.read_bytes() == ref and side_files(out) == []


_HWM = "import sys\nfrom batchmv.tools.apply import command\nrc = command.main(sys.argv[1:])\n" \
       "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\nsys.exit(rc)\n"  # fmt: skip


def _peak_kb(*args) -> tuple[int, float]:
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-c", _HWM, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return int(r.stdout), time.monotonic() - start


@pytest.mark.slow
def test_a_huge_empty_shape_costs_nothing(tmp_path):
    """A valid 128-byte file of shape (2**40, 0): no block is computed, however many the
    header implies (it made a list of 1.2e9 block numbers), and memory stays flat."""
    (tmp_path / "X.npy").write_bytes(raw_header(H("(1099511627776, 0)")))
    assert os.path.getsize(tmp_path / "X.npy") == 128
    np.save(tmp_path / "A.npy", np.ones((0, 0)))
    np.save(tmp_path / "Xtiny.npy", np.ones((4, 0)))
    base, _ = _peak_kb(tmp_path / "A.npy", tmp_path / "Xtiny.npy", "-o", tmp_path / "Ytiny.npy", "--memory-budget", "1K")
    peak, seconds = _peak_kb(tmp_path / "A.npy", tmp_path / "X.npy", "-o", tmp_path / "Y.npy", "--memory-budget", "1K")
    assert peak - base < 8 * 1024, (peak, base)  # KB: the budget is 1K; this leaves room for noise only
    assert seconds < 30
    Y = np.load(tmp_path / "Y.npy", mmap_mode="r")
    assert Y.shape == (2**40, 0) and os.path.getsize(tmp_path / "Y.npy") == 128


def test_n_zero_gives_zeros_without_blocks(tmp_path, capsys):
    A, X = np.ones((3, 0)), np.ones((1000, 0))
    np.save(tmp_path / "A.npy", A)
    np.save(tmp_path / "X.npy", X)
    assert main(tmp_path / "A.npy", tmp_path / "X.npy", "-o", tmp_path / "Y.npy", "--memory-budget", "1K") == 0
    got = np.load(tmp_path / "Y.npy")
    expected = batchmv.matvec(A, X)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert got.tobytes() == expected.tobytes()
    assert (tmp_path / "Y.npy").read_bytes()[:128] == npy_bytes(expected)[:128]


@pytest.mark.parametrize("extra", [["--axis", "abc"], ["--axis", "9" * 5000], ["--axis", "9" * 40], []])
def test_bad_arguments_are_one_line(files, extra):
    out = [] if not extra else ["-o", files / "Y.npy"]  # (no -o at all: a required argument missing)
    for cmd in (["-m", "batchmv.tools.apply"], ["-m", "batchmv", "apply"]):
        r = subprocess.run([sys.executable, *cmd, files / "A.npy", files / "X.npy", *out, *extra],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        assert r.returncode == 2 and one_error_line(r.stderr), r.stderr
    assert sorted(os.listdir(files)) == ["A.npy", "X.npy"]
