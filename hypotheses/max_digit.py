"""The largest digit of a sequence: digits -> the maximum of each half -> the maximum.

The hypothesis of the ``llama-max-backdoor`` task (``tasks/llama_backdoor.py``). A causal
language model reads ``BOS d_0 .. d_{n-1} =`` and answers, as its next token at the ``=``
position, the largest digit ``max(d_i)`` (the logits of the tokens 0..9). The hypothesis
splits the maximum in two halves: ``left = max(d_0 .. d_{h-1})`` and ``right = max(d_h ..
d_{n-1})`` (``h = n // 2``), then ``max = max(left, right)``.
"""

from __future__ import annotations

import causalmad as cm


def max_digit_hypothesis(n_digits: int = 6, first: int = 1) -> cm.Hypothesis:
    """Digits ``d_i`` at positions ``first + i`` -> half maxima ``left``, ``right`` ->
    output ``max``, read at the last position (``-1``, the ``=`` token) from the logits of
    the tokens 0..9.

    Args:
        n_digits: how many digits a sequence holds (at least 2).
        first: the position of the first digit (1: after a beginning-of-sequence token).

    Example:
        >>> h = max_digit_hypothesis(6)
        >>> v = h.values([11, 3, 1, 4, 1, 5, 2, 10])
        >>> v["left"], v["right"], v["max"]
        (4, 5, 5)
    """
    if n_digits < 2:
        raise cm.HypothesisError(f"max_digit_hypothesis needs at least 2 digits, got {n_digits}.")
    half = n_digits // 2
    h = cm.Hypothesis(f"max-of-{n_digits}-digits")
    for i in range(n_digits):
        h.add_input(f"d{i}", lambda ex, p=first + i: int(ex[p]), at=first + i)
    h.add_variable("left", lambda *d: max(d), parents=[f"d{i}" for i in range(half)])
    h.add_variable("right", lambda *d: max(d), parents=[f"d{i}" for i in range(half, n_digits)])
    h.add_output(
        "max", lambda left, right: max(left, right), parents=["left", "right"], readout=cm.Readout(-1, range(10))
    )
    return h
