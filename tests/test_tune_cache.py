"""The tuning cache on disk (``BATCHMV_TUNE_CACHE``, batchmv/_tune_cache.py): whatever is at
the path, ``matvec(..., backend="fastest")`` and ``plan`` give their results with at most a
RuntimeWarning, never an exception, a hang or unbounded memory; concurrent writers keep
each other's choices; a symlinked cache stays a symlink."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import batchmv
import support
from batchmv import _tune, _tune_cache
from batchmv._memory import aligned_empty

ENGINES = frozenset(batchmv.available_backends())


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail instead of hanging: SIGALRM interrupts a blocked open() or read()."""

    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def fresh(monkeypatch):
    """A new process's state: nothing decided, the cache file not read, no remembered call;
    timings replaced by constants (numpy fastest) so that measuring takes no time."""

    def use(path):
        monkeypatch.setenv(_tune.CACHE_ENV, str(path))
        monkeypatch.setattr(_tune, "_choices", {})
        monkeypatch.setattr(_tune, "_disk_loaded", False)
        monkeypatch.setattr(batchmv._cache, "calls", batchmv._cache.Runners(batchmv._cache.MAX_CALLS))

    rounds = {"numpy": 1.0, "torch": 2.0, "jax": 3.0, "cupy": 4.0}
    monkeypatch.setattr(batchmv._timing, "rounds_in_use", lambda run, work, budget_s=0.05: rounds[run.__defaults__[0].engine.name])
    monkeypatch.setattr(batchmv._timing, "median_seconds", lambda run, **_: 0.25)
    return use


def _problem(batch=300):
    """A, x of one kind whenever they are made: the kind holds their alignment."""
    rng = np.random.default_rng(7)
    a, x = aligned_empty((64, 48), np.float32), aligned_empty((batch, 48), np.float32)
    a[...], x[...] = rng.standard_normal(a.shape), rng.standard_normal(x.shape)
    return a, x


def _calls_give_results(a, x):
    """plan and matvec with "fastest" work and agree; the warnings they give, as text."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = batchmv.plan(a, x, backend="fastest")
        y = batchmv.matvec(a, x, backend="fastest")
        assert batchmv.plan(a, x, backend="fastest").backend in ENGINES and p.copies == ()
    np.testing.assert_allclose(y, x.astype(np.float64) @ a.T.astype(np.float64), rtol=1e-4, atol=1e-4)
    assert all(w.category is RuntimeWarning for w in caught), [str(w.message) for w in caught]
    return [str(w.message) for w in caught]


def _valid_cache(path, fresh):
    """A cache file as batchmv writes it (one choice), as parsed JSON."""
    fresh(path)
    _calls_give_results(*_problem())
    return json.loads(path.read_text())


# -- item 8: hostile content -------------------------------------------------------------
NOT_OURS = {
    "100000 nested [": b"[" * 100_000,
    "100000 nested objects": b'{"a":' * 100_000,
    "cut JSON": b"{not json",
    "not UTF-8": b"\xff\xfe\x00\x81garbage",
    "another format": json.dumps({"format": "other"}).encode(),
    "a list": b"[1, 2, 3]",
    "format of another type": json.dumps({"format": 1}).encode(),
    "JSON NaN alone": b"NaN",
    "a number past Python's digit limit": (
        b'{"format": "batchmv-tune-1", "machine": {}, "choices": {"k": {"engine": "numpy", "times": {"numpy": '
        + b"9" * 5000 + b"}}}}"
    ),
}


def _tampered(good):
    """Well-formed cache files with one thing wrong, from a valid one."""
    key, entry = next(iter(good["choices"].items()))
    engine = entry["engine"]

    def with_entry(value, k=key):
        return dict(good, choices={k: value})

    def with_time(value):
        return with_entry({"engine": engine, "times": {engine: value}})

    many = {f"{key}#{i}": entry for i in range(_tune_cache.MAX_ENTRIES + 1)}
    return {
        "other format version": json.dumps(dict(good, format="batchmv-tune-999")),
        "other machine": json.dumps(dict(good, machine={"node": "elsewhere"})),
        "machine nested deeply": '{"format": "batchmv-tune-1", "choices": {}, "machine": ' + "[" * 400 + "]" * 400 + "}",
        "extra top-level key": json.dumps(dict(good, extra=1)),
        "choices a list": json.dumps(dict(good, choices=[1])),
        "entry a string": json.dumps(with_entry(engine)),
        "entry with extra key": json.dumps(with_entry(dict(entry, extra=1))),
        "entry without times": json.dumps(with_entry({"engine": engine})),
        "engine a number": json.dumps(with_entry({"engine": 3, "times": {"3": 1.0}})),
        "engine a list": json.dumps(with_entry({"engine": [engine], "times": entry["times"]})),
        "unknown engine": json.dumps(with_entry({"engine": "no-such-engine", "times": {"no-such-engine": 1.0}})),
        "engine not timed": json.dumps(with_entry({"engine": engine, "times": {}})),
        "times a list": json.dumps(with_entry({"engine": engine, "times": [1.0]})),
        "time of unknown engine": json.dumps(with_entry({"engine": engine, "times": {engine: 1.0, "nope": 1.0}})),
        "time NaN": json.dumps(with_time(float("nan"))),
        "time Infinity": json.dumps(with_time(float("inf"))),
        "time 1e999": json.dumps(with_time(1.0)).replace("1.0", "1e999"),
        "time negative": json.dumps(with_time(-1.0)),
        "time a bool": json.dumps(with_time(True)),
        "time a string": json.dumps(with_time("1.0")),
        "time a 4000-digit integer": json.dumps(with_time(1.0)).replace("1.0", "9" * 4000),
        "key of 600000 characters": json.dumps(with_entry(entry, "k" * 600_000)),
        "more entries than kept": json.dumps(dict(good, choices=many)),
    }


@pytest.mark.parametrize("name", list(NOT_OURS))
def test_content_that_is_no_tuning_cache_is_ignored_and_left_as_it_is(fresh, tmp_path, name):
    path = tmp_path / "tune.json"
    path.write_bytes(NOT_OURS[name])
    fresh(path)
    messages = _calls_give_results(*_problem())
    assert any("ignoring the tuning cache" in m for m in messages), messages
    assert any("not writing the tuning cache" in m for m in messages), messages
    assert path.read_bytes() == NOT_OURS[name]  # not ours: never overwritten
    assert all(len(m) < 1000 for m in messages)  # the file's content is not echoed


def test_tampered_caches_are_ignored_then_rewritten(fresh, tmp_path):
    path = tmp_path / "tune.json"
    good = _valid_cache(path, fresh)
    for name, content in _tampered(good).items():
        path.write_text(content)
        fresh(path)
        messages = _calls_give_results(*_problem())
        assert any("ignoring the tuning cache" in m for m in messages), (name, messages)
        rewritten = json.loads(path.read_text())  # a batchmv cache: replaced by a valid one
        assert rewritten["machine"] == good["machine"] and rewritten["choices"].keys() == good["choices"].keys(), name
        fresh(path)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert any("cached choice" in n for n in batchmv.plan(*_problem(), backend="fastest").notes), name


def test_an_empty_file_is_an_empty_cache(fresh, tmp_path):
    path = tmp_path / "tune.json"
    path.write_text("")
    fresh(path)
    assert _calls_give_results(*_problem()) == []
    assert json.loads(path.read_text())["format"] == _tune_cache.FORMAT


@pytest.mark.parametrize("size", [_tune_cache.MAX_BYTES + 1, 1 << 34])
def test_a_huge_file_is_not_read(fresh, tmp_path, size):
    """Past MAX_BYTES (1 MiB) a file is refused by its size, unread (a 16 GiB sparse file
    takes no time), and left as it is."""
    path = tmp_path / "tune.json"
    good = _valid_cache(path, fresh)
    text = json.dumps(good)
    with open(path, "w") as fh:
        fh.write(text)
        fh.truncate(size)  # a valid cache, then zero bytes: still refused by its size
    fresh(path)
    with deadline(30):
        messages = _calls_give_results(*_problem())
    assert any(f"larger than {_tune_cache.MAX_BYTES} bytes" in m for m in messages), messages
    with open(path, "rb") as fh:
        head = fh.read(len(text))
    assert path.stat().st_size == size and head == text.encode()


# -- item 8: any kind of path -------------------------------------------------------------
def _unwritable_dir(tmp_path):
    """A directory where no file can be created, even by root, or None."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    candidates = [ro, "/sys", "/proc"]
    for where in candidates:
        try:
            fd = os.open(os.path.join(where, ".batchmv-probe"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return str(where)
        os.close(fd)
        os.unlink(os.path.join(where, ".batchmv-probe"))
    return None


def _special_path(kind, tmp_path):
    """(cache path, check that whatever was there is unchanged)."""
    path = tmp_path / "tune.json"
    if kind == "symlink to /dev/zero":
        path.symlink_to("/dev/zero")
        return path, lambda: os.path.islink(path) and stat.S_ISCHR(os.stat("/dev/zero").st_mode)
    if kind == "FIFO":
        os.mkfifo(path)
        return path, lambda: stat.S_ISFIFO(os.lstat(path).st_mode)
    if kind == "directory":
        path.mkdir()
        return path, lambda: path.is_dir() and not os.listdir(path)
    if kind == "file in a missing directory":
        path = tmp_path / "missing" / "tune.json"
        return path, lambda: not path.parent.exists()
    if kind == "symlink loop":
        path.symlink_to(path)
        return path, lambda: os.readlink(path) == str(path)
    if kind == "symlinked lock file":
        (tmp_path / "elsewhere").write_text("keep")
        (tmp_path / "tune.json.lock").symlink_to(tmp_path / "elsewhere")
        return path, lambda: (tmp_path / "elsewhere").read_text() == "keep" and not path.exists()
    if kind == "FIFO as lock file":
        os.mkfifo(tmp_path / "tune.json.lock")
        return path, lambda: stat.S_ISFIFO(os.lstat(tmp_path / "tune.json.lock").st_mode) and not path.exists()
    if kind == "file in a read-only directory":
        where = _unwritable_dir(tmp_path)
        if where is None:
            pytest.skip("every directory is writable here")
        path = os.path.join(where, "batchmv-tune.json")
        return path, lambda: not os.path.exists(path)
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "symlink to /dev/zero", "FIFO", "directory", "file in a missing directory", "symlink loop",
        "symlinked lock file", "FIFO as lock file", "file in a read-only directory",
    ],
)  # fmt: skip
def test_any_kind_of_path_gives_a_warning_never_an_error_or_a_hang(fresh, tmp_path, kind):
    path, unchanged = _special_path(kind, tmp_path)
    before = set(os.listdir(tmp_path))
    fresh(path)
    with deadline(60):
        messages = _calls_give_results(*_problem())
    assert any("tuning cache" in m for m in messages), messages
    assert unchanged()
    left = set(os.listdir(tmp_path)) - before - {"ro"}
    assert not any(name.endswith(".tmp") for name in left), left  # no temporary file left
    assert left <= {"tune.json.lock"}, left


def test_a_cache_in_a_read_only_directory_is_read_but_not_written(fresh, tmp_path):
    path = tmp_path / "tune.json"
    good = _valid_cache(path, fresh)
    tmp_path.chmod(0o555)
    try:
        if os.access(tmp_path, os.W_OK):
            pytest.skip("a read-only directory is writable for this user (root)")
        fresh(path)
        a, x = _problem(batch=5000)  # another kind: measured, then not written
        messages = _calls_give_results(a, x)
        assert any("not writing the tuning cache" in m for m in messages), messages
        assert json.loads(path.read_text()) == good
    finally:
        tmp_path.chmod(0o755)


# -- item 9: concurrent writers, symlinks --------------------------------------------------
_WRITER = """
import os, sys, time
import numpy as np
import batchmv
from batchmv import _timing
_timing.rounds_in_use = lambda run, work, budget_s=0.05: 1.0
_timing.median_seconds = lambda run, **_: 0.25
worker, where = int(sys.argv[1]), sys.argv[2]
a = np.ones((8, 8), np.float32)
xs = [np.ones((2 ** (4 * worker + k + 1), 8), np.float32) for k in range(4)]
batchmv.plan(a, xs[0], backend="fastest")  # libraries imported, cache file read
open(os.path.join(where, f"ready-{worker}"), "w").close()
while not os.path.exists(os.path.join(where, "go")):
    time.sleep(0.001)
for x in xs:  # four kinds: each is measured, then written
    batchmv.matvec(a, x, backend="fastest")
"""


@pytest.mark.slow
def test_concurrent_writers_keep_every_choice(tmp_path):
    """4 processes tuning 4 kinds each, started together: the file ends with all 16 kinds."""
    import time

    path = tmp_path / "tune.json"
    env = support.child_env(BATCHMV_TUNE_CACHE=str(path))
    procs = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(_WRITER), str(i), str(tmp_path)], env=env, stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    try:
        end = time.monotonic() + 240
        while len(list(tmp_path.glob("ready-*"))) < 4 and time.monotonic() < end and all(p.poll() is None for p in procs):
            time.sleep(0.01)
        (tmp_path / "go").touch()
        errors = [p.communicate(timeout=240)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0] * 4, errors
    choices = json.loads(path.read_text())["choices"]
    buckets = sorted(int(k.rsplit(", ", 1)[1].rstrip(")")) for k in choices)
    assert buckets == list(range(1, 17)), sorted(choices)


def test_a_symlinked_cache_stays_a_symlink(fresh, tmp_path):
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    link = tmp_path / "tune.json"
    link.symlink_to(os.path.join("real", "tune.json"))  # relative, and dangling at first
    fresh(link)
    assert _calls_give_results(*_problem()) == []
    assert link.is_symlink() and (real_dir / "tune.json").is_file()
    first = json.loads((real_dir / "tune.json").read_text())["choices"]
    fresh(link)
    assert _calls_give_results(*_problem(batch=5000)) == []  # another kind, merged through the link
    assert link.is_symlink()
    both = json.loads((real_dir / "tune.json").read_text())["choices"]
    assert len(both) == 2 and first.items() <= both.items()
    assert sorted(os.listdir(real_dir)) == ["tune.json", "tune.json.lock"]  # lock beside the target


def test_a_write_keeps_what_others_wrote_and_the_file_mode(fresh, tmp_path):
    path = tmp_path / "tune.json"
    good = _valid_cache(path, fresh)
    key, entry = next(iter(good["choices"].items()))
    theirs = {f"{key}+another process": entry}
    _tune_cache.save(str(path), good["machine"], ENGINES, theirs)
    path.chmod(0o600)
    fresh(path)
    _calls_give_results(*_problem(batch=5000))
    choices = json.loads(path.read_text())["choices"]
    assert len(choices) == 3 and theirs.items() <= choices.items()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_held_lock_delays_then_skips_the_write(fresh, tmp_path, monkeypatch):
    path = tmp_path / "tune.json"
    good = _valid_cache(path, fresh)
    monkeypatch.setattr(_tune_cache, "LOCK_WAIT_S", 0.2)
    with open(f"{path}.lock", "a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another process writing, for too long
        fresh(path)
        with deadline(30):
            messages = _calls_give_results(*_problem(batch=5000))
    assert any("stayed held" in m for m in messages), messages
    assert json.loads(path.read_text()) == good


def test_the_file_keeps_the_newest_entries(fresh, tmp_path, monkeypatch):
    monkeypatch.setattr(_tune_cache, "MAX_ENTRIES", 2)
    path = tmp_path / "tune.json"
    for batch in (10, 100, 1000):
        fresh(path)
        _calls_give_results(*_problem(batch))
    keys = list(json.loads(path.read_text())["choices"])
    assert len(keys) == 2 and not any("2^(6, 6, 4)" in k for k in keys), keys  # batch 10 dropped


def test_the_file_stays_readable_under_the_size_cap(fresh, tmp_path, monkeypatch):
    path = tmp_path / "tune.json"
    good = _valid_cache(path, fresh)
    monkeypatch.setattr(_tune_cache, "MAX_BYTES", len(json.dumps(good, indent=1)) + 100)  # one entry fits
    for batch in (10, 100, 1000):
        fresh(path)
        assert _calls_give_results(*_problem(batch)) == []
    assert path.stat().st_size <= _tune_cache.MAX_BYTES
    keys = list(json.loads(path.read_text())["choices"])
    assert len(keys) == 1 and "2^(6, 6, 10)" in keys[0], keys  # the newest kept
