"""Each floor the tests assert on a trained task model or a detector's AUROC, with its worst
value over seeds and thread counts, and its margin.

    python scripts/floor_margins.py --seeds 0 1 2 --threads 1 2 --jobs 2 --out results/floors.json

Runs the tests marked ``floors`` (``tests/floors.py``) once per (seed, thread count), each
run training every tiny task model from scratch in a cache of its own with
``CAUSALMAD_TEST_SEED`` and ``OMP_NUM_THREADS`` set, and collects every value the floors
saw. Prints a markdown table: the floor, its bound, the worst value seen (and where), the
margin (worst - bound, or bound - worst for an upper bound), the spread (largest - least
value seen) and ``tight`` where the margin is smaller than the spread: such a floor could
fail on another CPU as readily as on another seed. Exit status 1 if any run failed a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(seed: int, threads: int, log: Path, tests: list[str]) -> tuple[int, float, str]:
    """One pytest run of the floor tests: ``(exit status, seconds, its last lines)``."""
    env = {
        **os.environ,
        "CAUSALMAD_TEST_SEED": str(seed),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "CAUSALMAD_FLOOR_LOG": str(log),
    }
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "floors", "-q", "-p", "no:cacheprovider", *tests],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    return proc.returncode, time.perf_counter() - start, tail


def table(rows: list[dict]) -> tuple[str, list[dict]]:
    """The markdown table of ``rows`` (floor log lines) and one summary per floor."""
    by_name: dict[tuple[str, float, bool], list[dict]] = defaultdict(list)
    for r in rows:  # two tests may check one quantity against different bounds
        by_name[(r["name"], r["bound"], r["upper"])].append(r)
    out = [
        "| floor | bound | runs | worst (seed, threads) | margin | spread | |",
        "|---|---|---|---|---|---|---|",
    ]
    summary = []
    for key in sorted(by_name):
        name, rs = key[0], by_name[key]
        upper = rs[0]["upper"]
        worst = max(rs, key=lambda r: r["value"]) if upper else min(rs, key=lambda r: r["value"])
        margin = (rs[0]["bound"] - worst["value"]) if upper else (worst["value"] - rs[0]["bound"])
        values = [r["value"] for r in rs]
        spread = max(values) - min(values)
        verdict = "FAILS" if margin < 0 else ("tight" if margin < spread else "")
        bound = f"{'≤' if upper else '≥'} {rs[0]['bound']:g}"
        out.append(
            f"| {name} | {bound} | {len(rs)} | {worst['value']:.3f} ({worst['seed']}, {worst['threads']}) "
            f"| {margin:+.3f} | {spread:.3f} | {verdict} |"
        )
        summary.append(
            {
                "name": name,
                "bound": rs[0]["bound"],
                "upper": upper,
                "runs": len(rs),
                "worst": worst["value"],
                "worst_seed": worst["seed"],
                "worst_threads": worst["threads"],
                "margin": margin,
                "spread": spread,
                "verdict": verdict,
            }
        )
    return "\n".join(out), summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--jobs", type=int, default=1, help="runs side by side (results do not depend on it)")
    ap.add_argument("--out", type=Path, help="write every value seen and the per-floor summary here (JSON)")
    ap.add_argument(
        "--tests", nargs="+", default=["tests"], help="test files or node ids (default: every floor)"
    )
    ap.add_argument(
        "--merge", type=Path, help="an earlier --out: its values of floors this run did not see are kept"
    )
    a = ap.parse_args()
    runs = [(s, t) for s in a.seeds for t in a.threads]
    with tempfile.TemporaryDirectory() as tmp:
        logs = {run_: Path(tmp) / f"seed{run_[0]}-threads{run_[1]}.jsonl" for run_ in runs}
        with ThreadPoolExecutor(a.jobs) as pool:
            results = dict(zip(runs, pool.map(lambda r: run(*r, logs[r], a.tests), runs)))
        rows = [
            json.loads(line) for r in runs if logs[r].exists() for line in logs[r].read_text().splitlines()
        ]
    if a.merge:
        seen = {r["name"] for r in rows}
        rows += [r for r in json.loads(a.merge.read_text())["values"] if r["name"] not in seen]
    failed = False
    for (seed, threads), (code, seconds, tail) in results.items():
        print(f"seed {seed}, {threads} thread(s): exit {code} in {seconds:.0f} s", file=sys.stderr)
        if code != 0:
            failed = True
            print(tail, file=sys.stderr)
    text, summary = table(rows)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        from causalmad.provenance import environment

        env = environment()
        env.pop("threads")
        a.out.write_text(
            json.dumps(
                {
                    "environment": env,
                    "seeds": a.seeds,
                    "threads": a.threads,
                    "floors": summary,
                    "values": rows,
                },
                indent=1,
            )
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
