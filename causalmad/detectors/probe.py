"""A supervised linear probe: the skyline that is allowed to see anomaly labels.

No real detector has anomaly labels; this one does, so a benchmark can show how far the
anomalies are linearly separable in the activations at all. It is a *skyline*: tables
mark it as such and never rank it against the detectors (``skyline = True``).

The label API is explicit: ``fit(trusted, untrusted=batch, labels=labels)`` with
``labels[i] = 1`` when ``batch[i]`` is anomalous. The probe is an L2-regularised logistic
regression on the standardised activations of every site, concatenated; its training
rows are the trusted fit inputs (label 0) and the labelled batch. Because a probe scored
on the rows it was trained on would measure memorisation, ``fit`` also stores
``cross_val_scores_``: the score of every row of the labelled batch from a probe trained
with that row's fold left out (stratified ``folds``-fold cross-fitting, identical rows kept
in one fold). Benchmarks report those; ``score(x)`` uses the probe trained on everything.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold

from causalmad.detectors.activations import default_hooks
from causalmad.detectors.base import Detector, register, split_indices
from causalmad.errors import InputError
from causalmad.interventions import capture
from causalmad.scrubbing import row_keys
from causalmad.sites import Site


@register("supervised-probe")
class SupervisedProbeDetector(Detector):
    """Logistic-regression probe on activations, trained with anomaly labels (skyline).

    Args:
        model: the network (or an adapter).
        hooks: hooks to read (default: residual-stream hooks, or every leaf module).
        C: inverse L2 regularisation strength of the logistic regression.
        folds: cross-fitting folds for ``cross_val_scores_``.
        heldout_fraction: share of trusted inputs kept out of training to set thresholds.
        max_iter: iterations of the logistic-regression solver.
        random_state: seed of the trusted split and the folds.

    Example:
        >>> det = SupervisedProbeDetector(model).fit(trusted, untrusted=x, labels=y)  # doctest: +SKIP
        >>> det.cross_val_scores_  # out-of-fold scores of x, in x's order  # doctest: +SKIP
    """

    needs_untrusted = True
    skyline = True

    def __init__(
        self,
        model: Any,
        hooks: list[str] | None = None,
        C: float = 1.0,
        folds: int = 5,
        heldout_fraction: float = 0.2,
        max_iter: int = 500,
        random_state: int = 0,
    ) -> None:
        super().__init__(model, random_state)
        self.hooks = hooks
        self.C = C
        self.folds = folds
        self.heldout_fraction = heldout_fraction
        self.max_iter = max_iter

    def fit(
        self, trusted: torch.Tensor, untrusted: torch.Tensor | None = None, labels: Any = None
    ) -> SupervisedProbeDetector:
        """Train on trusted inputs (all normal) and a labelled batch (1 = anomalous).

        Raises:
            InputError: if ``untrusted`` or ``labels`` is missing, or the labels are not
                one 0/1 label per row with at least ``folds`` rows of each class.
        """
        y: np.ndarray | None = None
        if untrusted is not None:  # without it the base class raises its own clear error
            if labels is None:
                raise InputError(
                    f"{type(self).__name__} is a supervised skyline: pass the batch's anomaly "
                    "labels, fit(trusted, untrusted=batch, labels=labels)."
                )
            y = np.asarray(labels)
            if y.ndim != 1 or len(y) != len(untrusted) or not np.isin(y, (0, 1)).all():
                raise InputError(
                    f"labels must be one 0/1 label per untrusted input ({len(untrusted)}), got "
                    f"an array of shape {y.shape} with values {np.unique(y)[:5].tolist()}."
                )
            y = y.astype(np.int64)
            if min((y == 0).sum(), (y == 1).sum()) < self.folds:
                raise InputError(
                    f"cross-fitting with folds={self.folds} needs at least {self.folds} normal and "
                    f"{self.folds} anomalous labelled inputs, got {(y == 0).sum()} and {(y == 1).sum()}."
                )
        self._fit_labels = y  # handed to _fit only; not fitted state
        try:
            super().fit(trusted, untrusted)
        finally:
            del self._fit_labels
        return self

    def _features(self, x: torch.Tensor) -> np.ndarray:
        acts = capture(self.adapter_, x, self.sites_)
        return np.concatenate([a.reshape(len(a), -1).double().numpy() for a in acts], 1)

    def _probe(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        """Weights and bias of the L2-regularised logistic regression on ``(x, y)``.

        With many more features than rows (every site and position of a transformer, a
        few hundred inputs), the optimum's weights lie in the span of the rows (the
        representer theorem: a part orthogonal to them changes no prediction and only
        adds to the penalty). The probe is then fitted on the rows' coordinates in an
        orthonormal basis of that span (from the eigenvectors of the rows' Gram matrix)
        and its weights mapped back: the same optimum, found in rank-many dimensions.
        """
        probe = LogisticRegression(C=self.C, class_weight="balanced", max_iter=self.max_iter)
        if x.shape[1] <= 4 * x.shape[0]:  # the reduction costs more than it saves
            probe.fit(x, y)
            return probe.coef_[0].astype(np.float64), float(probe.intercept_[0])
        ev, u = np.linalg.eigh(x @ x.T)  # x = U diag(sv) V^T, ev = sv**2
        keep = ev > ev.max() * 1e-12
        sv, u = np.sqrt(ev[keep]), u[:, keep]
        probe.fit(u * sv, y)  # x @ V
        return x.T @ (u @ (probe.coef_[0] / sv)), float(probe.intercept_[0])  # V @ coef, V = x^T U / sv

    def _fit(self, trusted: torch.Tensor, untrusted: torch.Tensor | None = None) -> None:
        y_u = self._fit_labels
        if untrusted is None or y_u is None:
            raise InputError("The supervised probe needs a labelled untrusted batch.")
        if self.folds < 2:
            raise InputError(f"folds must be >= 2, got {self.folds}.")
        if not 0 < self.heldout_fraction < 1:
            raise InputError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}.")
        hooks = self.hooks or default_hooks(self.adapter_)
        for h in hooks:
            self.adapter_.module(h)
        self.sites_ = [Site(h) for h in hooks]
        fit_idx, held_idx = split_indices(
            len(trusted), (1 - self.heldout_fraction, self.heldout_fraction), self.random_state
        )
        t = self._features(trusted[torch.as_tensor(fit_idx)])
        u = self._features(untrusted)
        self.mean_ = t.mean(0)
        self.scale_ = t.std(0) + 1e-6
        t, u = (t - self.mean_) / self.scale_, (u - self.mean_) / self.scale_

        # cross-fitting: each labelled row is scored by a probe that never saw its label
        cv = StratifiedGroupKFold(n_splits=self.folds, shuffle=True, random_state=self.random_state)
        _, groups = np.unique(row_keys(untrusted), return_inverse=True)
        oof = np.empty(len(u))
        for train, test in cv.split(u, y_u, groups):
            w, b = self._probe(np.concatenate([t, u[train]]), np.r_[np.zeros(len(t)), y_u[train]])
            oof[test] = u[test] @ w + b
        self.cross_val_scores_ = oof
        self.weights_, self.bias_ = self._probe(np.concatenate([t, u]), np.r_[np.zeros(len(t)), y_u])
        self.heldout_scores_ = self._score(trusted[torch.as_tensor(held_idx)])

    def _score(self, inputs: torch.Tensor) -> np.ndarray:
        return ((self._features(inputs) - self.mean_) / self.scale_) @ self.weights_ + self.bias_
