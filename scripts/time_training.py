"""Time the training of every task model from an empty cache, one task at a time.

    python scripts/time_training.py --size tiny --out results/train-tiny.json
    python scripts/time_training.py --size full --tasks addition-backdoor quirky-arithmetic

Each task is built with ``causalmad.load_task`` into a fresh temporary cache, so its model
is trained (tracr: compiled) here and now. Reported per task: ``train_s``, the training wall
time the task itself records (``info["train_seconds"]``); ``build_s``, the wall time of the
whole ``load_task`` call (training plus building the splits: PGD, matching, ...); and
``cpu_s``, the process CPU time of that call (over ``wall`` it shows how many cores were
busy). Run it on a quiet machine: other jobs on the same cores inflate every wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import causalmad as cm


def speed_probe(repeats: int = 5) -> dict[str, float]:
    """How fast this machine runs the two kinds of work the tasks' training is made of:
    large matrix products (``gemm_gflops``: 1024x1024 float32 products on torch's threads)
    and small operations, whose fixed cost dominates a tiny model's step (``small_op_us``:
    microseconds per add of two 64x64 tensors). Medians of ``repeats`` timings; they let a
    reader compare training times taken on different machines."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    x, y = torch.randn(64, 64), torch.randn(64, 64)
    gemm, small = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        gemm.append(10 * 2 * 1024**3 / (time.perf_counter() - t) / 1e9)
        t = time.perf_counter()
        for _ in range(2000):
            x + y
        small.append((time.perf_counter() - t) / 2000 * 1e6)
    return {
        "gemm_gflops": round(statistics.median(gemm), 1),
        "small_op_us": round(statistics.median(small), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "full"])
    parser.add_argument("--tasks", nargs="*", help="task names (default: every registered task)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the records here as JSON")
    args = parser.parse_args()
    names = args.tasks or sorted(cm.available_tasks())
    records = []
    print("| task | size | train s | build s | CPU s | clean acc. |\n|---|---|---|---|---|---|", flush=True)
    for name in names:
        with tempfile.TemporaryDirectory() as cache:
            os.environ["CAUSALMAD_CACHE"] = cache
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                task = cm.load_task(name, size=args.size, seed=args.seed)
            except cm.TaskError as exc:  # an optional extra missing, say
                print(f"| {name} | {args.size} | failed: {exc} | | | |", flush=True)
                continue
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        info = task.info
        record = {
            "task": name,
            "size": args.size,
            "seed": args.seed,
            "train_s": float(info["train_seconds"]),
            "build_s": round(wall, 1),
            "cpu_s": round(cpu, 1),
            "clean_accuracy": info.get("clean_accuracy"),
            "attack_success_rate": info.get("attack_success_rate"),
        }
        records.append(record)
        acc = "" if record["clean_accuracy"] is None else f"{record['clean_accuracy']:.3f}"
        print(
            f"| {name} | {args.size} | {record['train_s']:.1f} | {wall:.1f} | {cpu:.1f} | {acc} |", flush=True
        )
    machine = {
        **cm.environment(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        **speed_probe(),
    }
    print(f"machine: {machine}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "records": records}, indent=1))


if __name__ == "__main__":
    main()
