"""One detector's cells in two sets of ``causalmad bench`` folders side by side: the same
(task, split, seed) under two settings (a default changed, or set back with ``--param``),
as a markdown table of AUROC and TPR at 1 % FPR, with the mean change over the cells both
sets hold.

    python scripts/compare_bench.py --detector scrubbing \\
        --before results/bench-mean-s0 results/bench-mean-s1 \\
        --after results/bench-full-s0 results/bench-full-s1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from causalmad.bench import read_records


def cells(folders: list[Path], detector: str) -> dict[tuple[str, str, int], dict]:
    out = {}
    for folder in folders:
        if not (folder / "results.json").is_file():
            raise SystemExit(f"compare_bench: {folder}/results.json does not exist")
        for r in read_records(folder):
            if r["detector"] == detector:
                out[(r["task"], r["split"], int(r["seed"]))] = r
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--detector", default="scrubbing")
    ap.add_argument(
        "--before", type=Path, nargs="+", required=True, help="bench folders of the first setting"
    )
    ap.add_argument(
        "--after", type=Path, nargs="+", required=True, help="bench folders of the second setting"
    )
    a = ap.parse_args()
    before, after = cells(a.before, a.detector), cells(a.after, a.detector)
    both = sorted(set(before) & set(after), key=lambda c: (c[1] != "hard", c[0], c[2]))
    if not both:
        print("compare_bench: the two sets share no cell", file=sys.stderr)
        return 2
    print("| task | split | seed | AUROC before | AUROC after | TPR at 1 % FPR before | after |")
    print("|---|---|---|---|---|---|---|")
    for c in both:
        b, n = before[c], after[c]
        print(
            f"| {c[0]} | {c[1]} | {c[2]} | {b['auroc']:.3f} | {n['auroc']:.3f} | "
            f"{b['tpr_at_1pct_fpr']:.3f} | {n['tpr_at_1pct_fpr']:.3f} |"
        )
    for split in ("hard", "easy"):
        d = [after[c]["auroc"] - before[c]["auroc"] for c in both if c[1] == split]
        if d:
            print(
                f"\n{split}: {len(d)} cells, mean AUROC change {np.mean(d):+.3f} "
                f"(from {min(d):+.3f} to {max(d):+.3f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
