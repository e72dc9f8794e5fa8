"""Run detectors on a task's splits and turn their scores into result records."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from causalmad.detectors.base import Detector
from causalmad.metrics import evaluate
from causalmad.task import Split, Task

RECORD_KEYS = ("task", "split", "detector", "auroc", "ap", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr",
               "fit_seconds", "score_seconds", "n_trusted", "n_normal", "n_anomalous", "seed")


def evaluate_detector(
    name: str, detector: Detector, task: Task,
    extras: Callable[[Detector, Split], dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], Detector]:
    """Fit ``detector`` on the task's trusted inputs, score every split, return records.

    Labels are used only here, after scoring; ``fit`` never sees them. ``extras(detector,
    split)``, called right after each split is scored, adds fields to that split's record.
    """
    t0 = time.perf_counter()
    detector.fit(task.trusted)
    fit_seconds = time.perf_counter() - t0
    records = []
    for split in task.splits.values():
        t0 = time.perf_counter()
        scores = detector.score(split.inputs)
        score_seconds = time.perf_counter() - t0
        metrics = evaluate(scores, split.labels, detector.heldout_scores_)
        records.append({
            "task": task.name, "split": split.name, "detector": name, **metrics,
            "fit_seconds": round(fit_seconds, 2), "score_seconds": round(score_seconds, 2),
            "n_trusted": len(task.trusted), "n_normal": split.n_normal, "n_anomalous": split.n_anomalous,
            "seed": task.seed,
            **(extras(detector, split) if extras else {}),
        })
    return records, detector


def format_table(records: list[dict[str, Any]]) -> str:
    """A plain-text table of result records."""
    cols = ["task", "split", "detector", "auroc", "ap", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr", "fit_seconds", "score_seconds"]
    rows = [[f"{r[c]:.3f}" if isinstance(r[c], float) and "seconds" not in c else str(r[c]) for c in cols] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def subset_auroc(z: np.ndarray, labels: np.ndarray, columns: np.ndarray) -> float | None:
    """AUROC of the max standardised divergence over a subset of explanations."""
    from sklearn.metrics import roc_auc_score

    if not columns.any():
        return None
    best = np.where(np.isnan(z[:, columns]), -np.inf, z[:, columns]).max(1)
    finite = best[np.isfinite(best)]
    best = np.where(np.isfinite(best), best, (finite.min() - 1) if len(finite) else 0.0)
    return float(roc_auc_score(labels, best))
