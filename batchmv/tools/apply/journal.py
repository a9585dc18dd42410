"""``OUT.journal``: JSON lines, each fsynced.  The first holds the fingerprint of the inputs
and options; then one line per finished block, written only after the block's data is on
disk, with the digests of its input and its result (:mod:`.content`).

Reading is strict, since a journal is a file anyone can edit: lines are read one at a time
and bounded, NaN and infinities are refused, and a block line must name a block of this
job at its place with two digests; anything else makes the journal damaged (BadInput).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import BadInput
from .files import create_new, open_checked

if TYPE_CHECKING:
    from .job import Job

JOURNAL_FORMAT = "batchmv-apply-journal/2"
_OURS = "batchmv-apply-journal/"  #: any version of apply's journal
#: how a journal's first line starts (keys sorted): a file holding only a prefix of this is a
#: journal whose run was killed while writing it
_START = b'{"fingerprint":'
MAX_LINE = 1 << 20  #: bytes; a fingerprint line is a few KB, a block line about 200 bytes
_DIGEST = re.compile(r"[0-9a-f]{64}")


class Journal:
    """The journal being written: create it (a fresh run) or continue it (``--resume``)."""

    def __init__(self, path: str):
        self.path = path
        self.fd = -1
        self.stat: os.stat_result | None = None  #: of the file written: only that one is ever removed

    def create(self, fingerprint: dict) -> None:
        self.fd = create_new(self.path, os.O_WRONLY | os.O_APPEND)
        self.stat = os.fstat(self.fd)
        self._append({"journal": JOURNAL_FORMAT, "fingerprint": fingerprint})

    def reopen(self, length: int, expected: os.stat_result) -> None:
        """Continue after its last complete line (a torn one is cut off)."""
        self.fd = open_checked(self.path, os.O_WRONLY | os.O_APPEND, expected)
        self.stat = expected
        os.ftruncate(self.fd, length)
        os.fsync(self.fd)

    def block_done(self, k: int, loc: tuple[int, int, int, int], digests: tuple[str, str]) -> None:
        self._append({"block": k, "outer": list(loc[:2]), "inner": list(loc[2:]), "x": digests[0], "y": digests[1]})

    def _append(self, record: dict) -> None:
        data = memoryview((json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode())
        while data:
            data = data[os.write(self.fd, data) :]
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class Recorded:
    """What an existing journal says."""

    version: str | None  #: its format; None: a journal killed while its first line was written
    fingerprint: dict | None = None
    done: dict[int, tuple[str, str]] = field(default_factory=dict)  #: block: (VECTORS, OUT) digests
    length: int = 0  #: bytes of complete lines
    damage: str = ""  #: why its block lines cannot be used ("" if they can)


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not a number a journal holds")


def _loads(raw: bytes) -> object:
    try:
        return json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError, UnicodeDecodeError):  # (JSONDecodeError is a ValueError)
        return None


def read_journal(path: str, expected: os.stat_result, job: Job) -> Recorded | None:
    """What the journal ``path`` (as ``lstat`` saw it) records, or None if it is not a batchmv
    apply journal at all (then it is not apply's to touch)."""
    fd = open_checked(path, os.O_RDONLY, expected)
    with os.fdopen(fd, "rb") as f:
        first = f.readline(MAX_LINE)
        if not first.endswith(b"\n"):  # no complete line: killed while writing the first one?
            torn = first == _START[: len(first)] or (first.startswith(_START) and len(first) < MAX_LINE)
            return Recorded(None) if torn else None
        head = _loads(first)
        if not isinstance(head, dict) or not isinstance(head.get("journal"), str) or not head["journal"].startswith(_OURS):
            return None
        recorded = Recorded(head["journal"], head.get("fingerprint"), length=len(first))
        if recorded.version != JOURNAL_FORMAT or not isinstance(recorded.fingerprint, dict):
            return recorded
        number = 1
        while line := f.readline(MAX_LINE):
            number += 1
            if not line.endswith(b"\n"):
                if len(line) >= MAX_LINE:
                    recorded.damage = f"line {number} is too long"
                break  # a torn last line: the run was killed while appending it
            block = _block(_loads(line), job)
            if block is None:
                recorded.damage = f"line {number} is not a finished block of this job"
                break
            recorded.done[block[0]] = block[1]
            recorded.length += len(line)
    return recorded


def _block(record: object, job: Job) -> tuple[int, tuple[str, str]] | None:
    """(block, digests) of a valid block line, else None."""
    if not isinstance(record, dict) or set(record) != {"block", "outer", "inner", "x", "y"}:
        return None
    k = record["block"]
    if type(k) is not int or not 0 <= k < job.blocks:
        return None
    loc = job.location(k)
    if record["outer"] != list(loc[:2]) or record["inner"] != list(loc[2:]):
        return None
    x, y = record["x"], record["y"]
    if not (isinstance(x, str) and isinstance(y, str) and _DIGEST.fullmatch(x) and _DIGEST.fullmatch(y)):
        return None
    return k, (x, y)
