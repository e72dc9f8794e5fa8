"""Held-out IIA of the lookahead and ripple carry hypotheses on the addition task model.

Uses the same trusted splits as ``ScrubbingDetector`` (seed 0) and reports each carry's best
single site and best site group. Run: ``python scripts/compare_hypotheses.py``.
"""

from __future__ import annotations

import torch

import causalmad as cm
from causalmad.alignment import search
from causalmad.detectors.base import split_indices
from causalmad_hypotheses.addition import addition_hypothesis


def main() -> None:
    task = cm.load_task("addition-backdoor", size="full", seed=0)
    adapter = cm.adapt(task.model)
    x = task.trusted
    pool_i, align_i, cal_i, _ = split_indices(len(x), (0.4, 0.2, 0.2, 0.2), 0)
    print("| hypothesis | variable | best single site (held-out IIA) | best group (held-out IIA) |")
    print("|---|---|---|---|")
    for carries in ("lookahead", "ripple"):
        h = addition_hypothesis(3, carries=carries)
        vals = [h.values(r) for r in x]
        take = lambda idx: (x[torch.as_tensor(idx)], [vals[i] for i in idx])  # noqa: E731
        alignment = search(adapter, h, h.inner, take(align_i), take(pool_i), take(cal_i), random_state=0)
        for var, cands in alignment.candidates.items():
            single = next(c for c in cands if len(c.sites) == 1)
            best = cands[0]
            print(
                f"| {carries} | {var} | `{single.key}` ({single.heldout_iia:.3f}) | "
                f"`{best.key}` ({best.heldout_iia:.3f}) |"
            )


if __name__ == "__main__":
    main()
