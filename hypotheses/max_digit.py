"""The largest digit of a sequence: digits -> their maximum, gathered at the answer position.

The hypothesis of the ``llama-max-backdoor`` task (``tasks/llama_backdoor.py``). A causal
language model reads ``BOS d_0 .. d_{n-1} =`` and answers, as its next token at the ``=``
position, the largest digit ``max(d_i)`` (the logits of the tokens 0..9). The hypothesis
says the model gathers that maximum in one inner variable, ``largest``, and answers it.

A finer decomposition, the maxima of the two halves of the sequence combined in a second
step, does not hold on the task's model: alignment finds no site for either half (held-out
IIA about 0.5 on the tiny model, seed 0), while ``largest`` aligns at the first layer's
attention output at the answer position (0.996): the model reads the largest digit in one
attention step.
"""

from __future__ import annotations

import causalmad as cm


def max_digit_hypothesis(n_digits: int = 6, first: int = 1) -> cm.Hypothesis:
    """Digits ``d_i`` at positions ``first + i`` -> inner ``largest = max(d_i)`` -> output
    ``max = largest``, read at the last position (``-1``, the ``=`` token) from the logits
    of the tokens 0..9.

    Args:
        n_digits: how many digits a sequence holds (at least 2).
        first: the position of the first digit (1: after a beginning-of-sequence token).

    Raises:
        HypothesisError: ``n_digits`` is below 2.

    Example:
        >>> h = max_digit_hypothesis(6)
        >>> v = h.values([11, 3, 1, 4, 1, 5, 2, 10])
        >>> v["largest"], v["max"]
        (5, 5)
    """
    if n_digits < 2:
        raise cm.HypothesisError(f"max_digit_hypothesis needs at least 2 digits, got {n_digits}.")
    h = cm.Hypothesis(f"max-of-{n_digits}-digits")
    for i in range(n_digits):
        h.add_input(f"d{i}", lambda ex, p=first + i: int(ex[p]), at=first + i)
    h.add_variable("largest", lambda *d: max(d), parents=[f"d{i}" for i in range(n_digits)])
    h.add_output("max", lambda largest: largest, parents=["largest"], readout=cm.Readout(-1, range(10)))
    return h
