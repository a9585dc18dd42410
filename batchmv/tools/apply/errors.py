"""What stops ``batchmv apply``, and how it is told: one line on stderr."""

from __future__ import annotations

import sys


class BadInput(Exception):
    """A problem with the arguments or input files: exit status 2, nothing written."""


class RunFailed(Exception):
    """The run could not finish (disk full, I/O error): exit status 1, finished blocks kept."""


def say(message: str) -> None:
    """``message`` on stderr as one line."""
    print("batchmv apply: " + " ".join(str(message).split()), file=sys.stderr, flush=True)
