"""Loss-free output: ``OUT.partial``, its journal, ``--resume``, and the rename onto OUT.

The result is built in ``OUT.partial`` next to OUT, with a journal ``OUT.journal`` (JSON
lines, fsynced) that starts with a fingerprint of the inputs and options and gets one line
per finished block, written only after the block's data is on disk.  ``OUT.partial`` is
renamed onto OUT (``os.replace``) only when complete, so a run killed at any moment leaves
OUT untouched or absent; ``--resume`` continues from the journal and produces the same
bytes as an uninterrupted run (same blocks, same kernels).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .blockio import write_exact
from .errors import BadInput, say

if TYPE_CHECKING:
    from .job import Job

JOURNAL_FORMAT = "batchmv-apply-journal/1"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """``OUT.journal``: the fingerprint, then one JSON line per finished block, each fsynced."""

    def __init__(self, path: str):
        self.path = path
        self.fd = -1

    def create(self, fingerprint: dict) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        self._append({"journal": JOURNAL_FORMAT, "fingerprint": fingerprint})

    def reopen(self, length: int) -> None:
        """Continue the journal after its last complete line (a torn one is cut off)."""
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        os.ftruncate(self.fd, length)
        os.fsync(self.fd)

    def block_done(self, k: int, loc: tuple[int, int, int, int]) -> None:
        self._append({"block": k, "outer": loc[:2], "inner": loc[2:]})

    def _append(self, record: dict) -> None:
        line = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
        _write_exact_append(self.fd, line)
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _write_exact_append(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_journal(path: str) -> tuple[dict | None, set[int], int]:
    """(fingerprint, finished blocks, length of the complete lines).  A torn last line (a run
    killed while appending) is ignored; a journal without a complete first line is treated
    as absent (fingerprint None)."""
    with open(path, "rb") as f:
        data = f.read()
    complete = data[: data.rfind(b"\n") + 1]  # everything up to the last newline
    records = []
    for number, raw in enumerate(complete.splitlines(), 1):
        try:
            records.append(json.loads(raw))
        except ValueError:
            raise BadInput(f"journal {path} is damaged (line {number}); use --force to start over") from None
    if not records or not isinstance(records[0], dict) or records[0].get("journal") != JOURNAL_FORMAT:
        return None, set(), 0
    try:
        done = {int(r["block"]) for r in records[1:]}
    except (KeyError, TypeError, ValueError):
        raise BadInput(f"journal {path} is damaged; use --force to start over") from None
    return records[0].get("fingerprint"), done, len(complete)


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new)):
            found += _differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
        return found
    return [] if old == new else [f"{prefix} was {old!r}, now {new!r}"]


@dataclass
class Output:
    partial: str
    journal: Journal
    fd: int
    done: set[int]


def open_output(job: Job, args: argparse.Namespace) -> Output:
    """Create ``OUT.partial`` and its journal, or reopen them with --resume.  An unfinished
    run is never discarded without --force."""
    partial, journal_path = job.out + ".partial", job.out + ".journal"
    journal = Journal(journal_path)
    if os.path.exists(journal_path):
        try:
            fingerprint, done, length = read_journal(journal_path)
        except BadInput:
            if not args.force:
                raise
            fingerprint, done, length = None, set(), 0
        if fingerprint is not None and args.resume:
            resumed, problem = _reopen(job, journal, partial, fingerprint, done, length)
            if resumed is not None:
                return resumed
            if not args.force:
                raise BadInput(f"{problem}; rerun with the same inputs and options, or use --force to start over")
            say(f"note: {problem}; starting over (--force)")
        elif fingerprint is not None and not args.force:
            raise BadInput(
                f"an unfinished run of this output exists ({journal_path}); add --resume to continue it "
                "or --force to start over"
            )
    # a fresh start: the partial file first (header fsynced), then the journal
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_exact(fd, job.header, 0)
        os.fsync(fd)
        journal.create(job.fingerprint)
        _fsync_dir(os.path.dirname(job.out))
    except BaseException:
        os.close(fd)
        journal.close()
        raise
    return Output(partial, journal, fd, set())


def _reopen(job: Job, journal: Journal, partial: str, fingerprint: dict, done: set[int], length: int
            ) -> tuple[Output | None, str]:  # fmt: skip
    """The unfinished run, reopened, or None and why it cannot be continued."""
    diff = _differences(fingerprint, job.fingerprint)
    if diff:
        return None, f"journal {journal.path} does not match its inputs and options ({'; '.join(diff[:3])})"
    try:
        fd = os.open(partial, os.O_RDWR)
    except FileNotFoundError:
        return None, f"journal {journal.path} exists but {partial} is gone"
    with os.fdopen(os.dup(fd), "rb") as f:
        head = f.read(len(job.header))
    needed = max((_block_end(job, k) for k in done), default=len(job.header))
    if head != job.header or os.fstat(fd).st_size < needed:
        os.close(fd)
        return None, f"{partial} does not hold what journal {journal.path} says"
    journal.reopen(length)
    return Output(partial, journal, fd, done & set(range(job.blocks))), ""


def _block_end(job: Job, k: int) -> int:
    """The byte after block k's last byte in OUT (its data is at or before this)."""
    o0, o1, i0, i1 = job.location(k)
    _, m, inner = job.y_shape3
    last = ((o1 - 1) * m + (m - 1)) * inner + i1 if m else 0
    return len(job.header) + last * job.result_dtype.itemsize


def finish(job: Job, output: Output) -> None:
    """All blocks are on disk: OUT.partial becomes OUT atomically, then the journal goes."""
    os.fsync(output.fd)
    os.close(output.fd)
    output.fd = -1
    os.replace(output.partial, job.out)
    _fsync_dir(os.path.dirname(job.out))
    output.journal.close()
    os.unlink(output.journal.path)
    _fsync_dir(os.path.dirname(job.out))
