"""The detector contract, run over every registered detector (baselines and skyline too)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from conftest import planted_data

import causalmad as cm
from causalmad.detectors.activations import QUEDetector

DETECTOR_NAMES = sorted(cm.DETECTORS)
LABELS = np.r_[np.zeros(60, dtype=int), np.ones(60, dtype=int)]


def make(name, planted, **kwargs):
    model, h = planted
    cls = cm.DETECTORS[name]
    if name == "scrubbing":
        kwargs.setdefault("resamples", 2)
    if "hypothesis" in inspect.signature(cls).parameters:
        kwargs["hypothesis"] = h
    return cls(model, random_state=0, **kwargs)


def fit_kwargs(name, untrusted, labels=LABELS):
    """What ``fit`` takes besides the trusted inputs: the unlabeled untrusted batch for
    detectors that need it, and anomaly labels for the skyline."""
    cls = cm.DETECTORS[name]
    kw = {}
    if cls.needs_untrusted:
        kw["untrusted"] = untrusted
    if cls.skyline:
        kw["labels"] = labels
    return kw


@pytest.fixture
def data():
    """Trusted inputs, and 60 normal + 60 anomalous untrusted ones. The anomalies' flag is
    3 (the backdoor shifts the answer by 15), so the shift dominates the untrusted batch's
    variance and even the spectral signature, which sees only the batch's top direction,
    can see it: the contract checks each detector's orientation, not its power."""
    jitter = 0.05
    return planted_data(300, 0, 0, jitter), torch.cat(
        [planted_data(60, 0, 3, jitter), planted_data(60, 3, 4, jitter)]
    )


@pytest.mark.parametrize("name", DETECTOR_NAMES)
def test_contract(name, planted, data):
    trusted, untrusted = data
    trusted_copy, untrusted_copy = trusted.clone(), untrusted.clone()
    labels = LABELS.copy()
    det = make(name, planted)
    with pytest.raises(cm.NotFittedError, match="fit"):
        det.score(untrusted)
    assert det.fit(trusted, **fit_kwargs(name, untrusted, labels)) is det
    scores = det.score(untrusted)
    assert scores.shape == (len(untrusted),) and np.isfinite(scores).all()
    assert scores[60:].mean() > scores[:60].mean()  # higher = more anomalous on the planted anomaly
    again = make(name, planted).fit(trusted, **fit_kwargs(name, untrusted)).score(untrusted)
    np.testing.assert_array_equal(scores, again)  # same seed, same scores
    np.testing.assert_array_equal(scores, det.score(untrusted))  # scoring twice changes nothing
    assert torch.equal(trusted, trusted_copy) and torch.equal(untrusted, untrusted_copy)
    assert np.array_equal(labels, LABELS)
    flags = det.predict(untrusted, fpr=0.05)
    assert flags.dtype == bool and flags[60:].mean() > flags[:60].mean()


@pytest.mark.parametrize("name", DETECTOR_NAMES)
def test_bad_inputs_raise_before_any_forward_pass(name, planted, data):
    trusted, untrusted = data
    kw = fit_kwargs(name, untrusted)
    det = make(name, planted)
    with pytest.raises(cm.InputError, match="empty"):
        det.fit(trusted[:0], **kw)
    with pytest.raises(cm.InputError, match="at least"):
        det.fit(trusted[:5], **kw)
    nan = trusted.clone()
    nan[3, 1] = float("nan")
    with pytest.raises(cm.InputError, match="NaN"):
        det.fit(nan, **kw)
    det.fit(trusted, **kw)
    with pytest.raises(cm.InputError, match="shape"):
        det.score(torch.zeros(4, 5))
    with pytest.raises(cm.InputError, match="fpr"):
        det.predict(trusted, fpr=2.0)


@pytest.mark.parametrize("name", DETECTOR_NAMES)
def test_untrusted_batch_is_required_exactly_where_it_is_used(name, planted, data):
    trusted, untrusted = data
    det = make(name, planted)
    if det.needs_untrusted:
        with pytest.raises(cm.InputError, match="untrusted batch"):
            det.fit(trusted)
    elif det.accepts_untrusted:  # optional: fits with and without one
        assert "column_weights_" not in vars(det.fit(trusted))
        assert "column_weights_" in vars(det.fit(trusted, untrusted=untrusted))
    else:
        with pytest.raises(cm.InputError, match="trusted inputs only"):
            det.fit(trusted, untrusted=untrusted)


def _plain(value):
    """Whether ``value`` is state the generic persistence can store: arrays, tensors, plain
    Python values and causalmad records, nested in lists, tuples and dicts."""
    if isinstance(
        value, (np.ndarray, torch.Tensor, np.generic, str, int, float, bool, type(None), cm.Site, cm.Readout)
    ):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


BASELINES = [n for n in DETECTOR_NAMES if n != "scrubbing"]


@pytest.mark.parametrize("name", BASELINES)
def test_fitted_state_is_plain_and_restores_to_identical_scores(name, planted, data):
    trusted, untrusted = data
    det = make(name, planted).fit(trusted, **fit_kwargs(name, untrusted))
    state = {k: v for k, v in det.__dict__.items() if k.endswith("_") and k not in det._transient}
    # the adapter wraps the model, which persistence handles on its own
    assert all(_plain(v) for k, v in state.items() if k != "adapter_"), {
        k: type(v).__name__ for k, v in state.items() if not _plain(v)
    }
    det2 = make(name, planted)
    det2.__dict__.update(state)
    det2._restore()
    np.testing.assert_array_equal(det.score(untrusted), det2.score(untrusted))


@pytest.mark.parametrize("name", BASELINES)
def test_scores_do_not_depend_on_the_scored_batch(name, planted, data):
    trusted, untrusted = data
    det = make(name, planted).fit(trusted, **fit_kwargs(name, untrusted))
    batched = det.score(untrusted[:20])
    one_by_one = np.array([det.score(untrusted[i : i + 1])[0] for i in range(20)])
    np.testing.assert_allclose(one_by_one, batched, rtol=1e-9, atol=1e-9)


def test_que_with_alpha_zero_is_the_trusted_mahalanobis_distance_to_the_untrusted_mean():
    rng = np.random.default_rng(0)
    trusted = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
    untrusted = rng.normal(size=(100, 5)) + 3.0
    det = QUEDetector(torch.nn.Linear(1, 1), alpha=0.0)
    state = det._fit_site(trusted, untrusted)
    from sklearn.covariance import LedoitWolf

    precision = np.linalg.inv(LedoitWolf().fit(trusted).covariance_)
    c = untrusted - untrusted.mean(0)
    expected = np.einsum("nd,de,ne->n", c, precision, c) / 5
    np.testing.assert_allclose(det._score_site(state, untrusted), expected, rtol=1e-8)


def test_que_weights_the_direction_the_untrusted_batch_inflates():
    rng = np.random.default_rng(1)
    trusted = rng.normal(size=(2000, 6))
    untrusted = rng.normal(size=(400, 6))
    untrusted[:40, 2] += 6.0  # 10 % of the batch shifted along coordinate 2
    det = QUEDetector(torch.nn.Linear(1, 1), alpha=4.0)
    state = det._fit_site(trusted, untrusted)
    assert state["weights"].sum() == pytest.approx(1.0)
    top = state["projection"][:, state["weights"].argmax()]
    assert abs(top[2]) / np.linalg.norm(top) > 0.9
    scores = det._score_site(state, untrusted)
    assert scores[:40].min() > np.median(scores[40:])


def test_output_disagreement_is_zero_where_the_model_follows_the_hypothesis(planted, data):
    trusted, untrusted = data
    det = make("output-disagreement", planted).fit(trusted)
    scores = det.score(untrusted)
    assert scores[:60].max() < 0.1 < 10 < scores[60:].min()  # the backdoor moves the answer by 5
    with pytest.raises(cm.HypothesisError, match="hypothesis"):
        cm.OutputDisagreementDetector(planted[0]).fit(trusted)


def test_skyline_needs_labels_and_reports_out_of_fold_scores(planted, data):
    trusted, untrusted = data
    det = make("supervised-probe", planted)
    with pytest.raises(cm.InputError, match="labels"):
        det.fit(trusted, untrusted=untrusted)
    with pytest.raises(cm.InputError, match="one 0/1 label"):
        det.fit(trusted, untrusted=untrusted, labels=LABELS[:-1])
    det.fit(trusted, untrusted=untrusted, labels=LABELS)
    oof = det.cross_val_scores_
    assert oof.shape == (len(untrusted),) and np.isfinite(oof).all()
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(LABELS, oof) > 0.95


def test_skyline_on_wide_features_reaches_the_same_optimum_in_the_span_of_its_rows(planted):
    """With far more features than rows the probe is fitted in the rows' span (the
    representer theorem): its weights lie in that span and its objective is at most what
    a solver on all features reaches."""
    from sklearn.linear_model import LogisticRegression

    g = np.random.default_rng(0)
    x = g.normal(size=(40, 2000))
    y = (x[:, :5].sum(1) + 0.5 * g.normal(size=40) > 0).astype(float)
    det = make("supervised-probe", planted)
    w, b = det._probe(x, y)

    def objective(w, b):
        weight = (len(y) / (2 * np.bincount(y.astype(int))))[y.astype(int)]  # class_weight="balanced"
        return 0.5 * w @ w + det.C * np.sum(weight * np.logaddexp(0, -(2 * y - 1) * (x @ w + b)))

    direct = LogisticRegression(C=det.C, class_weight="balanced", max_iter=5000, tol=1e-10).fit(x, y)
    assert objective(w, b) <= objective(direct.coef_[0], direct.intercept_[0]) + 1e-6
    np.testing.assert_allclose(w, direct.coef_[0], atol=1e-3 * np.abs(w).max())
    in_span = x.T @ np.linalg.lstsq(x.T, w, rcond=None)[0]
    np.testing.assert_allclose(in_span, w, atol=1e-8 * np.abs(w).max())


def test_registry_rejects_duplicate_names():
    with pytest.raises(ValueError, match="already registered"):
        cm.detectors.register("scrubbing")(type("Other", (cm.Detector,), {}))


def test_mahalanobis_on_wide_activations_equals_ledoit_wolf_without_d_by_d_matrices():
    """Wider than trusted rows (a transformer's positions x width): the Gram-matrix path
    gives scikit-learn's Ledoit-Wolf precision's distances, with d-independent state."""
    from sklearn.covariance import LedoitWolf

    from causalmad.detectors.activations import MahalanobisDetector, _ledoit_wolf_in_span

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 200)) @ rng.normal(size=(200, 200)) * 0.1 + rng.normal(size=200)
    y = rng.normal(size=(30, 200))
    lw = LedoitWolf().fit(x)
    expected = (((y - lw.location_) @ lw.precision_) * (y - lw.location_)).sum(1)
    state = _ledoit_wolf_in_span(x)
    assert state["basis"].shape == (200, 59)  # rank n - 1 after centring: no 200 x 200 matrix
    np.testing.assert_allclose(MahalanobisDetector._score_site(None, state, y), expected, rtol=1e-9)


def test_que_on_wide_activations_equals_the_eigenvector_form():
    """QUE for d > n from factors (no d x d matrix) gives the d x d computation's scores."""
    from causalmad.detectors import activations as a

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 200)) @ rng.normal(size=(200, 200)) * 0.1 + rng.normal(size=200)
    u = rng.normal(size=(40, 200)) @ rng.normal(size=(200, 200)) * 0.1 + 0.3
    y = rng.normal(size=(30, 200))
    mean, w = a._whitening(x)
    s, vecs = np.linalg.eigh(np.cov((u - mean) @ w, rowvar=False, bias=True))
    e = 4.0 * (s - 1) / (s.max() - 1)
    weights = np.exp(e - e.max()) / np.exp(e - e.max()).sum()
    expected = (((y - u.mean(0)) @ (w @ vecs)) ** 2) @ weights
    det = a.QUEDetector.__new__(a.QUEDetector)
    det.alpha = 4.0
    state = det._fit_site(x, u)
    assert "projection" not in state and state["directions"].shape[0] == 200
    np.testing.assert_allclose(det._score_site(state, y), expected, rtol=1e-9)


def test_hypothesis_free_claims_join_only_without_a_hypothesis_unless_asked(planted, data):
    model, h = planted
    trusted, _ = data

    def families(**kwargs):
        det = cm.ScrubbingDetector(model, resamples=2, random_state=0, **kwargs).fit(trusted)
        return set(det.families_)

    assert "hypothesis-free" not in families(hypothesis=h)  # "auto": the hypothesis' own claims
    assert "hypothesis-free" in families(hypothesis=h, hypothesis_free=True)
    assert families() == {"hypothesis-free"}  # without a hypothesis they are all there is
    # no variable reaches the IIA bar and no output is read at a position: the hypothesis
    # has no claim of its own, and the hypothesis-free ones are all there is again
    assert "hypothesis-free" in families(hypothesis=h, min_iia=1.01)
    for bad, message in (
        ({"hypothesis_free": "yes"}, "hypothesis_free must be True, False or 'auto'"),
        ({"hypothesis_free": False}, "leaves no explanation without a hypothesis"),
    ):
        with pytest.raises(cm.InputError, match=message):
            cm.ScrubbingDetector(model, **bad).fit(trusted)
