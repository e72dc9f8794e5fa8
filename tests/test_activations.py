"""Activation baselines under numerical failure: where a decomposition does not converge,
the detector falls back to a sturdier one, says so in a warning, and scores as before."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import PlantedSum

import causalmad as cm
from causalmad.detectors import activations
from causalmad.errors import CausalMADWarning, InputError

LinAlgError = np.linalg.LinAlgError


def fails(*args, **kwargs):
    raise LinAlgError("SVD did not converge")


def features(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / np.sqrt(d)


def site_scores(name: str, trusted: np.ndarray, untrusted: np.ndarray, probe: np.ndarray) -> np.ndarray:
    det = cm.DETECTORS[name](PlantedSum())
    return det._score_site(det._fit_site(trusted, untrusted), probe)


WIDE = (features(20, 50, 0), features(30, 50, 1) + 0.3, features(15, 50, 2))  # d > n: the in-span paths
NARROW = (features(200, 6, 0), features(80, 6, 1) + 0.3, features(15, 6, 2))
CASES = [  # (detector, data, what fails, the warning's words)
    ("que", WIDE, [(np.linalg, "svd")], "used LAPACK's gesvd driver"),
    (
        "que",
        WIDE,
        [(np.linalg, "svd"), (scipy.linalg, "svd")],
        "used the eigendecomposition of its Gram matrix",
    ),
    ("que", WIDE, [(np.linalg, "eigh")], "used LAPACK's QR-iteration driver"),
    ("que", NARROW, [(np.linalg, "eigh")], "used LAPACK's QR-iteration driver"),
    ("mahalanobis", NARROW, [(scipy.linalg, "pinvh")], "a pseudo-inverse from a sturdier eigendecomposition"),
    ("mahalanobis", NARROW, [(scipy.linalg, "pinvh"), (np.linalg, "eigh")], "QR-iteration driver"),
    ("mahalanobis", WIDE, [(np.linalg, "eigh")], "used LAPACK's QR-iteration driver"),
    ("spectral-signature", NARROW, [(np.linalg, "svd")], "used LAPACK's gesvd driver"),
]


@pytest.mark.hostile("numerics: a decomposition that does not converge", "correct result, with a warning")
@pytest.mark.parametrize(
    "name, data, failing, words",
    CASES,
    ids=[
        f"{c[0]}-{'+'.join(m.__name__.split('.')[0] + '.' + f for m, f in c[2])}-{i}"
        for i, c in enumerate(CASES)
    ],
)
def test_a_failed_decomposition_falls_back_and_says_so(name, data, failing, words, monkeypatch):
    expected = site_scores(name, *data)
    for module, function in failing:
        monkeypatch.setattr(module, function, fails)
    with pytest.warns(CausalMADWarning, match=words) as record:
        got = site_scores(name, *data)
    assert all("did not converge" in str(w.message) for w in record)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.hostile("numerics: a decomposition that does not converge", "correct result, with a warning")
def test_shrinkage_is_the_last_fallback_and_then_an_error(monkeypatch):
    m = np.cov(features(40, 5, 0), rowvar=False)
    real = scipy.linalg.eigh
    calls = []

    def first_fails(a, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise LinAlgError("did not converge")
        return real(a, *args, **kwargs)

    monkeypatch.setattr(np.linalg, "eigh", fails)
    monkeypatch.setattr(scipy.linalg, "eigh", first_fails)
    with pytest.warns(CausalMADWarning, match=r"used shrinkage \(the matrix plus .* times the identity\)"):
        lam, _ = activations.eigh(m, "a covariance")
    np.testing.assert_allclose(lam, np.linalg.eigvalsh(m) + 1e-6 * np.diag(m).mean(), rtol=1e-9)
    monkeypatch.setattr(scipy.linalg, "eigh", fails)
    with (
        pytest.warns(CausalMADWarning),
        pytest.raises(InputError, match="a covariance: no eigendecomposition converged"),
    ):
        activations.eigh(m, "a covariance")


def test_a_fitted_detector_names_what_failed_and_scores_as_before(monkeypatch):
    from conftest import planted_data

    trusted = planted_data(300, 0, 0, 0.05)
    x = torch.cat([planted_data(30, 0, 3, 0.05), planted_data(30, 1, 4, 0.05)])
    expected = cm.MahalanobisDetector(PlantedSum()).fit(trusted).score(x)
    monkeypatch.setattr(scipy.linalg, "pinvh", fails)
    with pytest.warns(
        CausalMADWarning, match="Mahalanobis: the shrunk covariance of the trusted activations"
    ):
        scores = cm.MahalanobisDetector(PlantedSum()).fit(trusted).score(x)
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-6)
