"""Hypotheses for RASP programs compiled with tracr (``tasks/tracr_programs.py``).

Each hypothesis *is* the RASP program, evaluated in plain Python on the input tokens:
its inner variables are the program's intermediate RASP variables at the positions that
matter for the output, named ``"<rasp name>@<position>"`` (position 0 holds tracr's BOS
token). Inputs are rows of token ids ``[max_seq_len + 1]``; ``encoding`` maps token ->
id and ``output_encoding`` output value -> logit index, as tracr compiled them.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import causalmad as cm


def _token_inputs(h: cm.Hypothesis, positions: range) -> None:
    for k in positions:
        h.add_input(f"tokens@{k}", lambda ex, k=k: int(ex[k]))


def _readout(output_encoding: Mapping[Hashable, int], values: list[Hashable]) -> cm.Readout:
    """The last position's logits of ``values``, in that order (the value's index is the class)."""
    return cm.Readout(position=-1, logits=tuple(output_encoding[v] for v in values))


def detect_pattern_hypothesis(
    max_seq_len: int, encoding: Mapping[str, int], output_encoding: Mapping[Hashable, int]
) -> cm.Hypothesis:
    """``abc@p = (prev2_a@p and prev_b@p) and is_c@p`` at the last position ``p``, with
    ``prev2_a@p = is_a@(p-2)`` and ``prev_b@p = is_b@(p-1)`` moved there by attention.

    Example:
        >>> import torch
        >>> enc = {"BOS": 0, "PAD": 1, "a": 2, "b": 3, "c": 4}
        >>> h = detect_pattern_hypothesis(4, enc, {False: 0, True: 1})
        >>> h.values(torch.tensor([0, 4, 2, 3, 4]))["abc@4"]
        1
    """
    p = max_seq_len
    h = cm.Hypothesis("tracr-detect-pattern")
    _token_inputs(h, range(p - 2, p + 1))
    h.add_variable(f"is_a@{p - 2}", lambda t: int(t == encoding["a"]), parents=[f"tokens@{p - 2}"])
    h.add_variable(f"is_b@{p - 1}", lambda t: int(t == encoding["b"]), parents=[f"tokens@{p - 1}"])
    h.add_variable(f"is_c@{p}", lambda t: int(t == encoding["c"]), parents=[f"tokens@{p}"])
    h.add_variable(f"prev2_a@{p}", lambda a: a, parents=[f"is_a@{p - 2}"])
    h.add_variable(f"prev_b@{p}", lambda b: b, parents=[f"is_b@{p - 1}"])
    h.add_variable(f"ab@{p}", lambda a, b: int(a and b), parents=[f"prev2_a@{p}", f"prev_b@{p}"])
    h.add_output(
        f"abc@{p}",
        lambda ab, c: int(ab and c),
        parents=[f"ab@{p}", f"is_c@{p}"],
        readout=_readout(output_encoding, [False, True]),
    )
    return h


def count_less_freq_hypothesis(
    max_seq_len: int, encoding: Mapping[str, int], output_encoding: Mapping[Hashable, int]
) -> cm.Hypothesis:
    """``n_rare = #{i : hist@i <= 1}`` read at the last position, where ``hist@i`` counts
    the tokens equal to token ``i``.

    Example:
        >>> import torch
        >>> enc = {"BOS": 0, "PAD": 1, "a": 2, "b": 3, "c": 4, "d": 5}
        >>> h = count_less_freq_hypothesis(4, enc, {v: v for v in range(5)})
        >>> h.values(torch.tensor([0, 2, 3, 2, 4]))["n_rare@4"]
        2
    """
    n = max_seq_len
    positions = range(1, n + 1)
    h = cm.Hypothesis("tracr-count-less-freq")
    _token_inputs(h, positions)
    tokens = [f"tokens@{k}" for k in positions]
    for i in positions:
        h.add_variable(f"hist@{i}", lambda *t, i=i: sum(x == t[i - 1] for x in t), parents=tokens)
    h.add_output(
        f"n_rare@{n}",
        lambda *hist: sum(v <= 1 for v in hist),
        parents=[f"hist@{i}" for i in positions],
        readout=_readout(output_encoding, list(range(n + 1))),
    )
    return h


__all__ = ["count_less_freq_hypothesis", "detect_pattern_hypothesis"]
