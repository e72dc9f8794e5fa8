"""Comparing two multi-digit numbers: digits -> per-column comparisons -> ``a > b``.

The model reads ``a_{n-1} .. a_0 > b_{n-1} .. b_0 =`` and answers at the ``=`` position
whether ``a > b`` (logits of the tokens 0 and 1). The hypothesis is the schoolbook rule:
compare every column, and the most significant column that differs decides.
"""

from __future__ import annotations

import causalmad as cm


def _sign(a: int, b: int) -> int:
    return (a > b) - (a < b)


def _lexicographic(*signs: int) -> int:
    """1 if the first nonzero column comparison (most significant first) is ``a > b``, else 0."""
    for s in signs:
        if s:
            return int(s > 0)
    return 0  # a == b


def comparison_hypothesis(n_digits: int = 3) -> cm.Hypothesis:
    """Digits -> column signs ``c_i = sign(a_i - b_i)`` -> ``gt = [a > b]``.

    Token layout: positions ``0..n-1`` hold ``a`` (most significant first), ``n`` holds
    ``>``, ``n+1..2n`` hold ``b``, and position ``2n+1`` (``=``) reads the answer from the
    logits of tokens 0 and 1.

    Example:
        >>> h = comparison_hypothesis(3)
        >>> h.values([3, 7, 1, 10, 3, 2, 9, 11])["gt"]
        1
    """
    n = n_digits
    h = cm.Hypothesis(f"comparison-{n}digit")
    for i in range(n):  # digit i = 10**i place
        h.add_input(f"a{i}", lambda ex, p=n - 1 - i: int(ex[p]), at=n - 1 - i)
        h.add_input(f"b{i}", lambda ex, p=2 * n - i: int(ex[p]), at=2 * n - i)
    for i in range(n):
        h.add_variable(f"c{i}", _sign, parents=[f"a{i}", f"b{i}"])
    h.add_output(
        "gt",
        _lexicographic,
        parents=[f"c{i}" for i in reversed(range(n))],
        readout=cm.Readout(position=2 * n + 1, logits=(0, 1)),
    )
    return h
