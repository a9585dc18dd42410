"""The tuning cache on disk (``BATCHMV_TUNE_CACHE``): the choices of ``"fastest"`` kept
between processes.

The file is JSON: ``{"format", "machine", "choices"}``, each choice ``{"engine", "times"}``
under its kind of call.  Whatever is at the path, reading it never raises, never blocks
and reads at most :data:`MAX_BYTES`: a file that is not a regular file, too large, not
UTF-8 JSON, nested too deeply, of another format or machine, or with any entry that fails
:func:`entry_problem` is ignored as a whole with a :class:`RuntimeWarning`.  A file that
cannot be used is never trusted in part: one bad entry says the rest may be bad too.

Writes merge: under an exclusive lock on the side file ``<file>.lock``, the file is read
again, this process's choices are added to what other processes wrote, and the result
replaces the file atomically (a temporary file in the same directory, then
``os.replace``).  The lock file stays: removing it would let a waiting writer lock a file
no longer at that name while a third locks a new one.  A symlinked cache is written
through: the lock and the replacement are at the link's target, and the link stays a
link.  Only a missing or empty file, or a batchmv tuning cache, is ever replaced; anything
else at the path is left as it is (with a warning), and so is the path when its directory
is missing or read-only.
"""

from __future__ import annotations

import json
import math
import os
import stat
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: writes still merge and replace atomically, unlocked
    fcntl = None  # type: ignore[assignment]

FORMAT = "batchmv-tune-1"
_FORMAT_FAMILY = "batchmv-tune-"

#: Bytes of a cache file read at most; a larger file is not one batchmv wrote.
MAX_BYTES = 1 << 20
#: Choices kept in the file at most (the most recently written ones), and fewer where the
#: file would exceed :data:`MAX_BYTES`, which would make it unreadable.
MAX_ENTRIES = 1024
#: Characters of a kind of call at most (well above the length of the keys batchmv writes).
MAX_KEY = 512
#: Seconds a writer waits for another process's lock before leaving the file as it is.
LOCK_WAIT_S = 10.0


class Unusable(Exception):
    """A cache file that cannot be used; ``replaceable``: whether it is a batchmv tuning
    cache (or nothing), which a write may replace."""

    def __init__(self, why: str, replaceable: bool) -> None:
        super().__init__(why)
        self.replaceable = replaceable


def entry_problem(key: Any, entry: Any, engines: frozenset[str]) -> str | None:
    """Why ``key: entry`` is not a valid choice among ``engines``, or None.

    >>> entry_problem("numpy|cpu|float32", {"engine": "numpy", "times": {"numpy": 1e-5}}, frozenset({"numpy"}))
    >>> entry_problem("k", {"engine": "numpy", "times": {"numpy": float("nan")}}, frozenset({"numpy"}))
    'a time that is not a finite, non-negative float'
    """
    if type(key) is not str or not 0 < len(key) <= MAX_KEY:
        return f"a key that is not a kind of call (a str of at most {MAX_KEY} characters)"
    if type(entry) is not dict or set(entry) != {"engine", "times"}:
        return "an entry that is not exactly {engine, times}"
    engine, times = entry["engine"], entry["times"]
    if type(engine) is not str or engine not in engines:
        return "an engine that is not available here"
    if type(times) is not dict or engine not in times:
        return "times that do not include the chosen engine"
    if not all(type(name) is str and name in engines for name in times):
        return "times of an engine that is not available here"
    if not all(type(t) is float and math.isfinite(t) and t >= 0 for t in times.values()):
        return "a time that is not a finite, non-negative float"
    return None


def _read_text(path: str) -> str | None:
    """The file's text, or None when there is no file.  Opened without blocking (a FIFO
    or a device never waits for a writer) and read only when it is a regular file of at
    most :data:`MAX_BYTES`."""
    try:
        fd = os.open(path, os.O_RDONLY | _flags("O_NONBLOCK", "O_NOCTTY", "O_CLOEXEC"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:  # ValueError: a NUL in the path
        raise Unusable(f"cannot open it: {err}", False) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Unusable("not a regular file", False)
        if info.st_size > MAX_BYTES:
            raise Unusable(f"larger than {MAX_BYTES} bytes", False)
        chunks, size = [], 0
        while size <= MAX_BYTES:  # the file may grow while it is read
            chunk = os.read(fd, MAX_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as err:
        raise Unusable(f"cannot read it: {err}", False) from None
    finally:
        os.close(fd)
    if size > MAX_BYTES:
        raise Unusable(f"larger than {MAX_BYTES} bytes", False)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise Unusable("not UTF-8 text", False) from None


def _parse(text: str, machine: dict[str, Any], engines: frozenset[str]) -> dict[str, dict[str, Any]]:
    """The choices of a cache file's text, checked entry by entry; Unusable otherwise."""
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except (ValueError, RecursionError, MemoryError) as err:  # RecursionError: nested too deeply
        raise Unusable(f"not JSON: {type(err).__name__}", False) from None
    fmt = data.get("format") if type(data) is dict else None
    if type(fmt) is not str or not fmt.startswith(_FORMAT_FAMILY):
        raise Unusable("not a batchmv tuning cache", False)
    if fmt != FORMAT:
        raise Unusable(f"format {fmt[:40]!r}, not {FORMAT!r}", True)
    if set(data) != {"format", "machine", "choices"}:
        raise Unusable("keys other than format, machine and choices", True)
    try:
        same_machine = data["machine"] == machine
    except RecursionError:
        same_machine = False
    if not same_machine:
        raise Unusable("written on another machine or with other library versions", True)
    choices = data["choices"]
    if type(choices) is not dict or len(choices) > MAX_ENTRIES:
        raise Unusable(f"choices that are not a mapping of at most {MAX_ENTRIES} entries", True)
    for key, entry in choices.items():
        problem = entry_problem(key, entry, engines)
        if problem:
            raise Unusable(f"an entry with {problem}", True)
    return choices


def load(path: str, machine: dict[str, Any], engines: frozenset[str]) -> dict[str, dict[str, Any]]:
    """The choices in the cache file at ``path``: empty when there is none, and, with a
    RuntimeWarning, when it cannot be used.  Never raises."""
    try:
        return _parse(_read_text(path) or "", machine, engines)
    except Unusable as err:
        after = "it will be rewritten" if err.replaceable else "it is left as it is"
        _warn(f"ignoring the tuning cache {path!r} ({err}); {after}")
    except (OSError, ValueError, RecursionError, MemoryError) as err:
        _warn(f"ignoring the tuning cache {path!r} ({type(err).__name__}: {err})")
    return {}


def save(path: str, machine: dict[str, Any], engines: frozenset[str], choices: dict[str, Any]) -> None:
    """Merge ``choices`` into the cache file at ``path`` (they win over the file's own
    choices of the same kinds); with a RuntimeWarning, leave it as it is when it cannot be
    written.  Never raises."""
    try:
        target = os.path.realpath(path)  # a symlinked cache is written at its target
        _check_writable(target)
        with _locked(f"{target}.lock"):
            try:
                merged = dict(_parse(_read_text(target) or "", machine, engines))
            except Unusable as err:
                if not err.replaceable:
                    raise
                merged = {}
            for key, entry in choices.items():  # this process's choices, as the newest
                if entry_problem(key, entry, engines) is None:
                    merged.pop(key, None)
                    merged[key] = entry
            kept = list(merged.items())[-MAX_ENTRIES:]  # the file's order is oldest first
            while True:
                text = json.dumps({"format": FORMAT, "machine": machine, "choices": dict(kept)}, indent=1)
                if len(text.encode()) <= MAX_BYTES or not kept:
                    break
                kept = kept[len(kept) // 4 + 1 :]  # the oldest quarter goes
            _replace(target, text)
    except Unusable as err:
        _warn(f"not writing the tuning cache {path!r} ({err}); choices are kept in this process only")
    except (OSError, ValueError, RecursionError, MemoryError) as err:
        _warn(f"not writing the tuning cache {path!r} ({type(err).__name__}: {err}); choices are kept in this process only")


def _check_writable(target: str) -> None:
    """Unusable unless ``target`` is missing or a regular file (nothing is created next to a
    device, a FIFO or a directory)."""
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(info.st_mode):
        raise Unusable("not a regular file", False)


@contextmanager
def _locked(lock_path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if missing, never followed if a
    symlink, never a special file); Unusable after :data:`LOCK_WAIT_S` seconds of waiting."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | _flags("O_NONBLOCK", "O_NOFOLLOW", "O_CLOEXEC"), 0o666)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Unusable(f"its lock {lock_path!r} is not a regular file", False)
        deadline = time.monotonic() + LOCK_WAIT_S
        while fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Unusable(f"its lock {lock_path!r} stayed held for {LOCK_WAIT_S:g} s", False) from None
                time.sleep(0.005)
        yield
    finally:
        os.close(fd)  # releases the lock


def _replace(target: str, text: str) -> None:
    """Write ``text`` to a new file beside ``target`` and rename it onto ``target``."""
    tmp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _flags("O_NOFOLLOW", "O_CLOEXEC"), 0o666)
    try:
        try:
            with os.fdopen(fd, "w", encoding="utf-8", closefd=False) as fh:
                fh.write(text)
            try:
                os.fchmod(fd, stat.S_IMODE(os.stat(target).st_mode))  # keep the file's permissions
            except (FileNotFoundError, AttributeError):  # a new file; no fchmod (Windows)
                pass
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _flags(*names: str) -> int:
    """The ``os.O_*`` flags of ``names`` that this platform has."""
    flags = 0
    for name in names:
        flags |= getattr(os, name, 0)
    return flags


def _warn(message: str) -> None:
    """A RuntimeWarning attributed to the first caller outside batchmv."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, RuntimeWarning, stacklevel=level)
