"""Why the batch-weighted test joins the unweighted ones instead of replacing them: AUROC
of three combinations on simulated tail probabilities, by the share of anomalies in the
batch the weights are fitted on.

    python scripts/batch_weights_simulation.py

Each setting: 1,000 untrusted inputs and 600 held-out trusted ones, ``E`` columns of
uniform p-values (null), the anomalies' p-values uniform on (0, 0.01) in ``signal`` of
the columns; five repetitions, seeded. Columns: the detector's score without a batch
(``calibration.combine``: Simes by family and flat), with the batch's weights
(``combine(..., weights=batch_weights(...))``: the three tests), and the weighted test
alone (``weighted_simes``).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from causalmad import calibration

SETTINGS = [(30, 1), (100, 1), (100, 10), (500, 1), (500, 30)]
SHARES = [0.01, 0.03, 0.1, 0.33]


def main() -> int:
    rng = np.random.default_rng(0)
    print("| columns | signal columns | anomalies in the batch | no batch | three tests | weighted alone |")
    print("|---|---|---|---|---|---|")
    for e, signal in SETTINGS:
        for share in SHARES:
            found: dict[str, list[float]] = {"no batch": [], "three": [], "weighted": []}
            for _ in range(5):
                n, na = 1000, int(share * 1000)
                labels = np.r_[np.zeros(n - na), np.ones(na)]
                lp = np.log(rng.uniform(size=(n, e)))
                lp[n - na :, :signal] = np.log(rng.uniform(0, 0.01, size=(na, signal)))
                trusted = np.log(rng.uniform(size=(600, e)))
                w = calibration.batch_weights(lp, trusted)
                families = ["one family"] * e
                found["no batch"].append(roc_auc_score(labels, -calibration.combine(lp, families)))
                found["three"].append(roc_auc_score(labels, -calibration.combine(lp, families, weights=w)))
                found["weighted"].append(roc_auc_score(labels, -calibration.weighted_simes(lp, w)))
            cells = " | ".join(f"{np.mean(v):.3f}" for v in found.values())
            print(f"| {e} | {signal} | {share:.0%} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
