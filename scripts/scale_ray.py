"""Rows/s of ``causalmad score --ray`` with 1, 2 and 4 actors, beside single-process scoring.

Fits (or reuses, with ``--work``) a scrubbing detector on the default task at tiny size
(``causalmad fit --task addition-backdoor --size tiny --seed 0``: the backdoored 3-digit
addition transformer, trained into the model cache on first use), writes an inputs file of
``--rows`` inputs (the task's easy and hard untrusted splits, repeated), then scores it in
a fresh ``causalmad score`` process per run: once in one process, and with ``--ray
--ray-actors N`` for each N (each run starts a local Ray instance of its own). Every run's
scores file must equal the single-process one byte for byte.

For each run it records the wall time of the whole command (Python start, reading and
checking the file, for Ray starting the instance and the actors, each actor loading the
model and the detector, scoring, writing) and of the scoring phase alone (from the
command's "scoring N inputs" line to its "wrote" line, read from its stderr as they come),
and the system load average before and after, since other work on the machine changes
every figure.

Usage::

    python scripts/scale_ray.py --rows 1200 --actors 1 2 4 --repeats 2 --out results/scale_ray.json

prints a Markdown table (the one in docs/scaling.md) and writes the records as JSON.
Torch runs one thread in every process (``OMP_NUM_THREADS=1``; each Ray actor also sets
one thread).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TASK = ["--task", "addition-backdoor", "--size", "tiny", "--seed", "0"]


def _env() -> dict[str, str]:
    """The children's environment: one torch thread, this checkout's causalmad first."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": path}


def _fit(work: Path) -> Path:
    det = work / "addition-scrubbing"
    if (det / "config.json").exists():
        return det
    cmd = [sys.executable, "-m", "causalmad.cli", "fit", *TASK, "--out", str(det), "--quiet", "--force"]
    subprocess.run(cmd, check=True, env=_env())
    return det


def _inputs(work: Path, rows: int) -> Path:
    from causalmad.task import load_task

    task = load_task("addition-backdoor", size="tiny", seed=0)
    pool = np.concatenate([s.inputs.numpy() for s in task.splits.values()])
    picked = pool[np.arange(rows) % len(pool)]
    path = work / f"inputs-{rows}.jsonl"
    path.write_text("".join(json.dumps({"input": r, "id": i}) + "\n" for i, r in enumerate(picked.tolist())))
    return path


def _run(det: Path, inputs: Path, out: Path, actors: int | None) -> dict[str, float]:
    """One ``causalmad score`` process: its wall time and its scoring phase's."""
    cmd = [sys.executable, "-m", "causalmad.cli", "score", str(det), str(inputs), "--out", str(out)]
    if actors is not None:
        cmd += ["--ray", "--ray-actors", str(actors)]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=_env())
    assert child.stderr is not None
    start = end = None
    tail: list[str] = []
    for line in child.stderr:
        now = time.perf_counter()
        tail = [*tail[-30:], line]
        if line.startswith("scoring ") and " inputs in chunks of " in line:
            start = now
        elif line.startswith("wrote "):
            end = now
    if child.wait() != 0 or start is None or end is None:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{''.join(tail)}")
    return {
        "seconds": time.perf_counter() - t0,
        "scoring_seconds": end - start,
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1200)
    p.add_argument("--actors", nargs="+", type=int, default=[1, 2, 4])
    p.add_argument("--repeats", type=int, default=2, help="runs of each setting, the median reported")
    p.add_argument("--out", default="results/scale_ray.json")
    p.add_argument(
        "--work", default=None, help="folder for the detector and inputs (default: a temporary one)"
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        det = _fit(work)
        inputs = _inputs(work, args.rows)
        settings: list[int | None] = [None, *args.actors]
        runs: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.repeats):  # settings interleaved, so that a change of load hits them all
            for actors in settings:
                name = "single process" if actors is None else f"--ray, {actors} actor(s)"
                out = work / f"scores-{actors or 0}.jsonl"
                runs.setdefault(name, []).append(_run(det, inputs, out, actors))
                print(name, json.dumps(runs[name][-1]), flush=True)
                if actors is not None and out.read_bytes() != (work / "scores-0.jsonl").read_bytes():
                    raise SystemExit(f"{name}: the scores file differs from the single-process one")
    records = []
    for name, found in runs.items():
        wall = statistics.median(r["seconds"] for r in found)
        scoring = statistics.median(r["scoring_seconds"] for r in found)
        records.append(
            {
                "setting": name,
                "rows": args.rows,
                "seconds": round(wall, 1),
                "rows_per_s": round(args.rows / wall, 1),
                "scoring_seconds": round(scoring, 1),
                "scoring_rows_per_s": round(args.rows / scoring, 1),
                "load_average": [round(r["load_before"], 1) for r in found],
                "runs": found,
            }
        )
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "records": records}, indent=2))
    print(
        "\n| setting | rows | whole command (s) | rows/s | scoring phase (s) | rows/s while scoring |"
        "\n|---|---:|---:|---:|---:|---:|"
    )
    for r in records:
        print(
            f"| {r['setting']} | {r['rows']:,} | {r['seconds']} | {r['rows_per_s']} | "
            f"{r['scoring_seconds']} | {r['scoring_rows_per_s']} |"
        )


if __name__ == "__main__":
    main()
