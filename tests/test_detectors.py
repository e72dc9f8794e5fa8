"""The detector contract, run over every registered detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import planted_data

import causalmad as cm

DETECTOR_NAMES = sorted(cm.DETECTORS)


def make(name, planted):
    model, h = planted
    if name == "scrubbing":
        return cm.ScrubbingDetector(model, hypothesis=h, resamples=2, random_state=0)
    return cm.DETECTORS[name](model, random_state=0)


@pytest.fixture
def data():
    jitter = 0.05
    return planted_data(300, 0, 0, jitter), torch.cat([planted_data(60, 0, 3, jitter), planted_data(60, 1, 4, jitter)])


@pytest.mark.parametrize("name", DETECTOR_NAMES)
def test_contract(name, planted, data):
    trusted, untrusted = data
    trusted_copy, untrusted_copy = trusted.clone(), untrusted.clone()
    det = make(name, planted)
    with pytest.raises(cm.NotFittedError, match="fit"):
        det.score(untrusted)
    assert det.fit(trusted) is det
    scores = det.score(untrusted)
    assert scores.shape == (len(untrusted),) and np.isfinite(scores).all()
    assert scores[60:].mean() > scores[:60].mean()  # higher = more anomalous on the planted anomaly
    again = make(name, planted).fit(trusted).score(untrusted)
    np.testing.assert_array_equal(scores, again)  # same seed, same scores
    np.testing.assert_array_equal(scores, det.score(untrusted))  # scoring twice changes nothing
    assert torch.equal(trusted, trusted_copy) and torch.equal(untrusted, untrusted_copy)
    flags = det.predict(untrusted, fpr=0.05)
    assert flags.dtype == bool and flags[60:].mean() > flags[:60].mean()


@pytest.mark.parametrize("name", DETECTOR_NAMES)
def test_bad_inputs_raise_before_any_forward_pass(name, planted, data):
    trusted, _ = data
    det = make(name, planted)
    with pytest.raises(cm.InputError, match="empty"):
        det.fit(trusted[:0])
    with pytest.raises(cm.InputError, match="at least"):
        det.fit(trusted[:5])
    nan = trusted.clone()
    nan[3, 1] = float("nan")
    with pytest.raises(cm.InputError, match="NaN"):
        det.fit(nan)
    det.fit(trusted)
    with pytest.raises(cm.InputError, match="shape"):
        det.score(torch.zeros(4, 5))
    with pytest.raises(cm.InputError, match="fpr"):
        det.predict(trusted, fpr=2.0)


def test_registry_rejects_duplicate_names():
    with pytest.raises(ValueError, match="already registered"):
        cm.detectors.register("scrubbing")(type("Other", (cm.Detector,), {}))
