"""Activation-anomaly baselines: a per-site outlier score on trusted activations.

Each detector reads activations at a few sites (by default the residual stream before each
layer and after the last, all positions flattened; for plain modules every leaf module),
fits one outlier model per site on trusted activations, standardises each site's score on
the trusted fit split and aggregates across sites by ``max`` or ``mean`` (per-site scores
then aggregation, as in cupbearer). Higher = more anomalous for every one of them.

* :class:`MahalanobisDetector` — squared Mahalanobis distance under a Ledoit-Wolf shrunk
  covariance (a stable, well-conditioned precision matrix; Lee et al., NeurIPS 2018).
* :class:`LOFDetector` — local outlier factor (Breunig et al., SIGMOD 2000), novelty mode.
* :class:`IsolationForestDetector` — isolation forest (Liu et al., ICDM 2008).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor

from causalmad.detectors.base import Detector, register, split_indices
from causalmad.errors import InputError
from causalmad.interventions import capture
from causalmad.sites import Site


class ActivationDetector(Detector):
    """Per-site outlier scores of trusted activations, standardised and aggregated.

    Args:
        model: the network (or an adapter).
        hooks: hooks to read (default: residual-stream hooks, or every leaf module).
        aggregate: ``"max"`` or ``"mean"`` over sites.
        heldout_fraction: share of trusted inputs kept out of fitting to set thresholds.
        random_state: seed of the split and of any randomised outlier model.
    """

    def __init__(self, model: Any, hooks: list[str] | None = None, aggregate: str = "max",
                 heldout_fraction: float = 0.2, random_state: int = 0) -> None:
        super().__init__(model, random_state)
        self.hooks = hooks
        self.aggregate = aggregate
        self.heldout_fraction = heldout_fraction

    @abstractmethod
    def _fit_site(self, features: np.ndarray) -> Any:
        """Fit one site's outlier model on ``[n, d]`` trusted features."""

    @abstractmethod
    def _score_site(self, fitted: Any, features: np.ndarray) -> np.ndarray:
        """Outlier scores (higher = more anomalous) of ``[n, d]`` features."""

    def _features(self, x: torch.Tensor) -> list[np.ndarray]:
        acts = capture(self.adapter_, x, self.sites_)
        return [a.reshape(len(a), -1).double().numpy() for a in acts]

    def _fit(self, trusted: torch.Tensor) -> None:
        if self.aggregate not in ("max", "mean"):
            raise InputError(f"aggregate must be 'max' or 'mean', got {self.aggregate!r}.")
        hooks = self.hooks or [h.name for h in self.adapter_.candidate_hooks()
                               if h.component in ("resid_pre", "resid_post", "module")]
        for h in hooks:
            self.adapter_.module(h)  # unknown names fail here, before any forward pass
        self.sites_ = [Site(h) for h in hooks]
        fit_idx, held_idx = split_indices(len(trusted), (1 - self.heldout_fraction, self.heldout_fraction),
                                          self.random_state)
        feats = self._features(trusted[torch.as_tensor(fit_idx)])
        self.site_models_ = [self._fit_site(f) for f in feats]
        d = self._site_scores(feats)
        self.loc_ = d.mean(0)
        self.scale_ = d.std(0) + 1e-9
        self.heldout_scores_ = self._score(trusted[torch.as_tensor(held_idx)])

    def _site_scores(self, feats: list[np.ndarray]) -> np.ndarray:
        return np.stack([self._score_site(m, f) for m, f in zip(self.site_models_, feats)], 1)

    def site_scores(self, inputs: torch.Tensor) -> np.ndarray:
        """``[n, sites]`` standardised per-site scores (columns follow ``sites_``)."""
        x = self._check(inputs)
        return (self._site_scores(self._features(x)) - self.loc_) / self.scale_

    def _score(self, inputs: torch.Tensor) -> np.ndarray:
        z = (self._site_scores(self._features(inputs)) - self.loc_) / self.scale_
        return z.max(1) if self.aggregate == "max" else z.mean(1)


@register("mahalanobis")
class MahalanobisDetector(ActivationDetector):
    """Squared Mahalanobis distance to trusted activations (Ledoit-Wolf shrinkage)."""

    def _fit_site(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lw = LedoitWolf().fit(features)
        return lw.location_, lw.precision_

    def _score_site(self, fitted: tuple[np.ndarray, np.ndarray], features: np.ndarray) -> np.ndarray:
        mu, precision = fitted
        c = features - mu
        return np.einsum("nd,de,ne->n", c, precision, c)


@register("lof")
class LOFDetector(ActivationDetector):
    """Local outlier factor of activations among trusted ones (20 neighbours)."""

    def _fit_site(self, features: np.ndarray) -> LocalOutlierFactor:
        k = min(20, len(features) - 1)
        return LocalOutlierFactor(n_neighbors=k, novelty=True).fit(features)

    def _score_site(self, fitted: LocalOutlierFactor, features: np.ndarray) -> np.ndarray:
        return -fitted.score_samples(features)  # sklearn: lower = more abnormal


@register("isolation-forest")
class IsolationForestDetector(ActivationDetector):
    """Isolation forest on activations (200 trees, seeded)."""

    def _fit_site(self, features: np.ndarray) -> IsolationForest:
        return IsolationForest(n_estimators=200, random_state=self.random_state).fit(features)

    def _score_site(self, fitted: IsolationForest, features: np.ndarray) -> np.ndarray:
        return -fitted.score_samples(features)  # sklearn: lower = more abnormal
