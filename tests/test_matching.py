"""Confidence matching of hard splits (tasks/_matching.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from causalmad_tasks._matching import match_on_score


def test_matched_rows_have_the_same_score_distribution_in_the_asked_ratio():
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(5000, generator=g) + 1.0  # anomalies sit lower (more confident) ...
    anomalous = torch.randn(400, generator=g) * 0.5  # ... and narrower
    assert roc_auc_score(np.r_[np.zeros(5000), np.ones(400)], np.r_[normal, anomalous]) < 0.25
    keep_n, keep_a = match_on_score(normal, anomalous, 600, 200, bins=10, g=g)
    assert len(keep_a) <= 200 and len(keep_n) == 3 * len(keep_a)  # ratio 600 // 200
    assert len(keep_a) >= 150  # enough normal rows in every bin: little is dropped
    assert len(set(keep_n.tolist())) == len(keep_n) and torch.equal(keep_n, keep_n.sort().values)
    sn, sa = normal[keep_n], anomalous[keep_a]
    auroc = roc_auc_score(np.r_[np.zeros(len(sn)), np.ones(len(sa))], np.r_[sn, sa])
    assert abs(auroc - 0.5) <= 0.5 / 10  # at chance up to the order inside a bin
    edges = torch.quantile(anomalous.double(), torch.linspace(0, 1, 11, dtype=torch.double))[1:-1]
    per_bin = [torch.bincount(torch.bucketize(s.double(), edges), minlength=10) for s in (sn, sa)]
    assert torch.equal(per_bin[0], 3 * per_bin[1])


def test_a_bin_without_normal_rows_drops_its_anomalies_and_bad_sizes_raise():
    g = torch.Generator().manual_seed(1)
    normal = torch.rand(1000, generator=g)  # in [0, 1)
    anomalous = torch.cat([torch.rand(50, generator=g), 5 + torch.rand(50, generator=g)])  # half out of reach
    _, keep_a = match_on_score(normal, anomalous, 100, 100, bins=4, g=g)
    assert (anomalous[keep_a] < 1).all() and len(keep_a) == 50
    with pytest.raises(ValueError, match="positive"):
        match_on_score(normal, anomalous, 0, 100, bins=4, g=g)
