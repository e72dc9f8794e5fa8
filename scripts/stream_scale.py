"""Rows/s and peak memory of ``causalmad score`` on large JSON-lines inputs files.

Two tiny fitted Mahalanobis detectors: on the planted model of the tests (3 numbers per
input, a two-layer network: the cost is reading and writing) and on the tiny
addition-backdoor task (11 token ids per input, a two-layer transformer). For each size,
an inputs file of that many rows (drawn from the trusted inputs, with the planted
model's flag on a quarter of them) is scored by ``causalmad score`` in a fresh process,
whose peak resident memory (VmHWM from ``/proc/self/status``, else ``resource.getrusage``)
and wall time are recorded. Peak memory should not grow with the file: ``score`` reads, scores and writes
one ``--chunk`` at a time.

Usage::

    OMP_NUM_THREADS=1 python scripts/stream_scale.py --sizes 10000 100000 1000000 \\
        --out results/stream_scale.json

prints a Markdown table (the one in docs/performance.md) and writes the records as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PLANTED = ["--model", f"{ROOT / 'tests' / 'conftest.py'}:PlantedSum"]
TASK = ["--task", "addition-backdoor", "--size", "tiny", "--seed", "0"]


def _child(argv: list[str]) -> None:
    """Run ``causalmad score`` here and print its wall time and this process's peak RSS."""
    from causalmad.cli import main

    t0 = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - t0
    print(json.dumps({"code": code, "seconds": seconds, "peak_rss_mb": _peak_rss_kib() / 1024}))


def _peak_rss_kib() -> int:
    """This process's peak resident memory in KiB. Linux's ``/proc/self/status`` VmHWM
    first: ``getrusage``'s ``ru_maxrss`` keeps, across ``exec``, the peak of the process
    that spawned this one (the parent, which holds torch and a task), so on Linux it reads
    the parent's peak, not this process's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS


def _run(cmd: list[str]) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", *cmd], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    if record["code"] != 0:
        raise SystemExit(f"causalmad score exited {record['code']}: {done.stderr[-2000:]}")
    return record


def _write_rows(path: Path, pool: np.ndarray, n: int, seed: int, flag_col: int | None) -> None:
    """``n`` rows drawn from ``pool`` (with the planted flag set on a quarter when
    ``flag_col`` is given), written in blocks so the writer's memory stays small too."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for a in range(0, n, 50_000):
            block = pool[rng.integers(0, len(pool), min(50_000, n - a))].copy()
            if flag_col is not None:
                block[:, flag_col] = rng.random(len(block)) < 0.25
            f.write("".join(json.dumps(r) + "\n" for r in block.tolist()))


def _fit(work: Path) -> dict[str, tuple[Path, list[str], np.ndarray, int | None]]:
    from causalmad.cli import main
    from causalmad.task import load_task

    g = np.random.default_rng(0)
    planted = np.concatenate(
        [g.integers(0, 9, (300, 2)) + g.uniform(-0.05, 0.05, (300, 2)), np.zeros((300, 1))], 1
    )
    (work / "trusted.jsonl").write_text("".join(json.dumps(r) + "\n" for r in planted.tolist()))
    dets = {}
    out = work / "planted-mahalanobis"
    if (
        main(
            [
                "fit",
                *PLANTED,
                "--detector",
                "mahalanobis",
                "--trusted",
                str(work / "trusted.jsonl"),
                "--out",
                str(out),
                "--quiet",
                "--force",
            ]
        )
        != 0
    ):
        raise SystemExit("fitting the planted detector failed")
    dets["planted model (3 floats)"] = (out, PLANTED, planted.astype(np.float32), 2)
    out = work / "addition-mahalanobis"
    if main(["fit", *TASK, "--detector", "mahalanobis", "--out", str(out), "--quiet", "--force"]) != 0:
        raise SystemExit("fitting the addition detector failed")
    task = load_task("addition-backdoor", size="tiny", seed=0)
    pool = torch.cat([task.trusted, *[s.inputs for s in task.splits.values()]]).numpy()
    dets["tiny addition-backdoor (11 token ids)"] = (out, [], pool, None)
    return dets


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000, 1_000_000])
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--out", default="results/stream_scale.json")
    p.add_argument(
        "--work", default=None, help="folder for the detectors and inputs files (default: a temporary one)"
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        records = []
        for name, (det, model, pool, flag_col) in _fit(work).items():
            for n in args.sizes:
                inputs = work / f"inputs-{n}.jsonl"
                _write_rows(inputs, pool, n, n, flag_col)
                size_mb = inputs.stat().st_size / 2**20
                r = _run(
                    [
                        "score",
                        str(det),
                        str(inputs),
                        *model,
                        "--chunk",
                        str(args.chunk),
                        "--quiet",
                        "--out",
                        str(work / "scores.jsonl"),
                    ]
                )
                records.append(
                    {
                        "detector": name,
                        "rows": n,
                        "file_mb": round(size_mb, 1),
                        "seconds": round(r["seconds"], 1),
                        "rows_per_s": round(n / r["seconds"]),
                        "peak_rss_mb": round(r["peak_rss_mb"]),
                        "chunk": args.chunk,
                    }
                )
                print(json.dumps(records[-1]), flush=True)
                inputs.unlink()
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "records": records}, indent=2))
    print(
        "\n| detector | rows | file (MB) | time (s) | rows/s | peak RSS (MB) |"
        "\n|---|---:|---:|---:|---:|---:|"
    )
    for r in records:
        print(
            f"| {r['detector']} | {r['rows']:,} | {r['file_mb']} | {r['seconds']} | {r['rows_per_s']:,} | "
            f"{r['peak_rss_mb']} |"
        )


if __name__ == "__main__":
    main()
