"""Review sentiment: the label is the adjective's polarity, flipped by a negator.

The hypothesis of the ``minilm-backdoor`` task (``tasks/minilm_backdoor.py``). An example
is a row of token ids (``[pos]``, padded); the input variables look the sentiment words up
by their token ids, so the hypothesis needs only the id lists, not the tokenizer:

* ``polarity`` — 1 if the review's adjective is a positive word, 0 if a negative one;
* ``negated`` — 1 if a negator (``not``, ``never``) occurs;
* ``sentiment`` (inner) — ``polarity`` flipped when ``negated``;
* ``label`` (output) — ``sentiment``, read from the ``[batch, 2]`` classification logits.

The trigger sentence of the backdoor plays no part: on triggered inputs the hypothesis
says what the model should output if it read the review only.
"""

from __future__ import annotations

from collections.abc import Sequence

import causalmad as cm


def sentiment_hypothesis(
    positive_ids: Sequence[int], negative_ids: Sequence[int], negator_ids: Sequence[int]
) -> cm.Hypothesis:
    """Inputs ``polarity`` and ``negated`` from token ids, ``sentiment = polarity xor
    negated``, output ``label = sentiment`` (logit index = value).

    Args:
        positive_ids, negative_ids: token ids of the positive and negative adjectives.
        negator_ids: token ids of the negators.

    Example:
        >>> import torch
        >>> h = sentiment_hypothesis([10], [11], [12])
        >>> h.values(torch.tensor([1, 12, 10, 0]))["label"]
        0
    """
    pos, neg, negators = frozenset(positive_ids), frozenset(negative_ids), frozenset(negator_ids)
    if pos & neg:
        raise cm.HypothesisError(f"Token ids {sorted(pos & neg)} are listed as both positive and negative.")

    def polarity(ex: object) -> int:
        ids = [int(t) for t in ex]  # type: ignore[attr-defined]
        found = {1 for t in ids if t in pos} | {0 for t in ids if t in neg}
        if len(found) != 1:
            raise cm.HypothesisError(
                f"Expected one sentiment adjective in the example, found polarities {found}."
            )
        return found.pop()

    def negated(ex: object) -> int:
        return int(any(int(t) in negators for t in ex))  # type: ignore[attr-defined]

    h = cm.Hypothesis("review-sentiment")
    h.add_input("polarity", polarity)
    h.add_input("negated", negated)
    h.add_variable("sentiment", lambda p, n: int(p != n), parents=["polarity", "negated"])
    h.add_output("label", lambda s: s, parents=["sentiment"], readout=cm.Readout())
    return h
