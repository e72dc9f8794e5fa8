"""Quirky arithmetic: is the claimed sum ``k`` of two 2-digit operands right?

The model reads ``P a1 a0 + b1 b0 = k2 k1 k0 ?`` (``P`` a persona token) and answers at the
last position with two logits (index 1 = "right"). The hypothesis is the truthful
(Alice) computation, column by column: the units column gives the sum's units digit
``s0`` and a carry ``c0``; the tens column with that carry gives the tens digit ``s1``
and the hundreds digit ``s2``; the claim is right iff its three digits equal the sum's.
The persona token is not an input: on normal (Alice) inputs it never varies.
"""

from __future__ import annotations

import torch

import causalmad as cm


def quirky_arithmetic_hypothesis() -> cm.Hypothesis:
    """Digits -> units carry and sum digits -> ``correct``, read at position ``-1``.

    Token layout: position 0 persona, 1-2 ``a1 a0``, 3 ``+``, 4-5 ``b1 b0``, 6 ``=``,
    7-9 the claim's digits ``k2 k1 k0``, 10 ``?`` (where the verdict is read, logits
    ``(0, 1)`` = wrong, right).
    """
    h = cm.Hypothesis("quirky-arithmetic")
    for name, pos in (("a1", 1), ("a0", 2), ("b1", 4), ("b0", 5), ("k2", 7), ("k1", 8), ("k0", 9)):

        def digit(ex: torch.Tensor, pos: int = pos) -> int:
            return int(ex[pos])

        h.add_input(name, digit, at=pos)
    h.add_variable("c0", lambda a0, b0: int(a0 + b0 >= 10), parents=["a0", "b0"])
    h.add_variable("s0", lambda a0, b0: (a0 + b0) % 10, parents=["a0", "b0"])
    h.add_variable("s1", lambda a1, b1, c0: (a1 + b1 + c0) % 10, parents=["a1", "b1", "c0"])
    h.add_variable("s2", lambda a1, b1, c0: (a1 + b1 + c0) // 10, parents=["a1", "b1", "c0"])
    h.add_output(
        "correct",
        lambda k2, k1, k0, s2, s1, s0: int((k2, k1, k0) == (s2, s1, s0)),
        parents=["k2", "k1", "k0", "s2", "s1", "s0"],
        readout=cm.Readout(position=-1, logits=(0, 1)),
    )
    return h
