"""Multi-digit addition: digits -> carries -> sum digits.

The model reads ``a_{n-1} .. a_0 + b_{n-1} .. b_0 = = ..`` and predicts the sum's digits,
most significant first, at the trailing ``=`` positions. The hypothesis says the model
computes a carry out of every column and each sum digit from its column and the carry in.
Two variants differ in how carries are computed (see ``addition_hypothesis``).
"""

from __future__ import annotations

import causalmad as cm


def addition_hypothesis(
    n_digits: int = 3, first_output_position: int | None = None, carries: str = "lookahead"
) -> cm.Hypothesis:
    """Digits -> carries -> sum digits for ``n_digits``-digit operands.

    Token layout: positions ``0..n-1`` hold ``a`` (most significant first), ``n`` holds
    ``+``, ``n+1..2n`` hold ``b``, then ``n+1`` output positions predict the sum digits
    ``s_n .. s_0`` (most significant first), reading logits 0-9.

    Args:
        carries: ``"lookahead"`` (default): the carry out of column ``i`` is computed from
            the digits of columns ``0..i`` (what a parallel, non-autoregressive model can
            do in one step); ``"ripple"``: from column ``i``'s digits and the carry into
            it (the schoolbook algorithm). Alignment tells which one a model implements.
    """
    if carries not in ("lookahead", "ripple"):
        raise cm.HypothesisError(f"carries must be 'lookahead' or 'ripple', got {carries!r}.")
    n = n_digits
    out0 = 2 * n + 1 if first_output_position is None else first_output_position
    h = cm.Hypothesis(f"addition-{n}digit-{carries}-carries")
    for i in range(n):  # digit i = 10**i place
        h.add_input(f"a{i}", lambda ex, p=n - 1 - i: int(ex[p]), at=n - 1 - i)
        h.add_input(f"b{i}", lambda ex, p=2 * n - i: int(ex[p]), at=2 * n - i)
    digits = tuple(range(10))
    carry_in: str | None = None
    for i in range(n):
        column = [f"a{i}", f"b{i}"]
        if carries == "ripple":
            carry_parents = column + ([carry_in] if carry_in else [])
            h.add_variable(f"c{i}", lambda *v: int(sum(v) >= 10), parents=carry_parents)
        else:
            lower = [d for j in range(i + 1) for d in (f"a{j}", f"b{j}")]

            def lookahead(*v: int, i: int = i) -> int:
                a = sum(v[2 * j] * 10**j for j in range(i + 1))
                b = sum(v[2 * j + 1] * 10**j for j in range(i + 1))
                return int(a + b >= 10 ** (i + 1))

            h.add_variable(f"c{i}", lookahead, parents=lower)
        out_parents = column + ([carry_in] if carry_in else [])
        h.add_output(
            f"s{i}",
            lambda *v: sum(v) % 10,
            parents=out_parents,
            readout=cm.Readout(position=out0 + n - i, logits=digits),
        )
        carry_in = f"c{i}"
    h.add_output(f"s{n}", lambda c: c, parents=[carry_in], readout=cm.Readout(position=out0, logits=digits))
    return h
