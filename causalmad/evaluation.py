"""Run detectors on a task's splits and turn their scores into result records."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from causalmad import calibration
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


def scrubbing_arrays(detector: Any, divergences: np.ndarray) -> dict[str, np.ndarray]:
    """What scoring a scrubbing detector's ``[n, C]`` divergences another way needs,
    without the detector or scrubbing again: the divergences, the trusted columns the tail
    probabilities are read from (``calibration``, sorted), the held-out trusted
    divergences, and per column its family, resolution, sidedness and standardisation;
    where the detector was adapted to a batch, that batch's column weights (which
    ``rescore_scrubbing`` refits from the divergences, as ``adapt`` fits them, so the
    divergences must be the batch's); and the detector's tail models, combination and
    ``min_scale``. The benchmark stores them in each scrubbing cell's scores file.

    Raises:
        InputError: the detector's ``aggregation`` is ``"max-z"``, which reads no tails.
    """
    if detector.aggregation != "calibrated":
        raise InputError(
            f"scrubbing_arrays needs aggregation='calibrated' (max-z reads no tails), "
            f"got {detector.aggregation!r}."
        )
    out = {
        "divergences": np.asarray(divergences, dtype=np.float64),
        "calibration": np.asarray(detector.calibration_),
        "heldout_divergences": np.asarray(detector.heldout_divergences_),
        "families": np.asarray(detector.families_, dtype=str),
        "resolutions": detector.column_resolutions(),
        "two_sided": detector._two_sided(),
        "loc": np.asarray(detector.loc_),
        "scale": np.asarray(detector.scale_),
        "upper_tail": np.asarray(detector.upper_tail),
        "lower_tail": np.asarray(detector.lower_tail),
        "combination": np.asarray(detector.combination),
        "min_scale": np.asarray(detector.min_scale, dtype=np.float64),
    }
    weights = detector.__dict__.get("column_weights_")
    if weights is not None:
        out["column_weights"] = np.asarray(weights)
    return out


#: what arrays stored before a field existed were computed with (the scrubbing
#: detector's defaults when the benchmark began to store them)
_ARRAYS_BEFORE = {
    "upper_tail": "exponential",
    "lower_tail": "exponential",
    "combination": "both",
    "min_scale": 1e-3,
}


def _has(arrays: Any, name: str) -> bool:
    return name in (arrays.files if hasattr(arrays, "files") else arrays)


def _field(arrays: Any, name: str) -> Any:
    return arrays[name][()] if _has(arrays, name) else _ARRAYS_BEFORE[name]


def rescore_scrubbing(
    arrays: Any,
    upper_tail: str | None = None,
    lower_tail: str | None = None,
    combination: str | None = None,
    weighted: bool = True,
    columns: np.ndarray | None = None,
    two_sided: Any = None,
    resolutions: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``[n]`` scores and ``[m]`` held-out trusted scores of a scrubbing detector
    recomputed from its ``scrubbing_arrays`` (a dict, or a benchmark cell's loaded
    ``scores/*.npz`` file). With no argument, the detector's own. Each argument scores
    them another way, as a detector fitted with it would have, since none of them changes
    what is scrubbed: ``upper_tail``, ``lower_tail``, ``combination`` (default: the
    detector's); ``weighted=False``: as if ``adapt`` had not run; ``columns`` (``[C]``
    mask): those columns alone; ``two_sided`` (one flag or ``[C]``) and ``resolutions``
    (``[C]``) replace the stored ones. Batch weights are refitted from the stored
    divergences and held-out divergences, as ``adapt`` fits them."""
    how = (upper_tail, lower_tail, combination, weighted, columns, two_sided, resolutions)
    return _rescore(arrays, {}, *how)


def _rescore(
    arrays: Any,
    cache: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    upper_tail: str | None = None,
    lower_tail: str | None = None,
    combination: str | None = None,
    weighted: bool = True,
    columns: np.ndarray | None = None,
    two_sided: Any = None,
    resolutions: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``rescore_scrubbing`` with ``cache``: the tail probabilities and batch weights of
    each (tails, sidedness, resolutions) setting, computed once for the many variants
    that only drop columns or change the combination."""
    families = np.asarray(arrays["families"]).astype(str)
    sides = np.broadcast_to(
        np.asarray(arrays["two_sided"] if two_sided is None else two_sided, dtype=bool), families.shape
    )
    res = np.asarray(arrays["resolutions"] if resolutions is None else resolutions, dtype=np.float64)
    upper = upper_tail or str(_field(arrays, "upper_tail"))
    lower = lower_tail or str(_field(arrays, "lower_tail"))
    key = (upper, lower, sides.tobytes(), res.tobytes())
    if key not in cache:
        lp, held = (
            calibration.log_p_values(d, arrays["calibration"], res, sides, upper, lower)
            for d in (arrays["divergences"], arrays["heldout_divergences"])
        )
        fitted = calibration.batch_weights(lp, held) if _has(arrays, "column_weights") else None
        cache[key] = (lp, held, fitted)
    lp, held, fitted = cache[key]
    weights = fitted if weighted else None
    if columns is not None:  # (not indexed otherwise: a copy may round a last bit differently)
        keep = np.asarray(columns, dtype=bool)
        lp, held, families = lp[:, keep], held[:, keep], families[keep]
        weights = None if weights is None else weights[keep]
    if weights is not None:
        weights = weights / weights.mean() if weights.sum() > 0 else np.ones(len(weights))
    how = combination or str(_field(arrays, "combination"))
    return calibration.score(lp, list(families), how, weights), calibration.score(
        held, list(families), how, weights
    )


def scrubbing_variants(detector: Any, divergences: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The scrubbing detector's scores with each mechanism switched off alone, recomputed
    from the same ``[n, C]`` divergences (``ScrubbingDetector.divergences``; no refit, so
    the variants differ only in that mechanism); ``detector`` may instead be its
    ``scrubbing_arrays`` (``divergences`` then unused). Keys: ``"all"`` (the score as it
    is); ``"no batch weights"`` (as if ``adapt`` had not run); ``"by family"`` and
    ``"flat"`` (one of the Simes tests alone); ``"max-z"`` (no calibration: the largest
    standardised divergence); ``"one-sided"`` (upper tails only); ``"two-sided"`` (both
    tails for every column); ``"coarse interchanges"`` (interchange columns compared at
    ``min_scale``); each other tail model, the detector's other tail kept: ``"<model>
    tail"`` for each other ``upper_tail`` (``"exponential tail"``, ``"pareto tail"`` at
    the defaults) and ``"<model> lower tail"`` for the other ``lower_tail`` (``"exponential
    lower tail"``: the lower tail's power law switched off); ``"no input cut"``, ``"no dual"``,
    ``"no base input cut"``, ``"no pieces"``, ``"no interchanges"`` (those columns
    dropped); ``"only input cut"``, ``"only interchanges"`` (those columns alone). A
    variant whose columns are empty is left out."""
    arrays = detector if isinstance(detector, dict) or hasattr(detector, "files") else None
    if arrays is None:
        arrays = scrubbing_arrays(detector, np.asarray(divergences))
    return _variants(arrays, {})


def _variants(arrays: Any, cache: dict[tuple[Any, ...], Any]) -> dict[str, np.ndarray]:
    fam = np.asarray(arrays["families"]).astype(str)
    div = np.asarray(arrays["divergences"], dtype=np.float64)

    def score(**how: Any) -> np.ndarray:
        return _rescore(arrays, cache, **how)[0]

    cut = np.char.startswith(fam, "input-cut")
    z = np.where(np.isnan(div), -np.inf, (div - arrays["loc"]) / arrays["scale"])
    coarse = np.full(len(fam), float(_field(arrays, "min_scale")))
    out = {
        "all": score(),
        "no batch weights": score(weighted=False),
        "by family": score(combination="by-family"),
        "flat": score(combination="flat"),
        "max-z": z.max(1) if len(fam) else np.zeros(len(div)),
        "one-sided": score(two_sided=False),
        "two-sided": score(two_sided=True),
        "coarse interchanges": score(resolutions=coarse),
    }
    upper, lower = str(_field(arrays, "upper_tail")), str(_field(arrays, "lower_tail"))
    out |= {f"{t} tail": score(upper_tail=t) for t in calibration.TAILS if t != upper}
    out |= {f"{t} lower tail": score(lower_tail=t) for t in calibration.LOWER_TAILS if t != lower}
    keeps = {
        "no input cut": ~cut,
        "no dual": fam != "input-cut (dual)",
        "no base input cut": fam != "input-cut (base)",
        "no pieces": fam != "hypothesis-pieces",
        "no interchanges": fam != "hypothesis-interchange",
        "only input cut": cut,
        "only interchanges": fam == "hypothesis-interchange",
    }
    out.update({name: score(columns=keep) for name, keep in keeps.items() if keep.any()})
    return out


def scrubbing_fields(arrays: Any, labels: np.ndarray) -> dict[str, Any]:
    """The record fields a scrubbing cell's AUROCs fill, from its ``scrubbing_arrays``
    and the split's labels: the score without batch weights, over each family of
    explanations alone (``None`` where the family has no valid column), and with each
    mechanism switched off alone (``auroc_variants``, from ``scrubbing_variants``)."""
    fam = np.asarray(arrays["families"]).astype(str)
    cut = np.char.startswith(fam, "input-cut")
    cache: dict[tuple[Any, ...], Any] = {}

    def alone(columns: np.ndarray, weighted: bool = True) -> float | None:
        if not columns.any():
            return None
        return _auroc(labels, _rescore(arrays, cache, weighted=weighted, columns=columns)[0])

    return {
        # the score as if fitted on trusted inputs alone (no adapt to the split)
        "auroc_without_batch_weights": alone(np.ones(len(fam), dtype=bool), weighted=False),
        "auroc_declared_hypothesis": alone(fam == "hypothesis"),
        "auroc_hypothesis_and_subsets": alone(
            (fam != "hypothesis-free") & (fam != "hypothesis-pieces") & ~cut
        ),
        "auroc_pieces_only": alone(fam == "hypothesis-pieces"),
        "auroc_hypothesis_free_only": alone(fam == "hypothesis-free"),
        "auroc_input_cut_only": alone(cut),
        # each mechanism switched off alone, from the same divergences
        "auroc_variants": {name: _auroc(labels, s) for name, s in _variants(arrays, cache).items()},
    }


def scrubbing_ablation(detector: Any, split: Split, details: ScoreDetails) -> dict[str, Any]:
    """Extra record fields for a scrubbing detector, right after it scored ``split``
    (``details``: what that scoring computed): explanation counts, held-out IIA, and
    ``scrubbing_fields`` (left out for ``aggregation="max-z"``, which reads no tails)."""
    summary = detector.summary()
    out = {
        "heldout_iia": summary["heldout_iia"],
        "explanations_searched": summary["searched"],
        "explanations_valid": summary["valid"],
        "explanations_by_family": summary["by_family"],
    }
    if detector.aggregation == "calibrated":
        out |= scrubbing_fields(scrubbing_arrays(detector, details.parts["divergences"]), split.labels)
    return out


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC with infinite scores (a column past float range) ranked in place."""
    from sklearn.metrics import roc_auc_score

    s = np.asarray(scores, dtype=np.float64)
    finite = s[np.isfinite(s)]
    lo, hi = (finite.min() - 1, finite.max() + 1) if len(finite) else (0.0, 0.0)
    return float(
        roc_auc_score(labels, np.where(np.isnan(s) | (s == -np.inf), lo, np.where(s == np.inf, hi, s)))
    )
