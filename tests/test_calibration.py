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
from causalmad.evaluation import rescore_scrubbing, scrubbing_arrays
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


def test_the_pareto_tail_keeps_an_accident_unlikely_not_impossible():
    """Trusted divergences that are mostly float noise: an exponential tail fitted to them
    puts a divergence a thousand resolutions out at about e^-1000, past anything a real
    signal shows; the Pareto tail (Hill's estimator on log(d + resolution)) keeps it
    ordered, past every trusted value, but finite, and both tails agree inside the data."""
    rng = np.random.default_rng(0)
    trusted = calibration.sorted_columns(np.r_[np.zeros(500), rng.exponential(2e-3, size=100)][:, None])
    d = np.array([[1.0], [5.0], [0.0]])
    exp = calibration.log_p_values(d, trusted, 1e-3, False, tail="exponential")[:, 0]
    par = calibration.log_p_values(d, trusted, 1e-3, False, tail="pareto")[:, 0]
    assert exp[0] < -200 and -30 < par[0] < np.log(1 / 601)
    assert par[1] < par[0]  # still ordered past every trusted value
    assert exp[2] == par[2] == 0.0  # inside the data both are the empirical tail
    with pytest.raises(ValueError, match="tail must be one of"):
        calibration.log_p_values(d, trusted, 1e-3, tail="gaussian")


def test_the_gpd_tail_takes_its_shape_from_the_trusted_values():
    """The generalized Pareto tail follows the column: on exponential trusted values it
    is the exponential tail within a few percent far out; on heavy-tailed ones (log-normal
    divergences) it falls polynomially, as the Pareto tail does, so a value a hundred
    times the median is not near e^-50, though its shape (log-normal, not Pareto) makes
    it lighter than Hill's estimate; inside the data it is the empirical tail."""
    rng = np.random.default_rng(0)
    light = calibration.sorted_columns(rng.exponential(size=(2000, 1)))
    far = np.array([[15.0], [30.0], [0.5]])
    exp = calibration.log_p_values(far, light, 1e-3, False, tail="exponential")[:, 0]
    gpd = calibration.log_p_values(far, light, 1e-3, False, tail="gpd")[:, 0]
    assert np.allclose(gpd[:2], exp[:2], rtol=0.1) and gpd[1] < gpd[0] < np.log(1 / 2001)
    assert gpd[2] == exp[2]
    heavy = calibration.sorted_columns(np.exp(rng.normal(-3.0, 2.0, size=(400, 1))))
    out = np.array([[10.0], [100.0]])
    exp = calibration.log_p_values(out, heavy, 1e-3, False, tail="exponential")[:, 0]
    gpd = calibration.log_p_values(out, heavy, 1e-3, False, tail="gpd")[:, 0]
    par = calibration.log_p_values(out, heavy, 1e-3, False, tail="pareto")[:, 0]
    assert exp[1] < -50 and -15 < gpd[1] < gpd[0] < np.log(1 / 401)
    assert exp[1] < gpd[1] < par[1] + 1  # between the exponential tail and Hill's, here
    assert calibration.gpd_fit(np.ones(5)) == (0.0, 1.0)  # no spread: the exponential tail


def test_the_log_lower_tail_is_not_capped_near_zero():
    """A nonnegative divergence with a density at zero is below ``eps`` with a probability
    near ``eps`` times that density: the lower tail fitted in ``log(d + resolution)``
    follows that power law; fitted in ``d`` it is capped at ``e^(-u / scale)``, so an input
    whose output never moves is barely more suspect than one that moves a little."""
    rng = np.random.default_rng(0)
    trusted = calibration.sorted_columns(rng.exponential(size=(4000, 1)))
    d = np.array([[0.0], [1e-3], [1e-2], [5.0]])
    exp = calibration.log_p_values(d, trusted, 1e-4, lower_tail="exponential")[:, 0]
    log = calibration.log_p_values(d, trusted, 1e-4, lower_tail="log")[:, 0]
    truth = np.log(2 * (1 - np.exp(-np.maximum(d[:3, 0], 1e-4))))  # two-sided, at the resolution
    assert np.all(np.abs(log[:3] - truth) < 1.5) and exp[0] > truth[0] + 4
    assert log[0] < log[1] < log[2] and log[3] == exp[3]  # ordered; the upper tail untouched
    # ties: where 5 % of trusted divergences are exactly 0, a 0 is never rarer than that
    tied = calibration.sorted_columns(np.r_[np.zeros(50), rng.exponential(size=950)][:, None])
    at_zero = calibration.log_p_values(np.array([[0.0]]), tied, 1e-4)[0, 0]
    assert at_zero == pytest.approx(np.log(2 * 51 / 1001))
    with pytest.raises(ValueError, match="lower_tail must be one of"):
        calibration.log_p_values(d, trusted, 1e-3, lower_tail="pareto")


def test_simes_ignores_untestable_cells_and_ties_with_trusted():
    lp = np.log(np.array([[0.01, 1.0, np.nan], [0.01, 0.5, 0.5]]))
    assert calibration.simes(lp[:1]) == pytest.approx(np.log(0.01))  # one informative cell
    assert calibration.simes(lp[1:]) == pytest.approx(np.log(0.03))
    assert calibration.simes(np.zeros((2, 0))).tolist() == [0.0, 0.0]


def dilution_setup() -> tuple[torch.Tensor, torch.Tensor, np.ndarray, list[Explanation]]:
    """Trusted inputs, 100 normal and 100 weakly flagged inputs with their labels, and 100
    explanations that provably do not matter (the ``a - b`` direction of ``enc``)."""
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
    return trusted, x, labels, nulls


@pytest.mark.parametrize("aggregation", ["calibrated", "max-z"])
def test_appending_100_explanations_that_do_not_matter_moves_the_auroc_by_less_than_a_hundredth(
    aggregation, monkeypatch
):
    """The planted model reads ``a + b`` and the flag, never ``a - b``: scrubbing the
    ``a - b`` direction of ``enc`` from any trusted source provably changes nothing. A
    weak flag (0.01: the answer moves by 0.05) keeps the AUROC below 1, where dilution
    would show."""
    import causalmad.detectors.scrubbing as scrubbing_detector

    trusted, x, labels, nulls = dilution_setup()

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


def test_batch_weights_follow_the_columns_that_show_signal_on_the_batch():
    rng = np.random.default_rng(0)
    lp = np.log(rng.uniform(size=(600, 5)))
    lp[:200, 3] = np.log(rng.uniform(0, 1e-3, size=200))  # a third of the batch is caught by column 3
    lp[:, 4] = np.nan  # an untestable column
    w = calibration.batch_weights(lp)
    assert w.mean() == pytest.approx(1.0) and w[4] == 0.0
    assert w[3] > 4 * w[:3].max() and w[3] <= 5.0
    # Storey's conservative estimate by hand for column 3: 1 + #{p > 1/2} over 600 * (1 - 1/2)
    pi0 = min(1.0, (1 + np.sum(lp[:, 3] > np.log(0.5))) / 300)
    raw = [(1 - min(1.0, (1 + np.sum(lp[:, j] > np.log(0.5))) / 300)) for j in range(4)]
    raw = [r / (1 - r) for r in raw]
    assert w[3] == pytest.approx((1 - pi0) / pi0 / (sum(raw) / 5))
    # a batch with no signal anywhere: every weight 1, and the weighted test is the flat one
    null = np.zeros((50, 4))  # p = 1 everywhere
    np.testing.assert_array_equal(calibration.batch_weights(null), np.ones(4))
    np.testing.assert_allclose(
        calibration.weighted_simes(lp[:, :4], np.ones(4)), calibration.simes(lp[:, :4])
    )
    with pytest.raises(ValueError, match="lam"):
        calibration.batch_weights(lp, lam=1.0)


def test_the_weighted_test_joins_the_combination_at_three_times_and_stays_valid_on_null_inputs():
    rng = np.random.default_rng(1)
    families = ["one"] + ["many"] * 20 + ["noise"] * 9
    # weights fitted on one null batch, applied to independent null inputs
    w = calibration.batch_weights(np.log(rng.uniform(size=(300, 30))))
    lp = np.log(rng.uniform(size=(20000, 30)))
    combined = calibration.combine(lp, families, weights=w)
    three = np.minimum(
        np.minimum(calibration.by_family(lp, families), calibration.simes(lp)),
        calibration.weighted_simes(lp, w),
    )
    np.testing.assert_allclose(combined, np.log(3.0) + three)
    for a in (0.01, 0.05, 0.2):
        assert np.mean(combined <= np.log(a)) <= a * 1.1
    # a signal the weights point at: column 5 alone, weight 30 (all the mass)
    one = np.log(np.full((1, 30), 0.5))
    one[0, 5] = np.log(1e-3)
    focus = np.zeros(30)
    focus[5] = 30.0
    # weighted Bonferroni at its sharpest: E p / w = 30 * 1e-3 / 30
    assert calibration.combine(one, families, weights=focus)[0] == pytest.approx(np.log(3 * 1e-3))


def test_weighting_by_an_unlabeled_batch_finds_the_one_column_among_many_that_carries_the_signal():
    """500 columns, the signal in one: unweighted, Simes pays for all 500; weighted by a
    batch in which a third of the inputs are anomalous, it pays for far fewer."""
    rng = np.random.default_rng(2)
    n, e = 600, 500
    labels = np.r_[np.zeros(400), np.ones(200)]
    lp = np.log(rng.uniform(size=(n, e)))
    lp[400:, 7] = np.log(rng.uniform(0, 0.02, size=200))
    families = ["f"] * e
    w = calibration.batch_weights(lp)
    before = roc_auc_score(labels, -calibration.combine(lp, families))
    after = roc_auc_score(labels, -calibration.combine(lp, families, weights=w))
    assert after > before + 0.2


def test_adapting_to_an_unlabeled_batch_weights_the_columns_and_keeps_scores_per_input(monkeypatch, tmp_path):
    """The dilution setup above with 100 null explanations: adapted to the batch, the
    nulls weigh little, the scores stay per input, and the weights persist."""
    import causalmad.detectors.scrubbing as scrubbing_detector

    trusted, x, labels, nulls = dilution_setup()
    original = scrubbing_detector.hypothesis_free_explanations
    monkeypatch.setattr(
        scrubbing_detector, "hypothesis_free_explanations", lambda *a, **k: original(*a, **k) + nulls
    )

    def make() -> cm.ScrubbingDetector:
        return cm.ScrubbingDetector(
            PlantedSum(), sum_hypothesis(), resamples=4, hypothesis_free=True, random_state=0
        )

    det = make().fit(trusted)
    assert "column_weights_" not in vars(det)  # fitted on trusted inputs alone: no weights
    unweighted, threshold = det.score(x), det.threshold_
    np.testing.assert_array_equal(unweighted, det.combine(det.divergences(x)))
    det.adapt(x)
    w = det.column_weights_
    null = np.array([n.startswith("null") for n in det.column_names_])
    assert w.mean() == pytest.approx(1.0) and w[null].max() < w[~null].max()
    weighted = det.score(x)  # reuses the divergences adapt computed
    # the benchmark's ablation recomputes the score, and the score without the weights,
    # from the same divergences
    from causalmad.evaluation import scrubbing_variants

    div = det.divergences(x)
    variants = scrubbing_variants(det, div)
    np.testing.assert_array_equal(variants["all"], weighted)
    np.testing.assert_array_equal(variants["no batch weights"], unweighted)
    np.testing.assert_array_equal(
        variants["no pieces"], det.combine(div, np.asarray(det.families_) != "hypothesis-pieces")
    )
    assert "no input cut" in variants and variants["max-z"].shape == weighted.shape
    assert np.isfinite(variants["exponential tail"]).all() and np.isfinite(variants["pareto tail"]).all()
    assert det.threshold_ != threshold and det.threshold_ == det.threshold(0.01)
    assert roc_auc_score(labels, weighted) >= roc_auc_score(labels, unweighted) - 0.005
    # per input: the same scores in another order and another batch, computed afresh
    np.testing.assert_array_equal(det.score(x.flip(0)).copy()[::-1], weighted)
    np.testing.assert_array_equal(det.score(x[:7]), weighted[:7])
    # fit(trusted, untrusted=x) is fit then adapt
    np.testing.assert_array_equal(make().fit(trusted, untrusted=x).score(x), weighted)
    # the weights and the threshold persist
    det.save(tmp_path / "det")
    loaded = cm.load_detector(tmp_path / "det", PlantedSum(), hypothesis=sum_hypothesis())
    np.testing.assert_array_equal(loaded.column_weights_, w)
    assert loaded.threshold_ == det.threshold_
    np.testing.assert_array_equal(loaded.score(x), weighted)
    # refitting without a batch drops them; weight_by_batch=False never sets them
    det.fit(trusted)
    assert "column_weights_" not in vars(det)
    np.testing.assert_array_equal(det.score(x), unweighted)
    off = make().set_params(weight_by_batch=False).fit(trusted, untrusted=x)
    assert "column_weights_" not in vars(off)
    np.testing.assert_array_equal(off.score(x), unweighted)
    with pytest.raises(cm.InputError, match="empty"):
        det.adapt(x[:0])
    # the stored arrays give what a detector fitted with other tails and combination scores
    det.adapt(x)
    arrays = scrubbing_arrays(det, det.divergences(x))
    for upper, lower, how in [("exponential", "exponential", "flat"), ("pareto", "log", "by-family")]:
        other = det.set_params(upper_tail=upper, lower_tail=lower, combination=how).adapt(x)
        scores, heldout = rescore_scrubbing(arrays, upper, lower, how)
        np.testing.assert_array_equal(scores, other.score(x))
        np.testing.assert_array_equal(heldout, other.heldout_scores_)
    keep = np.asarray(det.families_) != "hypothesis-free"
    np.testing.assert_array_equal(
        rescore_scrubbing(arrays, "pareto", "log", "by-family", columns=keep)[0],
        det.combine(det.divergences(x), keep),
    )
    with pytest.raises(cm.InputError, match="max-z"):
        scrubbing_arrays(det.set_params(aggregation="max-z"), det.divergences(x))
