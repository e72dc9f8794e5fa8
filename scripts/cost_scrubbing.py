"""What the scrubbing detector's defaults cost beside its earlier settings, side by side in
one process on one machine: fit + score of every split of a task, and each split's AUROC.

    python scripts/cost_scrubbing.py --task addition-backdoor --size full --seed 0 --out results/cost.json

Settings (each fitted on the same trusted inputs, scored on the same splits, in turn):

* ``earlier``: the largest standardised divergence over the explanations alone
  (``aggregation="max-z"``, ``input_cut=()``) with interchanges drawn ``resamples`` times
  (``counterfactual_resamples=4``), the hypothesis-free claims beside the hypothesis'
  (``hypothesis_free=True``) and no pieces of sites (``site_parts=1``), the detector
  before the input cut and calibration;
* ``default``: the detector as constructed with no arguments.

Alignment (the earliest site reaching the IIA bar) is the same in both.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sklearn.metrics import roc_auc_score

import causalmad as cm

SETTINGS = {
    "earlier": {
        "aggregation": "max-z",
        "input_cut": (),
        "counterfactual_resamples": 4,
        "hypothesis_free": True,
        "site_parts": 1,
    },
    "default": {},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="addition-backdoor")
    ap.add_argument("--size", default="full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    task = cm.load_task(a.task, size=a.size, seed=a.seed)
    rows = []
    print(
        "| setting | fit s | score s (all splits) | total s | "
        + " | ".join(f"AUROC {s}" for s in task.splits)
        + " |"
    )
    print("|---|---|---|---|" + "---|" * len(task.splits))
    for name, params in SETTINGS.items():
        start = time.perf_counter()
        det = cm.ScrubbingDetector(task.model, hypothesis=task.hypothesis, random_state=a.seed, **params)
        det.fit(task.trusted)
        fit = time.perf_counter() - start
        auroc = {s: float(roc_auc_score(sp.labels, det.score(sp.inputs))) for s, sp in task.splits.items()}
        total = time.perf_counter() - start
        rows.append(
            {
                "setting": name,
                "params": {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()},
                "task": a.task,
                "size": a.size,
                "seed": a.seed,
                "fit_seconds": round(fit, 1),
                "score_seconds": round(total - fit, 1),
                "total_seconds": round(total, 1),
                "auroc": auroc,
                "environment": cm.environment(),
            }
        )
        print(
            f"| {name} | {fit:.0f} | {total - fit:.0f} | {total:.0f} | "
            + " | ".join(f"{v:.3f}" for v in auroc.values())
            + " |",
            flush=True,
        )
    print(f"\ndefault / earlier: {rows[1]['total_seconds'] / rows[0]['total_seconds']:.2f}x")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
