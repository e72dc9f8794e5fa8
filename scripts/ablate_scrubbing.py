"""What each mechanism of the scrubbing detector buys, on every split: the detector fitted
once with its defaults (every mechanism on), then each switched off alone by recomputing the
score from the same divergences (no refit, so the rows differ only in the mechanism); and,
for the mechanisms that change what is fitted, refitted with each switched off (``REFITS``:
the highest-IIA site instead of the earliest reaching the bar; 8 sources per interchange
instead of 32; the mean over an explanation's sources instead of the median; interchanges
scored on every output, not only those downstream of their variable; the hypothesis-free
claims built beside the hypothesis' own; rank-4 DAS subspaces learned for every variable,
not only those no whole site carries), scored on ``--refit-splits``.

    python scripts/ablate_scrubbing.py --size tiny --seed 0 --out results/ablation.json

Columns: ``all`` (calibrated, with the input cut); ``by family`` and ``flat`` (one of the
two Simes combinations the score takes the better of: within and across families, or over
every column at once); ``max-z`` (no calibration: the largest standardised divergence);
``one-sided`` (upper tails only: no credit for moving the output less than trusted inputs
do); ``two-sided`` (both tails for every column, the
counterfactual ones too); ``no input cut``, ``no dual``, ``no base input cut`` (those
columns dropped); ``only input cut``, ``only interchanges`` (those columns alone);
``coarse interchanges`` (interchange columns compared at ``min_scale``, not
``counterfactual_resolution``); ``previous`` (calibration and the input cut off: the
largest standardised divergence over the whole-site explanations alone); then the refitted variants.
Prints a markdown table of AUROCs, one column per variant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

import causalmad as cm
from causalmad import calibration

VARIANTS = (
    "all",
    "by family",
    "flat",
    "max-z",
    "one-sided",
    "two-sided",
    "no input cut",
    "no dual",
    "no base input cut",
    "only input cut",
    "only interchanges",
    "no pieces",
    "coarse interchanges",
    "previous",
)


#: mechanisms that change what is fitted: the detector refitted with each switched off
REFITS = {
    "highest-IIA sites": (cm.ScrubbingDetector, {"site_choice": "highest-iia"}),
    "8 interchange sources": (cm.ScrubbingDetector, {"counterfactual_resamples": 8}),
    "mean over sources": (cm.ScrubbingDetector, {"hypothesis_statistic": "mean"}),
    "interchanges on all outputs": (cm.ScrubbingDetector, {"interchange_outputs": "all"}),
    "with hypothesis-free claims": (cm.ScrubbingDetector, {"hypothesis_free": True}),
    "DAS for every variable": (cm.ScrubbingDetector, {"das_rank": 4}),
}


def scores(det: cm.ScrubbingDetector, div: np.ndarray) -> dict[str, np.ndarray]:
    fam = np.asarray(det.families_)
    cut = np.char.startswith(fam.astype(str), "input-cut")
    dual, base = fam == "input-cut (dual)", fam == "input-cut (base)"
    pieces = fam == "hypothesis-pieces"

    def log_p(two_sided: bool | np.ndarray, resolution: np.ndarray) -> np.ndarray:
        sides = np.broadcast_to(two_sided, fam.shape)
        return calibration.log_p_values(div, det.calibration_, resolution, sides)

    fine, coarse = det.column_resolutions(), np.full(len(fam), det.min_scale)
    # each column's tail probability is its own: the variants that drop columns share one
    fitted = log_p(det.two_sided_, fine)

    def calibrated(keep: np.ndarray, lp: np.ndarray = fitted, combination: str = "both") -> np.ndarray:
        return calibration.score(lp[:, keep], list(fam[keep]), combination)

    everything = np.ones(len(fam), dtype=bool)
    z = np.where(np.isnan(div), -np.inf, (div - det.loc_) / det.scale_)
    return {
        "all": calibrated(everything),
        "by family": calibrated(everything, combination="by-family"),
        "flat": calibrated(everything, combination="flat"),
        "max-z": z.max(1),
        "previous": z[:, ~cut & ~pieces].max(1),
        "one-sided": calibrated(everything, log_p(False, fine)),
        "two-sided": calibrated(everything, log_p(True, fine)),
        "no input cut": calibrated(~cut),
        "no dual": calibrated(~dual),
        "no base input cut": calibrated(~base),
        "only input cut": calibrated(cut),
        "only interchanges": calibrated(fam == "hypothesis-interchange"),
        "no pieces": calibrated(~pieces),
        "coarse interchanges": calibrated(everything, log_p(det.two_sided_, coarse)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=None)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--splits", nargs="+", default=["hard", "easy"])
    ap.add_argument("--refit-splits", nargs="*", default=["hard"], help="splits the refitted variants score")
    ap.add_argument(
        "--refits", nargs="*", default=list(REFITS), choices=list(REFITS), help="refitted variants to run"
    )
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    rows = []
    print("| task | split | " + " | ".join(VARIANTS) + " | " + " | ".join(REFITS) + " | fit s |")
    print("|---|---|" + "---|" * (len(VARIANTS) + len(REFITS) + 1))
    for name in a.tasks or sorted(cm.available_tasks()):
        task = cm.load_task(name, size=a.size, seed=a.seed)
        start = time.perf_counter()
        det = cm.ScrubbingDetector(task.model, hypothesis=task.hypothesis, random_state=a.seed).fit(
            task.trusted
        )
        fit = time.perf_counter() - start
        refits = (
            {
                variant: cls(task.model, hypothesis=task.hypothesis, random_state=a.seed, **params).fit(
                    task.trusted
                )
                for variant, (cls, params) in REFITS.items()
                if variant in a.refits
            }
            if a.refit_splits
            else {}
        )
        for split in a.splits:
            sp = task.splits[split]
            by = scores(det, det.divergences(sp.inputs))
            auroc = {
                v: float(roc_auc_score(sp.labels, s)) if np.isfinite(s).any() else float("nan")
                for v, s in by.items()
            }
            for variant, other in refits.items():
                auroc[variant] = (
                    float(roc_auc_score(sp.labels, other.score(sp.inputs)))
                    if split in a.refit_splits
                    else float("nan")
                )
            rows.append(
                {
                    "task": name,
                    "size": a.size,
                    "seed": a.seed,
                    "split": split,
                    "auroc": auroc,
                    "fit_seconds": round(fit, 1),
                    "environment": cm.environment(),
                }
            )
            print(
                f"| {name} | {split} | "
                + " | ".join(f"{auroc.get(v, float('nan')):.3f}" for v in (*VARIANTS, *REFITS))
                + f" | {fit:.0f} |",
                flush=True,
            )
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
