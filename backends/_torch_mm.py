"""What ``torch.mm`` does with a lazily conjugated operand on the CPU, from strides alone.

torch's CPU ``addmm`` hands BLAS every operand either as it is (op N) or transposed
(op T); an operand with the conjugate bit that it hands transposed goes to BLAS with op C
(conjugate transpose) and is read in place, one that it hands as it is is first resolved
into a conjugated copy.  Which operand goes transposed follows from the strides of the
result and of the operand (torch's ``addmm_impl_cpu_``): this module repeats that rule as
arithmetic on tuples, so that a call's plan can say whether A is read in place before
anything runs.  ``tests/test_adjoint.py`` checks the rule against torch itself (the
profiler sees the copy) on every layout of a grid of shapes, degenerate ones included.
"""

from __future__ import annotations


def keeps_conj(rows: int, m: int, n: int, b_strides: tuple[int, int], y_strides: tuple[int, int]) -> bool:
    """Whether ``torch.mm(x2, b, out=y2)`` on the CPU passes the conjugate bit of ``b``
    ((n, m), element strides ``b_strides``) to BLAS instead of copying ``b``; ``y2`` is
    (rows, m) with strides ``y_strides``.

    >>> keeps_conj(8, 3, 4, (1, 4), (3, 1)), keeps_conj(8, 3, 4, (3, 1), (3, 1))
    (True, False)
    """
    if rows == 0 or m == 0 or n == 0:
        return False
    b0, b1 = b_strides
    y0, y1 = y_strides
    column_major = y0 == 1 and (m == 1 or y1 >= max(1, rows))
    if not column_major and y1 == 1 and (rows == 1 or y0 >= max(1, m)):
        # a row-major result: torch swaps the operands, and b is the one BLAS calls "a"
        resolved = b1 == 1 and b0 >= max(1, m)
        return not resolved and b0 == 1 and b1 >= max(1, n)
    resolved = b0 == 1 and b1 >= max(1, n)  # a column-major result: b is BLAS's "b"
    return not resolved and b1 == 1 and b0 >= max(1, m)
