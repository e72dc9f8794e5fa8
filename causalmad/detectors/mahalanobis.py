"""Mahalanobis-distance baseline on trusted activations.

Per site (the residual stream before each layer and after the last, all positions
flattened), fit a Gaussian to trusted activations with Ledoit-Wolf shrinkage (a stable,
well-conditioned precision matrix) and score the squared Mahalanobis distance; per-site
distances are standardised on the trusted fit split and aggregated by their maximum.
Used as an activation-anomaly baseline in MAD (e.g. cupbearer; Lee et al., NeurIPS 2018).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from causalmad.detectors.base import Detector, register, split_indices
from causalmad.interventions import capture
from causalmad.sites import Site


@register("mahalanobis")
class MahalanobisDetector(Detector):
    """Mahalanobis distance of activations, max over sites.

    Args:
        model: the network (or an adapter).
        hooks: hooks to read (default: every residual-stream / module hook of the adapter).
        heldout_fraction: share of trusted inputs kept out of fitting to set thresholds.
        random_state: seed of the split.
    """

    def __init__(self, model, hooks: list[str] | None = None, heldout_fraction: float = 0.2,
                 random_state: int = 0) -> None:
        super().__init__(model, random_state)
        self.hooks = hooks
        self.heldout_fraction = heldout_fraction

    def _features(self, x: torch.Tensor) -> list[np.ndarray]:
        acts = capture(self.adapter_, x, self.sites_)
        return [a.reshape(len(a), -1).double().numpy() for a in acts]

    def _fit(self, trusted: torch.Tensor) -> None:
        hooks = self.hooks or [h.name for h in self.adapter_.candidate_hooks()
                               if h.component in ("resid_pre", "resid_post", "module")]
        self.sites_ = [Site(h) for h in hooks]
        for s in self.sites_:
            self.adapter_.module(s.hook)
        fit_idx, held_idx = split_indices(len(trusted), (1 - self.heldout_fraction, self.heldout_fraction),
                                          self.random_state)
        feats = self._features(trusted[torch.as_tensor(fit_idx)])
        self.means_, self.precisions_, self.loc_, self.scale_ = [], [], [], []
        for f in feats:
            lw = LedoitWolf().fit(f)
            self.means_.append(lw.location_)
            self.precisions_.append(lw.precision_)
        d = self._site_distances(feats)
        self.loc_ = d.mean(0)
        self.scale_ = d.std(0) + 1e-9
        self.heldout_scores_ = self._score(trusted[torch.as_tensor(held_idx)])

    def _site_distances(self, feats: list[np.ndarray]) -> np.ndarray:
        cols = []
        for f, mu, prec in zip(feats, self.means_, self.precisions_):
            c = f - mu
            cols.append(np.einsum("nd,de,ne->n", c, prec, c))
        return np.stack(cols, 1)

    def _score(self, inputs: torch.Tensor) -> np.ndarray:
        d = self._site_distances(self._features(inputs))
        return ((d - self.loc_) / self.scale_).max(1)
