"""Exceptions raised by batchmv."""


class CopyRequiredError(ValueError):
    """Raised with ``copy=False`` when the call cannot run without copying.

    It is raised before anything is computed, by :func:`batchmv.matvec` and
    :func:`batchmv.plan` alike, and its message names the operand and the reason.
    """
