"""What each mechanism of the scrubbing detector buys, on every split: the detector fitted
once with its defaults (every mechanism on) and adapted to the split without its labels, as
the benchmark does; then each mechanism switched off alone by recomputing the score from
the same divergences (``causalmad.evaluation.scrubbing_variants``, no refit, so the
columns differ only in that mechanism; the benchmark records the same variants as
``auroc_variants``); and, for the mechanisms that change what is fitted, refitted with each
switched off (``REFITS``: the highest-IIA site instead of the earliest reaching the bar; 8
sources per interchange instead of 32; the mean over an explanation's sources instead of
the median; the mean over the draws of pieces and input-cut scrubs instead of the trimmed
mean; interchanges scored on every output, not only those downstream of their variable;
the hypothesis-free claims built beside the hypothesis' own; rank-4 DAS subspaces learned
for every variable, not only those no whole site carries), scored on ``--refit-splits``.

    python scripts/ablate_scrubbing.py --size tiny --seed 0 --out results/ablation.json

Columns: those of ``scrubbing_variants`` (``all``: the score; ``no batch weights``: not
adapted; ``by family``, ``flat``: one Simes test alone; ``max-z``: no calibration;
``one-sided``, ``two-sided``: the tails; ``no ...``/``only ...``: those columns dropped or
alone; ``coarse interchanges``: interchange columns at ``min_scale``); ``previous``
(calibration, the input cut and the pieces off: the largest standardised divergence over
the whole-site explanations alone); then the refitted variants. Prints a markdown table of
AUROCs, one column per variant.
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
from causalmad.evaluation import scrubbing_variants

#: the variants ``causalmad.evaluation.scrubbing_variants`` recomputes from the same
#: divergences, and ``previous``
VARIANTS = (
    "all",
    "no batch weights",
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
    "no interchanges",
    "no pieces",
    "coarse interchanges",
    "exponential tail",
    "pareto tail",
    "exponential lower tail",
    "previous",
)


#: mechanisms that change what is fitted: the detector refitted with each switched off
REFITS = {
    "highest-IIA sites": (cm.ScrubbingDetector, {"site_choice": "highest-iia"}),
    "8 interchange sources": (cm.ScrubbingDetector, {"counterfactual_resamples": 8}),
    "mean over sources": (cm.ScrubbingDetector, {"hypothesis_statistic": "mean"}),
    "untrimmed parts": (cm.ScrubbingDetector, {"part_statistic": "mean"}),
    "interchanges on all outputs": (cm.ScrubbingDetector, {"interchange_outputs": "all"}),
    "with hypothesis-free claims": (cm.ScrubbingDetector, {"hypothesis_free": True}),
    "DAS for every variable": (cm.ScrubbingDetector, {"das_rank": 4}),
}


def scores(det: cm.ScrubbingDetector, div: np.ndarray) -> dict[str, np.ndarray]:
    fam = np.asarray(det.families_).astype(str)
    drop = np.char.startswith(fam, "input-cut") | (fam == "hypothesis-pieces")
    z = np.where(np.isnan(div), -np.inf, (div - det.loc_) / det.scale_)
    return {**scrubbing_variants(det, div), "previous": z[:, ~drop].max(1)}


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
            det.adapt(sp.inputs)  # as the benchmark does: weighted by the split, without labels
            by = scores(det, det.divergences(sp.inputs))
            auroc = {
                v: float(roc_auc_score(sp.labels, s)) if np.isfinite(s).any() else float("nan")
                for v, s in by.items()
            }
            for variant, other in refits.items():
                auroc[variant] = (
                    float(roc_auc_score(sp.labels, other.adapt(sp.inputs).score(sp.inputs)))
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
