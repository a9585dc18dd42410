"""Opening files so that nothing blocks and nothing foreign is written, and the OUT lock.

Inputs: ``stat`` first, so that a FIFO, a device, a directory or a socket is refused before
any ``open`` (opening a FIFO blocks until a writer comes; opening a device can act on it);
then ``open`` with ``O_NONBLOCK`` and check that the open file is the regular file ``stat``
saw (the path may have been replaced in between).  An input may be a symlink: it is read.

Side files (``OUT.partial``, ``OUT.journal``, ``OUT.lock``): never followed through a symlink
(``lstat``, ``O_NOFOLLOW``), never anything but a regular file, never the same file (device
and inode) as an input, created only with ``O_EXCL`` (never truncated over whatever is
there), and removed only after checking the name still holds the file apply checked.
"""

from __future__ import annotations

import fcntl
import os
import stat
from typing import Any, Iterable

from .errors import BadInput

_NOBLOCK = os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
_KINDS = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"),
)  # fmt: skip


def kind(mode: int) -> str:
    """What a file of this mode is, in words.

    >>> import stat
    >>> kind(stat.S_IFIFO | 0o644), kind(stat.S_IFREG)
    ('a FIFO', 'a regular file')
    """
    return next((name for test, name in _KINDS if test(mode)), "a regular file" if stat.S_ISREG(mode) else "a special file")


def identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def open_input(path: str, where: str) -> tuple[int, os.stat_result]:
    """(fd, fstat) of the regular file ``path``, opened read-only; BadInput otherwise."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadInput(f"{where}: no such file") from None
    except OSError as err:
        raise BadInput(f"{where}: cannot read it: {err.strerror or err}") from None
    if not stat.S_ISREG(st.st_mode):
        raise BadInput(f"{where}: cannot read it: it is {kind(st.st_mode)}, not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | _NOBLOCK)
    except OSError as err:
        raise BadInput(f"{where}: cannot read it: {err.strerror or err}") from None
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode) or identity(opened) != identity(st):
        os.close(fd)
        raise BadInput(f"{where}: it was replaced while apply opened it; run again")
    return fd, opened


def check_side(path: str, what: str, inputs: Iterable[Any]) -> os.stat_result | None:
    """The ``lstat`` of a file apply may write or remove (OUT or a side file), or None if
    there is none; BadInput if it is a symlink, not a regular file, or one of ``inputs``
    (objects with ``label``, ``path`` and ``device_inode``)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise BadInput(f"{what} {path}: cannot check it: {err.strerror or err}") from None
    if stat.S_ISLNK(st.st_mode):
        raise BadInput(f"{what} {path} is a symbolic link; apply never writes or removes through one: remove it or choose another OUT")
    if not stat.S_ISREG(st.st_mode):
        raise BadInput(f"{what} {path} is {kind(st.st_mode)}; apply writes only regular files: remove it or choose another OUT")
    for f in inputs:
        if identity(st) == f.device_inode:
            raise BadInput(f"{what} {path} is the same file as {f.label} {f.path}; apply would destroy its input: choose another OUT")
    return st


def open_checked(path: str, flags: int, expected: os.stat_result) -> int:
    """Open the side file ``path`` that :func:`check_side` saw as ``expected``, without
    following a symlink or blocking; BadInput if it is another file now."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | _NOBLOCK)
    except OSError as err:
        raise BadInput(f"{path}: cannot open it: {err.strerror or err}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or identity(st) != identity(expected):
        os.close(fd)
        raise BadInput(f"{path} was replaced while apply checked it; run again")
    return fd


def create_new(path: str, flags: int) -> int:
    """Create the side file ``path``; it must not exist (``O_EXCL``: nothing is truncated)."""
    return os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _NOBLOCK, 0o644)


def remove_checked(path: str, expected: os.stat_result | None) -> None:
    """Remove the side file ``path`` if it is still the file apply checked as ``expected``.
    (Another batchmv apply cannot interfere: the OUT lock is held.)"""
    if expected is None:
        return
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(now.st_mode) and identity(now) == identity(expected):
        os.unlink(path)


class OutLock:
    """``OUT.lock``: an empty file, ``flock``-ed exclusively for the whole run, so that one
    OUT has one run at a time.  A second run is refused at once (``LOCK_NB``).  The file is
    removed when the run ends, still locked; a run that locked a file that was removed
    meanwhile (its holder just finished) takes the new one instead.  A lock file left by a
    killed run is empty and unlocked: it is taken over."""

    def __init__(self, out: str, inputs: Iterable[Any]):
        self.out, self.path, self.inputs = out, out + ".lock", tuple(inputs)
        self.fd, self.stat = -1, None

    def __enter__(self) -> "OutLock":
        for _ in range(5):  # a new attempt only when a holder finished and removed its file meanwhile
            seen = check_side(self.path, "lock file", self.inputs)
            if seen is not None and seen.st_size:
                raise BadInput(f"{self.path} exists and is not apply's lock file (it is not empty): move it away")
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | _NOBLOCK, 0o644)
            except OSError as err:
                raise BadInput(f"cannot create the lock file {self.path}: {err.strerror or err}") from None
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size:
                os.close(fd)
                raise BadInput(f"{self.path} changed while apply checked it; run again")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise BadInput(f"another batchmv apply run is writing OUT {self.out} (it holds {self.path}); wait for it to end") from None
            try:
                same = identity(os.lstat(self.path)) == identity(st)
            except FileNotFoundError:
                same = False
            if same:
                self.fd, self.stat = fd, st
                return self
            os.close(fd)
        raise BadInput(f"cannot lock {self.path}: other runs keep replacing it")

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            remove_checked(self.path, self.stat)  # while locked: nobody else can be using it
            os.close(self.fd)
            self.fd = -1
