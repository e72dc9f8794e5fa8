"""Activation-anomaly baselines: a per-site outlier score on activations.

Each detector reads activations at a few sites (by default the residual stream before each
layer and after the last, all positions flattened; for plain modules every leaf module),
fits one outlier model per site, standardises each site's score on the trusted fit split
and aggregates across sites by ``max`` or ``mean`` (per-site scores then aggregation, as
in cupbearer). Higher = more anomalous for every one of them.

* [`MahalanobisDetector`][causalmad.MahalanobisDetector] — squared Mahalanobis distance
  under a Ledoit-Wolf shrunk covariance (a stable, well-conditioned precision matrix; Lee et
  al., NeurIPS 2018).
* [`LOFDetector`][causalmad.LOFDetector] — local outlier factor (Breunig et al., SIGMOD 2000), novelty mode.
* [`IsolationForestDetector`][causalmad.IsolationForestDetector] — isolation forest (Liu et al., ICDM 2008).
* [`QUEDetector`][causalmad.QUEDetector] — quantum-entropy scoring (Dong, Hopkins & Li, NeurIPS 2019) of
  activations whitened with the trusted covariance, under the whitened covariance of an
  unlabeled untrusted batch given at fit time.
* [`SpectralSignatureDetector`][causalmad.SpectralSignatureDetector] — squared projection on
  the top singular direction of the centred untrusted activations (Tran, Li & Madry, NeurIPS
  2018).

Every decomposition (the eigendecompositions behind whitening and the precision matrix,
the SVDs of QUE's wide path and of the spectral signature) falls back to a more stable
LAPACK driver where the default one fails to converge, and then to a shrunk matrix,
with a [`CausalMADWarning`][causalmad.errors.CausalMADWarning] saying which fallback was taken.

Fitting a site yields a *state*: a dict of numpy arrays (the trusted fit features for LOF
and the isolation forest). The scikit-learn estimators are rebuilt from that state by
``ActivationDetector._restore``, deterministically, so persistence stores arrays only.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np
import scipy.linalg
import torch
from sklearn.covariance import LedoitWolf
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor

from causalmad.detectors.base import Detector, register, split_indices
from causalmad.errors import CausalMADWarning, InputError
from causalmad.interventions import capture
from causalmad.sites import Site

SiteState = dict[str, np.ndarray]


def default_hooks(adapter: Any) -> list[str]:
    """Residual-stream hooks of a transformer (every leaf module of a plain network)."""
    return [h.name for h in adapter.candidate_hooks() if h.component in ("resid_pre", "resid_post", "module")]


class ActivationDetector(Detector):
    """Per-site outlier scores of activations, standardised and aggregated.

    Args:
        model: the network (or an adapter).
        hooks: hooks to read (default: residual-stream hooks, or every leaf module).
        aggregate: ``"max"`` or ``"mean"`` over sites.
        heldout_fraction: share of trusted inputs kept out of fitting to set thresholds.
        random_state: seed of the split and of any randomised outlier model.
    """

    _transient = ("site_models_",)
    min_untrusted = 2

    def __init__(
        self,
        model: Any,
        hooks: list[str] | None = None,
        aggregate: str = "max",
        heldout_fraction: float = 0.2,
        random_state: int = 0,
    ) -> None:
        super().__init__(model, random_state)
        self.hooks = hooks
        self.aggregate = aggregate
        self.heldout_fraction = heldout_fraction

    # one site's outlier model ------------------------------------------------------
    @abstractmethod
    def _fit_site(self, trusted: np.ndarray, untrusted: np.ndarray | None) -> SiteState:
        """The state (numpy arrays only) of one site's outlier model, learned from
        ``[n, d]`` trusted features (and ``[m, d]`` untrusted ones if ``needs_untrusted``)."""

    def _build_site(self, state: SiteState) -> Any:
        """The scorer ``_score_site`` uses, rebuilt from a state (default: the state)."""
        return state

    @abstractmethod
    def _score_site(self, fitted: Any, features: np.ndarray) -> np.ndarray:
        """Outlier scores (higher = more anomalous) of ``[n, d]`` features."""

    def _fit_site_scores(self, fitted: Any, features: np.ndarray) -> np.ndarray:
        """Scores of the features the site was fitted on (standardisation statistics)."""
        return self._score_site(fitted, features)

    # the detector ----------------------------------------------------------------------
    def _features(self, x: torch.Tensor) -> list[np.ndarray]:
        """``[n, d]`` activations per site, captured in blocks of ``BLOCK`` rows."""
        parts = [
            capture(self.adapter_, _padded(x[a : a + BLOCK]), self.sites_) for a in range(0, len(x), BLOCK)
        ]
        sizes = [min(BLOCK, len(x) - a) for a in range(0, len(x), BLOCK)]
        return [
            torch.cat([p[i][:n] for p, n in zip(parts, sizes)]).reshape(len(x), -1).double().numpy()
            for i in range(len(self.sites_))
        ]

    def _fit(self, trusted: torch.Tensor, untrusted: torch.Tensor | None = None) -> None:
        if self.aggregate not in ("max", "mean"):
            raise InputError(f"aggregate must be 'max' or 'mean', got {self.aggregate!r}.")
        if not 0 < self.heldout_fraction < 1:
            raise InputError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}.")
        if untrusted is not None and len(untrusted) < self.min_untrusted:
            raise InputError(
                f"{type(self).__name__} needs at least {self.min_untrusted} untrusted inputs "
                f"at fit time, got {len(untrusted)}."
            )
        hooks = self.hooks or default_hooks(self.adapter_)
        for h in hooks:
            self.adapter_.module(h)  # unknown names fail here, before any forward pass
        self.sites_ = [Site(h) for h in hooks]
        fit_idx, held_idx = split_indices(
            len(trusted), (1 - self.heldout_fraction, self.heldout_fraction), self.random_state
        )
        feats = self._features(trusted[torch.as_tensor(fit_idx)])
        ufeats: list[np.ndarray | None] = (
            [None] * len(feats) if untrusted is None else list(self._features(untrusted))
        )
        self.site_states_: list[SiteState] = [self._fit_site(f, u) for f, u in zip(feats, ufeats)]
        self._restore()
        d = np.stack([self._fit_site_scores(m, f) for m, f in zip(self.site_models_, feats)], 1)
        self.loc_ = d.mean(0)
        self.scale_ = d.std(0) + 1e-9
        self.heldout_scores_ = self._score(trusted[torch.as_tensor(held_idx)])

    _stored_arrays: ClassVar[dict[str, tuple[int, str | None]]] = {
        "heldout_scores_": (1, None),
        "loc_": (1, "sites_"),
        "scale_": (1, "sites_"),
    }

    def _restore(self) -> None:
        self.site_models_ = [self._build_site(s) for s in self.site_states_]

    def _site_z(self, inputs: torch.Tensor) -> np.ndarray:
        raw = np.stack([self._score_site(m, f) for m, f in zip(self.site_models_, self._features(inputs))], 1)
        return (raw - self.loc_) / self.scale_

    def site_scores(self, inputs: torch.Tensor) -> np.ndarray:
        """``[n, sites]`` standardised per-site scores (columns follow ``sites_``)."""
        return self._site_z(self._check(inputs))

    def _score(self, inputs: torch.Tensor) -> np.ndarray:
        z = self._site_z(inputs)
        return z.max(1) if self.aggregate == "max" else z.mean(1)

    def _explain_parts(self, x: torch.Tensor, top: int) -> dict[str, Any]:
        """Each site's standardised score, most anomalous first (the score aggregates them)."""
        z = self._site_z(x)[0]
        order = np.argsort(-z)
        return {
            "aggregate": self.aggregate,
            "sites": [{"site": self.sites_[i].key, "z": float(z[i])} for i in order],
        }


# ---------------------------------------------------------------- scores that do not depend on the batch
BLOCK = 64
"""Rows per forward pass. A matrix product's rounding can depend on how many rows it has
(a one-row product takes another kernel), so activations are captured in blocks of
exactly this many rows, the last one padded by repeating its last row, and the scoring
products run one row at a time (``_mm``): an input's score then does not depend on
which inputs, or how many, were scored with it, nor on their order (bitwise, on one
machine with the same thread count)."""


def _padded(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` (at most BLOCK of them) padded to BLOCK rows by repeating the last."""
    missing = BLOCK - len(rows)
    return rows if missing <= 0 else torch.cat([rows, rows[-1:].expand(missing, *rows.shape[1:])])


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b``, one row of ``a`` at a time: a BLAS product of many rows may round a row
    differently by where it sits among them, a one-row product always the same way."""
    a = np.asarray(a, dtype=np.float64)
    if len(a) == 0:
        return a @ b
    return np.stack([row @ b for row in a])


# ---------------------------------------------------------------- decompositions that do not give up
def _fell_back(what: str, exc: Exception, instead: str) -> None:
    warnings.warn(f"{what} did not converge ({exc}); used {instead} instead.", CausalMADWarning, stacklevel=3)


def eigh(m: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(eigenvalues ascending, eigenvectors)`` of the symmetric ``m``: LAPACK's
    divide-and-conquer driver (NumPy's), else its QR-iteration driver (``syev``), else
    the same for ``m`` shrunk towards a multiple of the identity. A fallback warns,
    naming ``what`` was decomposed.

    Raises:
        InputError: no fallback converged either (non-finite activations, say).
    """
    try:
        return np.linalg.eigh(m)
    except np.linalg.LinAlgError as exc:
        _fell_back(f"The eigendecomposition of {what}", exc, "LAPACK's QR-iteration driver (syev)")
    try:
        return scipy.linalg.eigh(m, driver="ev", check_finite=False)
    except (np.linalg.LinAlgError, ValueError) as exc:
        jitter = 1e-6 * max(float(np.abs(np.diag(m)).mean()), np.finfo(np.float64).tiny)
        _fell_back(
            f"The QR-iteration eigendecomposition of {what}",
            exc,
            f"shrinkage (the matrix plus {jitter:.3g} times the identity)",
        )
    try:
        return scipy.linalg.eigh(m + jitter * np.eye(len(m)), driver="ev", check_finite=False)
    except (np.linalg.LinAlgError, ValueError) as exc:
        raise InputError(
            f"{what}: no eigendecomposition converged ({exc}); are the activations finite?"
        ) from exc


def svd(x: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD ``(u, s, vt)`` of ``x``: NumPy's (LAPACK ``gesdd``), else LAPACK's slower
    but sturdier ``gesvd``, else from ``eigh`` of the Gram matrix ``x x^T``
    (directions with a singular value below 1e-12 of the largest are dropped). A fallback
    warns, naming ``what`` was decomposed."""
    try:
        return np.linalg.svd(x, full_matrices=False)
    except np.linalg.LinAlgError as exc:
        _fell_back(f"The SVD of {what}", exc, "LAPACK's gesvd driver")
    try:
        return scipy.linalg.svd(x, full_matrices=False, lapack_driver="gesvd", check_finite=False)
    except (np.linalg.LinAlgError, ValueError) as exc:
        _fell_back(f"The gesvd SVD of {what}", exc, "the eigendecomposition of its Gram matrix")
    lam, u = eigh(x @ x.T, f"the Gram matrix of {what}")
    lam, u = lam[::-1], u[:, ::-1]  # descending, as an SVD's
    sig = np.sqrt(np.maximum(lam, 0.0))
    keep = sig > sig.max() * 1e-12 if sig.max() > 0 else sig > 0
    return u[:, keep], sig[keep], (x.T @ u[:, keep] / sig[keep]).T


def pinvh(m: np.ndarray, what: str) -> np.ndarray:
    """The pseudo-inverse of the symmetric ``m``: SciPy's (what scikit-learn's
    ``LedoitWolf().precision_`` is), else from ``eigh`` with the same cutoff."""
    try:
        return scipy.linalg.pinvh(m, check_finite=False)
    except (np.linalg.LinAlgError, ValueError) as exc:
        _fell_back(
            f"The pseudo-inverse of {what}", exc, "a pseudo-inverse from a sturdier eigendecomposition"
        )
    lam, v = eigh(m, what)
    cutoff = np.abs(lam).max() * max(m.shape) * np.finfo(m.dtype).eps
    inv = np.where(np.abs(lam) > cutoff, 1 / np.where(lam == 0, 1, lam), 0.0)
    return (v * inv) @ v.T


def _whitening(features: np.ndarray, rcond: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """Mean and PCA whitening matrix ``W`` (``(x - mean) @ W`` has identity covariance)
    of a Ledoit-Wolf shrunk covariance; eigenvalues floored at ``rcond`` times the largest."""
    lw = LedoitWolf(store_precision=False).fit(features)
    evals, evecs = eigh(lw.covariance_, "QUE: the shrunk covariance of the trusted activations")
    evals = np.maximum(evals, rcond * evals.max())
    return lw.location_, evecs / np.sqrt(evals)


@register("mahalanobis")
class MahalanobisDetector(ActivationDetector):
    """Squared Mahalanobis distance to trusted activations (Ledoit-Wolf shrinkage; the
    precision matrix is scikit-learn's symmetric pseudo-inverse of the shrunk covariance)."""

    def _fit_site(self, trusted: np.ndarray, untrusted: np.ndarray | None) -> SiteState:
        if trusted.shape[1] > len(trusted):  # wide activations: never form the d x d matrices
            return _ledoit_wolf_in_span(trusted)
        lw = LedoitWolf(store_precision=False).fit(trusted)
        precision = pinvh(lw.covariance_, "Mahalanobis: the shrunk covariance of the trusted activations")
        return {"location": lw.location_, "precision": precision}

    def _score_site(self, fitted: SiteState, features: np.ndarray) -> np.ndarray:
        c = features - fitted["location"]
        if "precision" not in fitted:
            proj = _mm(c, fitted["basis"])
            inside = (proj**2 / fitted["eigenvalues"]).sum(1)
            outside = np.maximum((c**2).sum(1) - (proj**2).sum(1), 0.0)
            return inside + outside / fitted["floor"]
        return (_mm(c, fitted["precision"]) * c).sum(1)  # one BLAS product, not an unoptimised einsum


def _ledoit_wolf_in_span(x: np.ndarray) -> SiteState:
    """Ledoit-Wolf shrinkage for ``n`` rows of width ``d > n``, from the ``n x n`` Gram
    matrix: the same shrinkage as scikit-learn's ``ledoit_wolf_shrinkage`` and the same
    precision as ``LedoitWolf().precision_``, as ``d``-independent factors (the shrunk
    covariance is ``(1 - s) S + s mu I``: eigenvalues ``(1 - s) l_i + s mu`` on the rows'
    span, ``s mu`` outside it), in ``O(n^2 d)`` instead of ``O(d^3)``."""
    x = x.astype(np.float64)
    location = x.mean(0)
    xc = x - location
    n, d = xc.shape
    gram = xc @ xc.T
    sq = np.diag(gram).copy()  # squared row norms
    mu = sq.sum() / n / d
    delta_ = (gram**2).sum() / n**2  # ||S||_F^2, S = X^T X / n
    beta_ = (sq**2).sum()
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2 * mu * sq.sum() / n + d * mu**2) / d
    shrinkage = 0.0 if beta == 0 else min(beta, delta) / delta
    lam, u = eigh(gram / n, "the Gram matrix of the trusted activations")
    keep = lam > lam.max() * 1e-12
    lam, u = lam[keep], u[:, keep]
    basis = xc.T @ u / np.sqrt(n * lam)  # orthonormal eigenvectors of S in R^d
    floor = shrinkage * mu
    if floor <= 0:  # no shrinkage: the pseudo-inverse ignores what trusted rows never span
        floor = np.inf
    return {
        "location": location,
        "basis": basis,
        "eigenvalues": (1 - shrinkage) * lam + shrinkage * mu,
        "floor": np.float64(floor),
    }


@register("lof")
class LOFDetector(ActivationDetector):
    """Local outlier factor of activations among trusted ones.

    The other arguments are those of [`ActivationDetector`][causalmad.detectors.ActivationDetector].

    Args:
        n_neighbors: neighbours of the LOF (capped at the number of trusted fit inputs - 1).
    """

    def __init__(
        self,
        model: Any,
        hooks: list[str] | None = None,
        aggregate: str = "max",
        heldout_fraction: float = 0.2,
        random_state: int = 0,
        n_neighbors: int = 20,
    ) -> None:
        super().__init__(model, hooks, aggregate, heldout_fraction, random_state)
        self.n_neighbors = n_neighbors

    def _fit_site(self, trusted: np.ndarray, untrusted: np.ndarray | None) -> SiteState:
        return {"features": trusted.astype(np.float32)}  # activations are float32: lossless

    def _build_site(self, state: SiteState) -> LocalOutlierFactor:
        x = state["features"].astype(np.float64)
        return LocalOutlierFactor(n_neighbors=min(self.n_neighbors, len(x) - 1), novelty=True).fit(x)

    def _score_site(self, fitted: LocalOutlierFactor, features: np.ndarray) -> np.ndarray:
        return -fitted.score_samples(features)  # sklearn: lower = more abnormal

    def _fit_site_scores(self, fitted: LocalOutlierFactor, features: np.ndarray) -> np.ndarray:
        # a fit point is its own nearest neighbour under score_samples; the LOF of the fit
        # points themselves excludes it
        return -fitted.negative_outlier_factor_


@register("isolation-forest")
class IsolationForestDetector(ActivationDetector):
    """Isolation forest on activations (seeded: the same state and seed give the same trees).

    The other arguments are those of [`ActivationDetector`][causalmad.detectors.ActivationDetector].

    Args:
        n_estimators: trees per site.
    """

    def __init__(
        self,
        model: Any,
        hooks: list[str] | None = None,
        aggregate: str = "max",
        heldout_fraction: float = 0.2,
        random_state: int = 0,
        n_estimators: int = 200,
    ) -> None:
        super().__init__(model, hooks, aggregate, heldout_fraction, random_state)
        self.n_estimators = n_estimators

    def _fit_site(self, trusted: np.ndarray, untrusted: np.ndarray | None) -> SiteState:
        return {"features": trusted.astype(np.float32)}

    def _build_site(self, state: SiteState) -> IsolationForest:
        return IsolationForest(n_estimators=self.n_estimators, random_state=self.random_state).fit(
            state["features"].astype(np.float64)
        )

    def _score_site(self, fitted: IsolationForest, features: np.ndarray) -> np.ndarray:
        return -fitted.score_samples(features)  # sklearn: lower = more abnormal


@register("que")
class QUEDetector(ActivationDetector):
    """Quantum-entropy (QUE) scores of trusted-whitened activations.

    Needs an unlabeled untrusted batch at fit time: ``fit(trusted, untrusted=batch)``.
    Per site, activations are whitened with the trusted mean and Ledoit-Wolf covariance
    (``z = (x - mu_T) @ W``); ``S`` is the covariance of the *whitened* untrusted batch
    (about the identity if the batch looks trusted) and
    ``Q = exp(alpha (S - I) / (||S|| - 1)) / tr(exp(...))`` (Dong, Hopkins & Li 2019, as in
    SPECTRE and cupbearer). An input's score is ``(z - m)^T Q (z - m)`` with ``m`` the
    whitened untrusted batch mean. ``Q`` and ``m`` are fixed at fit time, so a score does
    not depend on which other inputs are scored with it.

    The other arguments are those of [`ActivationDetector`][causalmad.detectors.ActivationDetector].

    Args:
        alpha: QUE's exponent; 0 gives the Mahalanobis distance to the untrusted mean, large
            values the squared projection on the top direction of ``S``.
    """

    needs_untrusted = True

    def __init__(
        self,
        model: Any,
        hooks: list[str] | None = None,
        aggregate: str = "max",
        heldout_fraction: float = 0.2,
        random_state: int = 0,
        alpha: float = 4.0,
    ) -> None:
        super().__init__(model, hooks, aggregate, heldout_fraction, random_state)
        self.alpha = alpha

    def _fit_site(self, trusted: np.ndarray, untrusted: np.ndarray | None) -> SiteState:
        if untrusted is None:  # the base class's fit guarantees it; keeps _fit_site total
            raise InputError("QUE needs the untrusted batch.")
        if self.alpha < 0:
            raise InputError(f"alpha must be >= 0, got {self.alpha}.")
        if trusted.shape[1] > len(trusted):  # wide activations: never form d x d matrices
            return self._fit_site_in_span(trusted, untrusted)
        mean, w = _whitening(trusted)
        z = (untrusted - mean) @ w
        s, u = eigh(
            np.cov(z, rowvar=False, bias=True).reshape(z.shape[1], z.shape[1]),
            "QUE: the covariance of the whitened untrusted activations",
        )
        excess = s.max() - 1
        exponent = self.alpha * (s - 1) / (excess if excess > 1e-6 else 1.0)
        weights = np.exp(exponent - exponent.max())  # exp(A) = U exp(s) U^T; normalised by its trace
        weights /= weights.sum()
        # (z - m)^T Q (z - m) = sum_k weights_k ((x - x_bar_U) @ W @ U)_k^2
        return {"center": untrusted.mean(0), "projection": w @ u, "weights": weights}

    def _fit_site_in_span(self, trusted: np.ndarray, untrusted: np.ndarray) -> SiteState:
        """The same scores for ``d`` wider than the trusted rows, from factors: whitening
        is ``x -> V (l^-1/2 - f^-1/2) V^T x + f^-1/2 x`` (``V``, ``l``: the shrunk
        covariance on the trusted span, ``f``: its floor elsewhere), and the whitened
        untrusted covariance has eigenvalue 0 outside the whitened untrusted rows' span.
        QUE's score is invariant to rotations of the whitened space, so this equals the
        eigenvector form up to float rounding."""
        st = _ledoit_wolf_in_span(trusted)
        state = {
            "mean": st["location"],
            "basis": st["basis"],
            "eigenvalues": st["eigenvalues"],
            "floor": st["floor"],
        }
        z = _whiten_in_span(state, untrusted.astype(np.float64) - state["mean"])
        zc = z - z.mean(0)
        _, sig, bt = svd(zc, "QUE: the whitened untrusted activations")
        keep = sig > sig.max() * 1e-9
        s_in, b = sig[keep] ** 2 / len(z), bt[keep].T
        d = z.shape[1]
        s_all = np.r_[s_in, 0.0]  # the last entry stands for the d - r zero directions
        excess = s_all.max() - 1
        exponent = self.alpha * (s_all - 1) / (excess if excess > 1e-6 else 1.0)
        weights = np.exp(exponent - exponent.max())
        weights /= weights[:-1].sum() + weights[-1] * (d - len(s_in))
        return {
            **state,
            "center": untrusted.mean(0),
            "directions": b,
            "weights": weights[:-1],
            "rest_weight": np.float64(weights[-1]),
        }

    def _score_site(self, fitted: SiteState, features: np.ndarray) -> np.ndarray:
        if "directions" in fitted:
            p = _whiten_in_span(fitted, features.astype(np.float64) - fitted["center"])
            proj = _mm(p, fitted["directions"])
            rest = np.maximum((p**2).sum(1) - (proj**2).sum(1), 0.0)
            return _mm(proj**2, fitted["weights"]) + fitted["rest_weight"] * rest
        p = _mm(features - fitted["center"], fitted["projection"])
        return _mm(p**2, fitted["weights"])


def _whiten_in_span(state: SiteState, c: np.ndarray) -> np.ndarray:
    """Centred rows ``c`` whitened by the shrunk trusted covariance given as factors."""
    inv_floor = 0.0 if not np.isfinite(state["floor"]) else 1 / np.sqrt(state["floor"])
    scaled = _mm(c, state["basis"]) * (1 / np.sqrt(state["eigenvalues"]) - inv_floor)
    return _mm(scaled, state["basis"].T) + inv_floor * c


@register("spectral-signature")
class SpectralSignatureDetector(ActivationDetector):
    """Squared projection on the top singular direction of the centred untrusted batch.

    Needs an unlabeled untrusted batch at fit time: ``fit(trusted, untrusted=batch)``. The
    direction and the centre come from that batch only (Tran et al. 2018); trusted inputs
    set each site's standardisation and the thresholds. Scores are per input.
    """

    needs_untrusted = True

    def _fit_site(self, trusted: np.ndarray, untrusted: np.ndarray | None) -> SiteState:
        if untrusted is None:
            raise InputError("The spectral signature needs the untrusted batch.")
        center = untrusted.mean(0)
        _, _, vt = svd(untrusted - center, "the spectral signature: the centred untrusted activations")
        return {"center": center, "direction": vt[0]}

    def _score_site(self, fitted: SiteState, features: np.ndarray) -> np.ndarray:
        return _mm(features - fitted["center"], fitted["direction"]) ** 2
