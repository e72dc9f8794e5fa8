"""Run detectors on a task's splits and turn their scores into result records."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from causalmad.detectors.base import Detector, ScoreDetails
from causalmad.errors import InputError
from causalmad.metrics import evaluate
from causalmad.provenance import environment
from causalmad.task import Split, Task

RECORD_KEYS = (
    "task",
    "split",
    "detector",
    "auroc",
    "ap",
    "tpr_at_1pct_fpr",
    "tpr_at_5pct_fpr",
    "fit_seconds",
    "score_seconds",
    "n_trusted",
    "n_normal",
    "n_anomalous",
    "seed",
    "skyline",
    "environment",
)


def evaluate_splits(
    name: str,
    detector: Detector,
    task: Task,
    splits: list[str] | None = None,
    extras: Callable[[Detector, Split, ScoreDetails], dict[str, Any]] | None = None,
) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """Fit ``detector`` and score the task's splits, yielding ``(record, scores)`` per split
    as soon as that split is scored.

    A detector that fits on trusted inputs only is fitted once and scores every split. A
    detector with ``needs_untrusted`` is fitted again for each split, on the trusted inputs
    and that split's inputs *without* labels; the skyline (``skyline``) also gets the
    split's labels, and its reported scores are its out-of-fold ``cross_val_scores_`` (its
    final probe saw those labels). A detector with ``accepts_untrusted`` (the scrubbing
    detector) is fitted once on trusted inputs and adapted to each split's inputs without
    labels (``adapt``) before scoring it; that time counts as fit time. Each record
    carries the fit time of the fit its scores came from. TPR thresholds come from
    ``detector.heldout_scores_``: trusted inputs held out of that fit, never the test
    split. ``extras(detector, split, details)``, called
    right after each split is scored with what scoring computed
    ([`score_details`][causalmad.Detector.score_details]), adds fields to that
    split's record.

    Args:
        splits: names of the splits to evaluate (default: all, in the task's order).
    """
    names = list(task.splits) if splits is None else splits
    unknown = [s for s in names if s not in task.splits]
    if unknown:
        raise InputError(f"Task {task.name!r} has no split(s) {unknown}; it has {list(task.splits)}.")
    fit_seconds: float | None = None
    for split in (task.splits[s] for s in names):
        if fit_seconds is None or detector.needs_untrusted:
            kwargs: dict[str, Any] = {}
            if detector.needs_untrusted:
                kwargs["untrusted"] = split.inputs
            if detector.skyline:
                kwargs["labels"] = split.labels
            t0 = time.perf_counter()
            detector.fit(task.trusted, **kwargs)
            fit_seconds = time.perf_counter() - t0
        adapt_seconds = 0.0
        if detector.accepts_untrusted and not detector.needs_untrusted:
            t0 = time.perf_counter()
            detector.adapt(split.inputs)  # type: ignore[attr-defined]
            adapt_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        details = detector.score_details(split.inputs)
        scores = details.scores
        score_seconds = time.perf_counter() - t0
        if detector.skyline:
            scores = np.asarray(detector.cross_val_scores_, dtype=np.float64)  # type: ignore[attr-defined]
        metrics = evaluate(scores, split.labels, detector.heldout_scores_)
        record = {
            "task": task.name,
            "split": split.name,
            "detector": name,
            **metrics,
            "fit_seconds": round(fit_seconds + adapt_seconds, 2),
            "score_seconds": round(score_seconds, 2),
            "n_trusted": len(task.trusted),
            "n_normal": split.n_normal,
            "n_anomalous": split.n_anomalous,
            "seed": task.seed,
            "skyline": bool(detector.skyline),
            "environment": environment(),  # the CPU, thread count and package versions it ran with
            **(extras(detector, split, details) if extras else {}),
        }
        yield record, scores


def evaluate_detector(
    name: str,
    detector: Detector,
    task: Task,
    extras: Callable[[Detector, Split, ScoreDetails], dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], Detector]:
    """Fit ``detector`` and score every split of ``task``; return the records.

    Labels are used only after scoring, except by a skyline detector (see
    ``evaluate_splits``, which this runs over all splits).
    """
    records = [record for record, _ in evaluate_splits(name, detector, task, extras=extras)]
    return records, detector


def format_table(records: list[dict[str, Any]]) -> str:
    """A plain-text table of result records."""
    cols = [
        "task",
        "split",
        "detector",
        "auroc",
        "ap",
        "tpr_at_1pct_fpr",
        "tpr_at_5pct_fpr",
        "fit_seconds",
        "score_seconds",
    ]
    rows = [
        [f"{r[c]:.3f}" if isinstance(r[c], float) and "seconds" not in c else str(r[c]) for c in cols]
        for r in records
    ]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def scrubbing_variants(detector: Any, divergences: np.ndarray) -> dict[str, np.ndarray]:
    """The scrubbing detector's scores with each mechanism switched off alone, recomputed
    from the same ``[n, C]`` divergences (``ScrubbingDetector.divergences``; no refit, so
    the variants differ only in that mechanism). Keys: ``"all"`` (the score as it is);
    ``"no batch weights"`` (as if ``adapt`` had not run); ``"by family"`` and ``"flat"``
    (one of the Simes tests alone); ``"max-z"`` (no calibration: the largest
    standardised divergence); ``"one-sided"`` (upper tails only); ``"two-sided"`` (both
    tails for every column); ``"coarse interchanges"`` (interchange columns compared at
    ``min_scale``); ``"pareto tail"`` and ``"gpd tail"`` (the upper tails modelled as
    Pareto or generalized Pareto, not exponential: not mechanisms switched off but the
    alternative ``upper_tail`` values); ``"log lower tail"`` (``lower_tail="log"``), and
    ``"gpd tail, log lower tail"`` (both); the tail variants refit the batch weights with
    their tails, as ``adapt`` would; ``"no
    input cut"``, ``"no dual"``, ``"no base input cut"``, ``"no pieces"``, ``"no
    interchanges"`` (those columns dropped); ``"only input cut"``, ``"only
    interchanges"`` (those columns alone). A variant whose columns are empty is
    left out."""
    from causalmad import calibration

    div = np.asarray(divergences, dtype=np.float64)
    fam = np.asarray(detector.families_).astype(str)
    fine = detector.column_resolutions()
    sides = detector._two_sided()

    def log_p(
        two_sided: Any,
        resolution: np.ndarray,
        tail: str = detector.upper_tail,
        lower: str = detector.lower_tail,
    ) -> np.ndarray:
        sided = np.broadcast_to(np.asarray(two_sided), fam.shape)
        return calibration.log_p_values(div, detector.calibration_, resolution, sided, tail, lower)

    def calibrated(
        keep: np.ndarray, lp: np.ndarray | None = None, combination: str | None = None, weighted: bool = True
    ) -> np.ndarray:
        return detector.combine(div, keep, weighted, lp, combination)  # type: ignore[no-any-return]

    def tails(upper: str, lower: str = detector.lower_tail) -> np.ndarray:
        """The score of a detector with these tail models, batch weights refitted with them."""
        lp = log_p(sides, fine, upper, lower)
        weights = None
        if "column_weights_" in vars(detector):
            held = calibration.log_p_values(
                detector.heldout_divergences_, detector.calibration_, fine, sides, upper, lower
            )
            weights = calibration.batch_weights(lp, held)
        return detector.combine(div, every, True, lp, None, weights)  # type: ignore[no-any-return]

    cut = np.char.startswith(fam, "input-cut")
    every = np.ones(len(fam), dtype=bool)
    z = np.where(np.isnan(div), -np.inf, (div - detector.loc_) / detector.scale_)
    out = {
        "all": calibrated(every),
        "no batch weights": calibrated(every, weighted=False),
        "by family": calibrated(every, combination="by-family"),
        "flat": calibrated(every, combination="flat"),
        "max-z": z.max(1) if len(fam) else np.zeros(len(div)),
        "one-sided": calibrated(every, log_p(False, fine)),
        "two-sided": calibrated(every, log_p(True, fine)),
        "coarse interchanges": calibrated(every, log_p(sides, np.full(len(fam), detector.min_scale))),
        "pareto tail": tails("pareto"),
        "gpd tail": tails("gpd"),
        "log lower tail": tails(detector.upper_tail, "log"),
        "gpd tail, log lower tail": tails("gpd", "log"),
    }
    keeps = {
        "no input cut": ~cut,
        "no dual": fam != "input-cut (dual)",
        "no base input cut": fam != "input-cut (base)",
        "no pieces": fam != "hypothesis-pieces",
        "no interchanges": fam != "hypothesis-interchange",
        "only input cut": cut,
        "only interchanges": fam == "hypothesis-interchange",
    }
    out.update({name: calibrated(keep) for name, keep in keeps.items() if keep.any()})
    return out


def scrubbing_ablation(detector: Any, split: Split, details: ScoreDetails) -> dict[str, Any]:
    """Extra record fields for a scrubbing detector, right after it scored ``split``
    (``details``: what that scoring computed):
    explanation counts, held-out IIA, and the AUROC of the detector's score combined over
    each family of explanations alone (``None`` where the family has no valid column)."""
    div, summary = details.parts["divergences"], detector.summary()
    fam = np.asarray(detector.families_, dtype=object)
    cut = np.array([str(f).startswith("input-cut") for f in fam], dtype=bool)

    def alone(columns: np.ndarray, weighted: bool = True) -> float | None:
        if not columns.any():
            return None
        return _auroc(split.labels, detector.combine(div, columns, weighted=weighted))

    return {
        "heldout_iia": summary["heldout_iia"],
        "explanations_searched": summary["searched"],
        "explanations_valid": summary["valid"],
        "explanations_by_family": summary["by_family"],
        # the score as if fitted on trusted inputs alone (no adapt to the split)
        "auroc_without_batch_weights": alone(np.ones(len(fam), dtype=bool), weighted=False),
        "auroc_declared_hypothesis": alone(fam == "hypothesis"),
        "auroc_hypothesis_and_subsets": alone(
            (fam != "hypothesis-free") & (fam != "hypothesis-pieces") & ~cut
        ),
        "auroc_pieces_only": alone(fam == "hypothesis-pieces"),
        "auroc_hypothesis_free_only": alone(fam == "hypothesis-free"),
        "auroc_input_cut_only": alone(cut),
        # each mechanism switched off alone, from the same divergences (scrubbing_variants)
        "auroc_variants": {
            name: _auroc(split.labels, s) for name, s in scrubbing_variants(detector, div).items()
        },
    }


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC with infinite scores (a column past float range) ranked in place."""
    from sklearn.metrics import roc_auc_score

    s = np.asarray(scores, dtype=np.float64)
    finite = s[np.isfinite(s)]
    lo, hi = (finite.min() - 1, finite.max() + 1) if len(finite) else (0.0, 0.0)
    return float(
        roc_auc_score(labels, np.where(np.isnan(s) | (s == -np.inf), lo, np.where(s == np.inf, hi, s)))
    )
