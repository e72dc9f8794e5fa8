"""Confidence matching for hard splits: subsample normal and anomalous rows so that a given
score (the output-disagreement score, in practice) has the same distribution on both.

A hard split's anomalies already get the output the hypothesis predicts, but a backdoor that
agrees with the clean answer often makes the model answer *more confidently*, and an output
check that reads the model's probabilities then still separates the classes. Matching the
two classes bin by bin on that score removes this last output-level signal: any function of
the score is then near chance (AUROC within about ``0.5 / bins`` of 0.5 when it is monotone
in the score), and what is left to detect lies in how the model computed its answer.
"""

from __future__ import annotations

import torch


def match_on_score(
    score_normal: torch.Tensor,
    score_anomalous: torch.Tensor,
    n_normal: int,
    n_anomalous: int,
    bins: int,
    g: torch.Generator,
    edges_from: str = "anomalous",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(normal_index, anomalous_index)``: sorted row indices into the two pools whose scores
    fall into ``bins`` quantile bins in the same proportions.

    The bins are quantiles of the anomalous scores (``edges_from="anomalous"``: anomalies
    are the scarce class, so the bins follow them) or of both pools together
    (``"pooled"``, for pools of similar size). In each bin ``b`` holding ``a_b``
    anomalies and ``m_b`` normal rows, ``k_b = min(a_b, m_b // r)`` anomalies and ``r * k_b``
    normal rows are kept, with ``r = n_normal // n_anomalous`` (at least 1); the totals are
    then scaled down to at most ``n_anomalous`` anomalies. Rows are drawn at random within
    a bin (``g``).
    """
    if n_anomalous < 1 or n_normal < 1 or bins < 1:
        raise ValueError(
            f"n_normal, n_anomalous and bins must be positive; got {n_normal}, {n_anomalous}, {bins}."
        )
    if edges_from not in ("anomalous", "pooled"):
        raise ValueError(f"edges_from must be 'anomalous' or 'pooled', got {edges_from!r}.")
    ratio = max(1, n_normal // n_anomalous)
    sn, sa = score_normal.double().flatten(), score_anomalous.double().flatten()
    ref = sa if edges_from == "anomalous" else torch.cat([sn, sa])
    edges = torch.quantile(ref, torch.linspace(0, 1, bins + 1, dtype=torch.double))[1:-1]
    bn, ba = torch.bucketize(sn, edges), torch.bucketize(sa, edges)
    have_n, have_a = torch.bincount(bn, minlength=bins), torch.bincount(ba, minlength=bins)
    keep_a = torch.minimum(have_a, have_n // ratio)
    if keep_a.sum() > n_anomalous:
        keep_a = (keep_a.double() * n_anomalous / keep_a.sum()).floor().long()
    idx_n, idx_a = [], []
    for b, k in enumerate(keep_a.tolist()):
        for bins_of, take, out in ((bn, ratio * k, idx_n), (ba, k, idx_a)):
            rows = torch.nonzero(bins_of == b).flatten()
            out.append(rows[torch.randperm(len(rows), generator=g)[:take]])
    return torch.cat(idx_n).sort().values, torch.cat(idx_a).sort().values
