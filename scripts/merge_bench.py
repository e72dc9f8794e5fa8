"""Merge the ``results.json`` records of several ``causalmad bench`` folders (seeds run as
separate invocations, side by side) into one file, and print their tables.

    python scripts/merge_bench.py docs/data/bench-full.json results/bench-full results/bench-full-s1

A cell (task, split, detector, seed, size) found in more than one folder is refused: the
folders must be parts of one benchmark, not reruns of the same cells. Each record keeps
its ``environment`` (machine, threads, package versions).
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
    a = ap.parse_args()
    records, seen = [], {}
    for folder in a.folders:
        if not (folder / "results.json").is_file():
            print(f"merge_bench: {folder}/results.json does not exist", file=sys.stderr)
            return 2
        for r in read_records(folder):
            cell = (r["task"], r["split"], r["detector"], r.get("seed"), r.get("size"))
            if cell in seen:
                print(f"merge_bench: {cell} is in both {seen[cell]} and {folder}", file=sys.stderr)
                return 2
            seen[cell] = folder
            records.append(r)
    records.sort(key=lambda r: (r["task"], r["split"], r["detector"], str(r.get("seed"))))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(records, indent=1) + "\n")
    print(results_markdown(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
