"""Value types of the subcommands' arguments."""

from __future__ import annotations

import argparse


def positive(text: str) -> int:
    """An integer of at least 1.

    >>> positive("3")
    3
    """
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """A number above 0.

    >>> positive_float("0.5")
    0.5
    """
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value
