"""A planted mechanism whose right answers are known exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import planted_data

import causalmad as cm
from causalmad.alignment import interchange_accuracy, sample_pairs


def test_hypothesis_that_holds_exactly_has_iia_one_and_zero_trusted_divergence(planted):
    model, h = planted
    trusted = planted_data(400, flag=0, seed=0)
    det = cm.ScrubbingDetector(model, hypothesis=h, resamples=3, random_state=0).fit(trusted)
    best = det.alignment_.best("s")
    assert best.iia == 1.0 and best.heldout_iia == 1.0
    declared = next(e for e in det.explanations_ if e["name"].startswith("hypothesis: all variables"))
    assert declared["valid"] and declared["trusted_mean_divergence"] < 1e-6


def test_iia_is_exact_on_the_sum_coordinate_and_zero_on_the_difference(planted):
    model, h = planted
    ad = cm.adapt(model)
    x = planted_data(200, flag=0, seed=1)
    vals = [h.values(r) for r in x]
    pairs = sample_pairs("s", vals, vals, 100, np.random.default_rng(0))
    on_sum = cm.Site("enc", basis=torch.tensor([[1.0], [0.0], [0.0]]))
    on_diff = cm.Site("enc", basis=torch.tensor([[0.0], [1.0], [0.0]]))
    assert interchange_accuracy(ad, h, "s", on_sum, x, vals, x, vals, pairs) == 1.0
    assert interchange_accuracy(ad, h, "s", on_diff, x, vals, x, vals, pairs) == 0.0


def test_planted_backdoor_is_caught(planted):
    model, h = planted
    det = cm.ScrubbingDetector(model, hypothesis=h, resamples=2, random_state=0).fit(planted_data(1000, 0, 0))
    normal, anomalous = planted_data(100, 0, 5), planted_data(100, 1, 6)
    scores = det.score(torch.cat([normal, anomalous]))
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(np.r_[np.zeros(100), np.ones(100)], scores) >= 0.99
    why = det.explain(anomalous[0])
    assert why["flagged"] and why["score"] > why["threshold"] and why["fpr"] == 0.01
    assert why["broken"][0]["z"] > 10 and why["broken"][0]["divergence"] > why["broken"][0]["trusted_mean"]
    # the planted backdoor bypasses s: scrubbing s alone breaks the output
    assert [v["variable"] for v in why["variables"]] == ["s"]
    assert why["variables"][0]["share"] == 1.0 and why["variables"][0]["z"] > 10
    assert why["values"] == {
        "a": int(anomalous[0, 0]),
        "b": int(anomalous[0, 1]),
        "s": int(anomalous[0, 0] + anomalous[0, 1]),
        "y": int(anomalous[0, 0] + anomalous[0, 1]),
    }
    assert isinstance(why, cm.ScrubbingExplainResult) and why.broken == why["broken"]
    json.dumps(why.to_dict())  # plain data
    normal_why = det.explain(normal[0])
    assert not normal_why["flagged"] and max(v["z"] for v in normal_why["variables"]) < 10


def test_values_no_trusted_input_shares_are_reported_not_dropped(planted, caplog):
    model, h = planted
    det = cm.ScrubbingDetector(model, hypothesis=h, resamples=2, random_state=0).fit(planted_data(1000, 0, 0))
    unseen = torch.tensor([[9.0, 9.0, 0.0]])  # a + b = 18: no trusted input has it
    details = det.score_details(torch.cat([planted_data(5, 0, 7), unseen]))
    scores = details.scores
    assert len(scores) == 6 and np.isfinite(scores).all()
    assert details.parts["unmatched_any"].tolist() == [False] * 5 + [True]
    assert not any(k.startswith("last_") for k in vars(det))  # scoring stores nothing on the detector
    assert "no trusted input shares" in caplog.text
    assert det.explain(unseen[0])["values_unseen_in_trusted"] == ["a", "b", "s", "y"]  # 9 never in trusted


def test_scores_do_not_depend_on_the_batch(planted):
    model, h = planted
    det = cm.ScrubbingDetector(model, hypothesis=h, resamples=2, random_state=0).fit(
        planted_data(300, 0, 0, 0.05)
    )
    x = torch.cat([planted_data(20, 0, 5, 0.05), planted_data(20, 1, 6, 0.05)])
    batched = det.score(x)
    # the same trusted sources whatever the batch; only float rounding of batched matmuls differs
    alone = np.array([det.score(row[None])[0] for row in x[::7]])
    np.testing.assert_allclose(alone, batched[::7], rtol=1e-5, atol=0.01)
    np.testing.assert_allclose(det.score(x.flip(0)), batched[::-1], rtol=1e-5, atol=0.01)
    assert det.explain(x[-1])["score"] == pytest.approx(batched[-1], rel=1e-5)


class SameSumTwoWays(torch.nn.Module):
    """``enc`` computes ``[a + b + 3 flag, a + b - 3 flag]``; the head reads their mean, so
    ``flag`` moves the site but never the output: a whole-site resample from an input with
    the same sum leaves no trace of it, a piece of the site does."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = torch.nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.enc.weight.copy_(torch.tensor([[1.0, 1.0, 3.0], [1.0, 1.0, -3.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.enc(x).mean(1, keepdim=True)
        return -4.0 * (h - torch.arange(23, dtype=h.dtype)) ** 2


def test_pieces_of_a_site_catch_what_the_whole_site_resampled_cannot():
    from conftest import sum_hypothesis
    from sklearn.metrics import roc_auc_score

    model, h = SameSumTwoWays(), sum_hypothesis()
    trusted = planted_data(400, 0, 0)
    normal, anomalous = planted_data(60, 0, 5), planted_data(60, 1, 6)
    with torch.no_grad():  # the same output: an output check is blind
        assert torch.allclose(model(anomalous), model(anomalous * torch.tensor([1.0, 1.0, 0.0])))
    labels = np.r_[np.zeros(60), np.ones(60)]
    x = torch.cat([normal, anomalous])

    det = cm.ScrubbingDetector(model, hypothesis=h, resamples=2, input_cut=(), random_state=0).fit(trusted)
    pieces = [e for e in det.explanations_ if e["family"] == "hypothesis-pieces"]
    claim = next(e for e in det.explanations_ if e["name"] == "variable s at enc")
    # two pieces of the 2-wide site, each valid exactly where its claim is, and on trusted
    # inputs (where the claim holds exactly) they move nothing
    assert [e["name"] for e in pieces] == [f"variable s at enc, piece {j}/2" for j in (1, 2)]
    assert all(e["valid"] == claim["valid"] is True for e in pieces)
    assert max(e["trusted_mean_divergence"] for e in pieces) < 1e-6
    assert roc_auc_score(labels, det.score(x)) == 1.0

    whole = cm.ScrubbingDetector(
        model, hypothesis=h, resamples=2, input_cut=(), site_parts=1, random_state=0
    ).fit(trusted)
    assert "hypothesis-pieces" not in whole.families_
    assert roc_auc_score(labels, whole.score(x)) == 0.5  # every input ties with trusted ones


def test_pieces_split_each_site_into_disjoint_seeded_groups(planted):
    from causalmad.explanations import piece_explanations
    from causalmad.scrubbing import Explanation, Resample, SourcePool

    model, _ = planted
    ad = cm.adapt(model)
    pool = SourcePool(ad, planted_data(50, 0, 0), [{}] * 50)
    claim = Explanation("variable s at enc", "hypothesis-subset", [Resample(cm.Site("enc"), ("s",))], ("s",))
    other = Explanation("hypothesis: all", "hypothesis", [Resample(cm.Site("enc"), ("s",))], ("s",))
    got = piece_explanations(ad, pool, [other, claim], 2, seed=3)
    assert [i for _, i in got] == [1, 1]  # only single claims are split
    cols = [torch.nonzero(e.resamples[0].site.basis.sum(1))[:, 0].tolist() for e, _ in got]
    assert sorted(cols[0] + cols[1]) == [0, 1, 2] and not set(cols[0]) & set(cols[1])
    again = piece_explanations(ad, pool, [other, claim], 2, seed=3)
    assert [e.resamples[0].site.basis.tolist() for e, _ in again] == [
        e.resamples[0].site.basis.tolist() for e, _ in got
    ]
    assert all(e.resamples[0].match == ("s",) for e, _ in got)
    assert piece_explanations(ad, pool, [claim], 1, seed=3) == []
    assert piece_explanations(ad, pool, [claim], 4, seed=3) == []  # 3 coordinates: not split in 4
