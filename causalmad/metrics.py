"""Detection metrics: AUROC, AP, and TPR at a false-positive rate fixed on trusted data.

The TPR figures take their threshold from held-out *trusted* scores (never from the test
set), so they measure what a user running ``predict(x, fpr=...)`` would get.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def tpr_at_fpr(scores: np.ndarray, labels: np.ndarray, trusted_scores: np.ndarray, fpr: float) -> float:
    """Share of anomalies scoring above the trusted ``1 - fpr`` quantile."""
    threshold = np.quantile(trusted_scores, 1 - fpr, method="higher")
    return float((scores[labels == 1] > threshold).mean())


def evaluate(scores: np.ndarray, labels: np.ndarray, trusted_scores: np.ndarray) -> dict[str, float]:
    """AUROC, AP and TPR at 1% / 5% FPR (thresholds from ``trusted_scores``)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, int)
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        # sklearn's sum of precision steps can exceed 1 by a rounding error (1.0000000000000002)
        "ap": min(1.0, float(average_precision_score(labels, scores))),
        "tpr_at_1pct_fpr": tpr_at_fpr(scores, labels, trusted_scores, 0.01),
        "tpr_at_5pct_fpr": tpr_at_fpr(scores, labels, trusted_scores, 0.05),
    }
