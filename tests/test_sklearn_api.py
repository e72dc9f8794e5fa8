"""Every registered detector speaks scikit-learn: get_params / set_params / repr, clone,
check_is_fitted, decision_function and threshold_, and the estimator checks that apply.

scikit-learn's checks that do NOT apply, and why (``check_estimator`` runs them all):

- every check that fits or scores a random ``X`` (``check_fit2d_*``, ``check_fit1d``,
  ``check_estimators_dtypes``, ``_nan_inf``, ``_empty_data_messages``, ``_overwrite_params``,
  ``check_dont_overwrite_parameters``, ``check_fit_idempotent``, ``check_n_features_in*``,
  ``check_methods_*_invariance``, the sparse, dataframe and array-API checks, the
  ``sample_weight`` checks): a detector's ``fit`` takes inputs to a *model* (token ids,
  images, any tensor the model accepts), not a feature table, and needs at least
  ``min_trusted`` rows. What they protect is checked by the contract suite in
  ``tests/test_detectors.py`` (fit returns self, not-fitted error, bad inputs raise before
  any forward pass, determinism, inputs not mutated) and ``tests/test_persistence.py``.
- ``check_outliers_*``, ``check_outlier_contamination``, ``check_outlier_corruption``:
  scikit-learn's outlier detectors predict -1/+1 and their ``decision_function`` is
  *negative* for outliers; causalmad follows PyOD (higher = more anomalous, ``predict``
  gives booleans) and takes the threshold from a false-positive rate, not a contamination.
- the classifier, regressor, clusterer and transformer checks: a detector is none of these.
- ``check_estimators_pickle``: detectors are saved as a folder of JSON and safetensors,
  never pickled (``Detector.save``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import planted_data
from sklearn.base import clone
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.utils import estimator_checks
from sklearn.utils.validation import check_is_fitted

import causalmad as cm
from causalmad.detectors.base import DEFAULT_FPR

DETECTOR_NAMES = sorted(cm.DETECTORS)
CHECKS = [
    "check_estimator_cloneable",
    "check_estimator_repr",
    "check_no_attributes_set_in_init",
    "check_get_params_invariance",
    "check_set_params",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_parameters_default_constructible",
    "check_estimator_tags_renamed",
    "check_valid_tag_types",
    "check_mixin_order",
]
#: a non-default value of some constructor argument of each detector
CHANGED = {
    "scrubbing": {"resamples": 2, "split": (0.25, 0.25, 0.25, 0.25)},
    "lof": {"n_neighbors": 5},
    "isolation-forest": {"n_estimators": 10},
    "que": {"alpha": 2.0},
    "supervised-probe": {"C": 0.5},
    "output-disagreement": {"batch_size": 64},
    "mahalanobis": {"aggregate": "mean"},
    "spectral-signature": {"heldout_fraction": 0.3},
}


def test_every_registered_detector_has_a_changed_argument_here():
    assert set(CHANGED) == set(DETECTOR_NAMES)


@pytest.mark.parametrize("name", DETECTOR_NAMES)
def test_clone_copies_the_arguments_shares_the_model_and_is_unfitted(name, planted):
    model, h = planted
    cls = cm.DETECTORS[name]
    kwargs = dict(CHANGED[name], random_state=3)
    if "hypothesis" in cls._param_names():
        kwargs["hypothesis"] = h
    det = cls(model, **kwargs)
    params = det.get_params()
    assert list(params) == cls._param_names()  # every __init__ argument, stored under its name
    copy = clone(det)
    assert type(copy) is cls and copy is not det and copy.model is model
    for key, value in CHANGED[name].items():
        assert copy.get_params()[key] == value
    assert copy.random_state == 3
    if "hypothesis" in kwargs:  # deep-copied, as clone does, and the same declaration
        assert copy.hypothesis is not h and copy.hypothesis.values([1, 2, 0]) == h.values([1, 2, 0])
    with pytest.raises(SklearnNotFittedError):
        check_is_fitted(copy)
    text = repr(det)
    assert text.startswith(f"{cls.__name__}(model={type(model).__name__}(...)")
    for key, value in CHANGED[name].items():
        assert f"{key}={value!r}" in text
    assert "\n" not in text and "batch_size=1024" not in text  # defaults are left out


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("name", DETECTOR_NAMES)
def test_scikit_learn_estimator_checks_that_apply(name, check, planted):
    getattr(estimator_checks, check)(name, cm.DETECTORS[name](planted[0]))


def test_set_params_sets_arguments_and_names_close_matches(planted):
    det = cm.LOFDetector(planted[0])
    assert det.set_params(n_neighbors=7, aggregate="mean") is det
    assert (det.n_neighbors, det.aggregate) == (7, "mean")
    with pytest.raises(cm.InputError, match="Did you mean 'n_neighbors'"):
        det.set_params(n_neigbors=3)
    with pytest.raises(cm.InputError, match="no set_params"):
        det.set_params(aggregate__x=1)
    assert det.set_params() is det


def test_decision_function_is_the_score_and_threshold_is_set_at_fit(planted, tmp_path):
    model, _ = planted
    trusted, untrusted = planted_data(200, 0, 0, 0.05), planted_data(40, 3, 1, 0.05)
    det = cm.MahalanobisDetector(model)
    assert not hasattr(det, "threshold_")
    det.fit(trusted)
    check_is_fitted(det)
    scores = det.score(untrusted)
    np.testing.assert_array_equal(det.decision_function(untrusted), scores)
    assert det.threshold_ == det.threshold(DEFAULT_FPR)
    np.testing.assert_array_equal(det.predict(untrusted), scores > det.threshold_)
    loaded = cm.load_detector(det.save(tmp_path / "det"), model)
    assert loaded.threshold_ == det.threshold_
    assert not hasattr(clone(det), "threshold_")


def test_clone_of_a_fitted_detector_fits_to_the_same_scores(planted):
    model, _ = planted
    trusted, untrusted = planted_data(200, 0, 0, 0.05), planted_data(40, 3, 1, 0.05)
    det = cm.IsolationForestDetector(model, n_estimators=20, random_state=1).fit(trusted)
    again = clone(det).fit(trusted)
    np.testing.assert_array_equal(again.score(untrusted), det.score(untrusted))
    assert torch.equal(trusted, planted_data(200, 0, 0, 0.05))
