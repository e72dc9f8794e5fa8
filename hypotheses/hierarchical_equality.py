"""Hierarchical equality: ``y = ((a == b) == (c == d))`` over entity vectors.

The benchmark of distributed alignment search (Geiger et al., "Finding Alignments Between
Interpretable Causal Variables and Distributed Neural Representations", CLeaR 2024). The
input row concatenates four entity vectors ``a, b, c, d``; the hypothesis recovers each
entity's id as its nearest vector in a fixed bank, computes the two equality variables
``w1 = (a == b)`` and ``w2 = (c == d)``, and predicts ``y = int(w1 == w2)`` (logit index
= value).
"""

from __future__ import annotations

import torch

import causalmad as cm


def nearest_entity(bank: torch.Tensor, vector: torch.Tensor) -> int:
    """Id of the bank row (``bank``: ``[n_entities, dim]``) nearest to ``vector``."""
    return int(((bank - vector.float()) ** 2).sum(1).argmin())


def hierarchical_equality_hypothesis(bank: torch.Tensor) -> cm.Hypothesis:
    """Inputs ``a, b, c, d`` (entity ids), variables ``w1 = a == b``, ``w2 = c == d``,
    output ``y = int(w1 == w2)`` read from ``[batch, 2]`` logits.

    Args:
        bank: ``[n_entities, dim]`` entity vectors; an input row is ``[4 * dim]``.
    """
    bank = bank.float()
    dim = int(bank.shape[1])
    h = cm.Hypothesis("hierarchical-equality")
    for i, name in enumerate("abcd"):

        def entity(ex: torch.Tensor, i: int = i) -> int:
            return nearest_entity(bank, ex[i * dim : (i + 1) * dim])

        h.add_input(name, entity, at=slice(i * dim, (i + 1) * dim))
    h.add_variable("w1", lambda a, b: int(a == b), parents=["a", "b"])
    h.add_variable("w2", lambda c, d: int(c == d), parents=["c", "d"])
    h.add_output("y", lambda w1, w2: int(w1 == w2), parents=["w1", "w2"], readout=cm.Readout())
    return h
