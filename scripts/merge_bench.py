"""Merge the ``results.json`` records of several ``causalmad bench`` folders (seeds run as
separate invocations, side by side) into one file, and print their tables.

    python scripts/merge_bench.py docs/data/bench-full.json results/bench-full results/bench-full-s1

A cell (task, split, detector, seed, size) found in more than one folder is refused: the
folders must be parts of one benchmark, not reruns of the same cells; with ``--replace``,
a later folder's cell replaces an earlier folder's (some cells rerun, say one detector
after its defaults changed:
``python scripts/merge_bench.py --replace OUT results/bench-full results/bench-full-scrub-s0``).
Each record keeps its ``environment`` (machine, threads, package versions).
``--same-seeds scrubbing`` prints the tables over only the (task, seed) pairs that the
named detector has records for, so that every row compares detectors on the same seeds
(the merged file keeps every record).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from causalmad.bench import read_records, results_markdown


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="merged records (JSON list)")
    ap.add_argument("folders", type=Path, nargs="+", help="bench output folders")
    ap.add_argument(
        "--replace",
        action="store_true",
        help="a later folder's cell replaces the same cell of an earlier folder",
    )
    ap.add_argument(
        "--same-seeds",
        metavar="DETECTOR",
        help="tables over the (task, seed) pairs this detector has records for",
    )
    a = ap.parse_args()
    cells: dict[tuple, dict] = {}
    seen: dict[tuple, Path] = {}
    for folder in a.folders:
        if not (folder / "results.json").is_file():
            print(f"merge_bench: {folder}/results.json does not exist", file=sys.stderr)
            return 2
        for r in read_records(folder):
            cell = (r["task"], r["split"], r["detector"], r.get("seed"), r.get("size"))
            if cell in seen and (not a.replace or seen[cell] == folder):
                print(f"merge_bench: {cell} is in both {seen[cell]} and {folder}", file=sys.stderr)
                return 2
            seen[cell], cells[cell] = folder, r
    records = list(cells.values())
    records.sort(key=lambda r: (r["task"], r["split"], r["detector"], str(r.get("seed"))))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(records, indent=1) + "\n")
    if a.same_seeds:
        pairs = {(r["task"], r.get("seed")) for r in records if r["detector"] == a.same_seeds}
        records = [r for r in records if (r["task"], r.get("seed")) in pairs]
    print(results_markdown(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
