"""Loss-free output: ``OUT.partial``, its journal, ``--resume``, and the rename onto OUT.

The result is built in ``OUT.partial`` next to OUT, with the journal ``OUT.journal``
(:mod:`.journal`).  ``OUT.partial`` is renamed onto OUT (``os.replace``) only when complete,
so a run killed at any moment leaves OUT untouched or absent; ``--resume`` continues from
the journal, after checking every finished block against the files (:mod:`.content`), and
produces the same bytes as an uninterrupted run (same blocks, same kernels).

All of this runs under the OUT lock (:class:`.files.OutLock`).  The journal is created
before ``OUT.partial`` and removed after it, so an ``OUT.partial`` without a journal is not
apply's, and is never touched; nor is a file called ``OUT.journal`` that is not a journal.
``--force`` discards only a run that the journal shows to be apply's.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .blockio import write_exact
from .content import changed_block
from .errors import BadInput, RunFailed, say
from .files import check_side, create_new, open_checked, remove_checked
from .journal import JOURNAL_FORMAT, Journal, Recorded, read_journal

if TYPE_CHECKING:
    from .job import Job


@dataclass
class Output:
    partial: str
    journal: Journal
    fd: int
    done: set[int]
    stat: os.stat_result  #: of OUT.partial: the Dask workers check they write into this file


def check_out(out: str, shown: str, inputs: tuple, force: bool) -> None:
    """OUT may be replaced: absent, or (with --force) a regular file that is no input."""
    if check_side(out, "OUT", inputs) is not None and not force:
        raise BadInput(f"OUT {shown} exists; use --force to overwrite it")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_output(job: Job, args: argparse.Namespace, x_full: Any, y_full: Any) -> Output:
    """Create ``OUT.partial`` and its journal, or reopen them with --resume (the block
    buffers serve to check the finished blocks).  An unfinished run is never discarded
    without --force."""
    inputs = (job.matrix, job.vectors)
    check_out(job.out, args.output, inputs, args.force)  # again, now that the lock is held
    partial, journal_path = job.out + ".partial", job.out + ".journal"
    p_st = check_side(partial, "side file", inputs)
    j_st = check_side(journal_path, "side file", inputs)
    if j_st is None:
        if p_st is not None:
            raise BadInput(f"{partial} exists without a journal, so it is not an unfinished run of batchmv apply: move it away")
        return _fresh(job)
    recorded = read_journal(journal_path, j_st, job)
    if recorded is None:
        raise BadInput(f"{journal_path} exists and is not a batchmv apply journal: move it away")
    if recorded.version is not None:  # (None: killed while starting, nothing finished)
        if args.resume:
            resumed, problem = _reopen(job, recorded, j_st, p_st, x_full, y_full)
            if resumed is not None:
                return resumed
            if not args.force:
                raise BadInput(f"{problem}; rerun with the same inputs and options, or use --force to start over")
            say(f"note: {problem}; starting over (--force)")
        elif not args.force:
            raise BadInput(
                f"an unfinished run of this output exists ({journal_path}); add --resume to continue it "
                "or --force to start over"
            )
    remove_checked(partial, p_st)  # the partial file first: a partial file never outlives its journal
    remove_checked(journal_path, j_st)
    return _fresh(job)


def _fresh(job: Job) -> Output:
    """A new journal, then a new OUT.partial holding OUT's header (both fsynced)."""
    journal = Journal(job.out + ".journal")
    try:
        journal.create(job.fingerprint)
        output = _new_partial(job, journal)
        _fsync_dir(os.path.dirname(job.out))
    except BaseException:  # (a full disk, say): nothing done, nothing kept
        journal.close()
        remove_checked(journal.path, journal.stat)
        raise
    return output


def _new_partial(job: Job, journal: Journal) -> Output:
    partial = job.out + ".partial"
    fd = create_new(partial, os.O_RDWR)
    try:
        st = os.fstat(fd)
        write_exact(fd, job.header, 0)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        remove_checked(partial, st)
        raise
    return Output(partial, journal, fd, set(), st)


def _reopen(job: Job, recorded: Recorded, j_st: os.stat_result, p_st: os.stat_result | None, x_full: Any, y_full: Any
            ) -> tuple[Output | None, str]:  # fmt: skip
    """The unfinished run, reopened, or None and why it cannot be continued."""
    journal = Journal(job.out + ".journal")
    if recorded.version != JOURNAL_FORMAT:
        return None, f"journal {journal.path} was written by another version of batchmv apply ({recorded.version})"
    diff = _differences(recorded.fingerprint, job.fingerprint)
    if diff:
        return None, f"journal {journal.path} does not match its inputs and options ({'; '.join(diff[:3])})"
    if recorded.damage:  # (the same fingerprint: the same blocks, so its block lines can be judged)
        return None, f"journal {journal.path} is damaged ({recorded.damage})"
    partial = job.out + ".partial"
    if p_st is None:
        if recorded.done:
            return None, f"journal {journal.path} exists but {partial} is gone"
        journal.reopen(recorded.length, j_st)  # killed before OUT.partial was made: nothing to check
        return _new_partial(job, journal), ""
    fd = open_checked(partial, os.O_RDWR, p_st)
    try:
        needed = max((_block_end(job, k) for k in recorded.done), default=len(job.header))
        problem = None
        if os.pread(fd, len(job.header), 0) != job.header or os.fstat(fd).st_size < needed:
            problem = f"{partial} does not hold what journal {journal.path} says"
        else:
            try:
                problem = changed_block(job, fd, recorded.done, x_full, y_full)
            except RunFailed as err:  # a file shorter than it was
                problem = str(err)
        if problem is None:
            journal.reopen(recorded.length, j_st)
            return Output(partial, journal, fd, set(recorded.done), p_st), ""
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None, problem


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new)):
            found += _differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
        return found
    return [] if old == new else [f"{prefix} was {_shown(old)}, now {_shown(new)}"]


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def _block_end(job: Job, k: int) -> int:
    """The byte after block k's last byte in OUT (its data is at or before this)."""
    o0, o1, i0, i1 = job.location(k)
    _, m, inner = job.y_shape3
    last = ((o1 - 1) * m + (m - 1)) * inner + i1 if m else 0
    return len(job.header) + last * job.result_dtype.itemsize


def finish(job: Job, output: Output, force: bool) -> None:
    """All blocks are on disk: OUT.partial becomes OUT atomically, then the journal goes."""
    if job.blocks == 0:  # nothing was computed: the result is empty, or all zeros (n = 0)
        os.ftruncate(output.fd, len(job.header) + job.result_bytes)
    os.fsync(output.fd)
    os.close(output.fd)
    output.fd = -1
    try:  # OUT was checked at the start; a long run gives time for someone to make one
        check_out(job.out, job.out, (job.matrix, job.vectors), force)
    except BadInput as err:
        raise RunFailed(f"{err}; the result is complete in {output.partial}: rerun with --resume --force to put it there")
    os.replace(output.partial, job.out)
    _fsync_dir(os.path.dirname(job.out))
    output.journal.close()
    remove_checked(output.journal.path, output.journal.stat)
    _fsync_dir(os.path.dirname(job.out))
