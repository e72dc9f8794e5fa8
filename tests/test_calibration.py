"""Calibrated aggregation (causalmad/calibration.py): tail probabilities under each
explanation's trusted divergences, Simes' combination, and explanations that do not matter
diluting nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PlantedSum, planted_data, sum_hypothesis
from sklearn.metrics import roc_auc_score

import causalmad as cm
from causalmad import calibration
from causalmad.scrubbing import Explanation, Resample


def test_tail_probabilities_are_uniform_on_trusted_like_values_and_extrapolate_past_every_trusted_one():
    rng = np.random.default_rng(0)
    trusted = calibration.sorted_columns(rng.exponential(size=(2000, 1)))
    fresh = rng.exponential(size=(4000, 1))
    p = np.exp(calibration.log_p_values(fresh, trusted, 1e-3))[:, 0]
    assert abs(np.mean(p <= 0.1) - 0.1) < 0.02 and abs(np.mean(p <= 0.5) - 0.5) < 0.03
    far = np.array([[20.0], [30.0]])  # beyond every trusted value: still ordered, far below 1 / 2001
    lp = calibration.log_p_values(far, trusted, 1e-3)[:, 0]
    assert lp[1] < lp[0] < np.log(1 / 2001)
    # two-sided: an input that moves the output less than nearly every trusted input is in a tail too
    assert np.exp(calibration.log_p_values(np.array([[0.0]]), trusted, 1e-3))[0, 0] < 0.05


def test_simes_ignores_untestable_cells_and_ties_with_trusted():
    lp = np.log(np.array([[0.01, 1.0, np.nan], [0.01, 0.5, 0.5]]))
    assert calibration.simes(lp[:1]) == pytest.approx(np.log(0.01))  # one informative cell
    assert calibration.simes(lp[1:]) == pytest.approx(np.log(0.03))
    assert calibration.simes(np.zeros((2, 0))).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("aggregation", ["calibrated", "max-z"])
def test_appending_100_explanations_that_do_not_matter_moves_the_auroc_by_less_than_a_hundredth(
    aggregation, monkeypatch
):
    """The planted model reads ``a + b`` and the flag, never ``a - b``: scrubbing the
    ``a - b`` direction of ``enc`` from any trusted source provably changes nothing. A
    weak flag (0.01: the answer moves by 0.05) keeps the AUROC below 1, where dilution
    would show."""
    import causalmad.detectors.scrubbing as scrubbing_detector

    trusted = planted_data(400, 0, seed=0, noise=0.4)
    x = torch.cat([planted_data(100, 0, seed=1, noise=0.4), planted_data(100, 0.01, seed=2, noise=0.4)])
    labels = np.r_[np.zeros(100), np.ones(100)]
    a_minus_b = torch.tensor([[0.0], [1.0], [0.0]])
    nulls = [
        Explanation(
            f"null {i}", "hypothesis-free", [Resample(cm.Site("enc").with_basis(a_minus_b, f"a-b {i}"))]
        )
        for i in range(100)
    ]

    def auroc() -> tuple[float, cm.ScrubbingDetector]:
        det = cm.ScrubbingDetector(
            PlantedSum(),
            sum_hypothesis(),
            resamples=4,
            aggregation=aggregation,
            hypothesis_free=True,  # the nulls are appended to the hypothesis-free family
            random_state=0,
        ).fit(trusted)
        return roc_auc_score(labels, det.score(x)), det

    before, _ = auroc()
    original = scrubbing_detector.hypothesis_free_explanations
    monkeypatch.setattr(
        scrubbing_detector, "hypothesis_free_explanations", lambda *a, **k: original(*a, **k) + nulls
    )
    after, det = auroc()
    assert sum(name.startswith("null") for name in det.column_names_) == 100  # all valid, all scored
    assert before >= 0.9 and abs(after - before) < 0.01


def test_the_combination_is_the_better_of_simes_by_family_and_flat_and_stays_a_valid_p_value():
    rng = np.random.default_rng(0)
    families = ["one"] + ["many"] * 20 + ["noise"] * 9
    lp = np.log(rng.uniform(size=(20000, 30)))
    combined = calibration.combine(lp, families)
    both = np.minimum(calibration.by_family(lp, families), calibration.simes(lp))
    np.testing.assert_allclose(combined, np.log(2.0) + both)
    # a valid p-value on null inputs (uniform, independent p-values): P(p <= a) <= a
    for a in (0.01, 0.05, 0.2):
        assert np.mean(combined <= np.log(a)) <= a * 1.1
    # a signal in a one-column family (the by-family test sees it) ...
    one = np.log(np.full((1, 30), 0.5))
    one[0, 0] = np.log(1e-4)
    # ... and one spread over a large family (the flat test sees it)
    spread = np.log(np.full((1, 30), 0.5))
    spread[0, 1:21] = np.log(0.01)
    assert calibration.combine(one, families)[0] == pytest.approx(np.log(2 * 3 * 1e-4))
    assert calibration.by_family(spread, families)[0] == pytest.approx(np.log(3 * 0.01))
    assert calibration.simes(spread)[0] == pytest.approx(np.log(30 / 20 * 0.01))
    assert calibration.combine(spread, families)[0] == pytest.approx(np.log(2 * 30 / 20 * 0.01))
