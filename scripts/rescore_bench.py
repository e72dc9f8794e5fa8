"""The scrubbing detector's finished benchmark cells scored another way, without
scrubbing again. Each cell's scores file keeps its divergences and calibration state
(``causalmad.evaluation.scrubbing_arrays``), and none of the tail models, the combination
or the batch weights changes what is scrubbed, so ``causalmad.evaluation.rescore_scrubbing``
gives exactly what a detector fitted with other such settings would have scored.

Compare every (upper, lower) tail pair, AUROC and TPR at 1 % FPR per cell, with each
setting's mean over the easy and the hard cells:

    python scripts/rescore_bench.py results/bench-scrub-s0 results/bench-scrub-s2

Write a benchmark folder whose scrubbing cells are rescored with the detector's current
defaults for those settings, save those a cell's run set explicitly (``params``): records,
scores files, tables and ``tasks.json``, other detectors' records copied, each rescored
record naming what it was rescored with under ``rescored`` (no pictures):

    python scripts/rescore_bench.py results/bench-scrub-s0 --write results/bench-scrub-s0-now

Cells computed before the scores files kept the divergences are counted and left out.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
from pathlib import Path

import numpy as np

from causalmad import ScrubbingDetector, calibration
from causalmad.bench import cell_of, read_records, results_markdown, scores_path, write_atomic
from causalmad.evaluation import rescore_scrubbing, scrubbing_fields
from causalmad.metrics import evaluate

SETTINGS = list(itertools.product(calibration.TAILS, calibration.LOWER_TAILS))
RESCORED = ("upper_tail", "lower_tail", "combination")


def current_defaults() -> dict[str, str]:
    params = inspect.signature(ScrubbingDetector).parameters
    return {name: params[name].default for name in RESCORED}


def cells(folders: list[Path]):
    """Yield (folder, record, loaded scores file or None) for every scrubbing record."""
    for folder in folders:
        if not (folder / "results.json").is_file():
            raise SystemExit(f"rescore_bench: {folder}/results.json does not exist")
        for r in read_records(folder):
            if r["detector"] != "scrubbing":
                yield folder, r, None
                continue
            with np.load(scores_path(folder, cell_of(r)), allow_pickle=False) as f:
                yield folder, r, (dict(f) if "divergences" in f.files else {})


def compare(folders: list[Path]) -> None:
    now = current_defaults()
    first = (now["upper_tail"], now["lower_tail"])
    settings = [first] + [s for s in SETTINGS if s != first]
    rows, skipped = [], 0
    for _, r, arrays in cells(folders):
        if arrays is None:
            continue
        if not arrays:
            skipped += 1
            continue
        found = {}
        for upper, lower in settings:
            scores, heldout = rescore_scrubbing(arrays, upper, lower)
            metrics = evaluate(scores, arrays["labels"], heldout)
            found[(upper, lower)] = (metrics["auroc"], metrics["tpr_at_1pct_fpr"])
        rows.append((r["task"], r["split"], int(r["seed"]), found))
    names = [f"{u} / {lo}" for u, lo in settings]
    print("AUROC (TPR at 1 % FPR) of the scrubbing detector by upper / lower tail model:\n")
    print("| task | split | seed | " + " | ".join(names) + " |")
    print("|---" * (3 + len(names)) + "|")
    for task, split, seed, found in sorted(rows):
        line = " | ".join(f"{a:.3f} ({t:.2f})" for a, t in (found[s] for s in settings))
        print(f"| {task} | {split} | {seed} | {line} |")
    for split in ("easy", "hard"):
        part = [found for _, sp, _, found in rows if sp == split]
        if part:
            line = " | ".join(
                f"{np.mean([f[s][0] for f in part]):.3f} ({np.mean([f[s][1] for f in part]):.2f})"
                for s in settings
            )
            print(f"| mean over {len(part)} cells | {split} | | {line} |")
    if skipped:
        print(f"\n{skipped} cell(s) without stored divergences left out.")


def write(folders: list[Path], out: Path) -> None:
    if out.exists():
        raise SystemExit(f"rescore_bench: {out} exists; give a new folder")
    now = current_defaults()
    records, skipped, infos = [], 0, {}
    (out / "scores").mkdir(parents=True)
    for folder, r, arrays in cells(folders):
        if (folder / "tasks.json").is_file():
            infos |= json.loads((folder / "tasks.json").read_text())
        src = scores_path(folder, cell_of(r))
        if arrays is None:
            records.append(r)
            scores_path(out, cell_of(r)).write_bytes(src.read_bytes())
            continue
        if not arrays:
            skipped += 1
            continue
        # what the cell's run set explicitly stays; the rest takes today's defaults
        settings = now | {k: v for k, v in (r.get("params") or {}).items() if k in RESCORED}
        arrays |= {name: np.asarray(value) for name, value in settings.items()}
        scores, heldout = rescore_scrubbing(arrays)
        labels = arrays["labels"]
        r = r | evaluate(scores, labels, heldout) | scrubbing_fields(arrays, labels) | {"rescored": settings}
        arrays |= {"scores": scores, "heldout": heldout}
        np.savez_compressed(scores_path(out, cell_of(r)), **arrays)
        records.append(r)
    write_atomic(out / "results.json", json.dumps(records, indent=1))
    write_atomic(out / "results.md", results_markdown(records))
    write_atomic(out / "tasks.json", json.dumps(infos, indent=1))
    print(f"wrote {out}: {len(records)} record(s) ({skipped} cell(s) without stored divergences left out)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", type=Path, nargs="+", help="causalmad bench output folders")
    ap.add_argument("--write", type=Path, help="write a rescored benchmark folder here")
    args = ap.parse_args()
    if args.write:
        write(args.folders, args.write)
    else:
        compare(args.folders)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
