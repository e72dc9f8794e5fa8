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
import platform
import tempfile
import time
from pathlib import Path

import torch

import causalmad as cm


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
        record = {"task": name, "size": args.size, "seed": args.seed, "train_s": float(info["train_seconds"]),
                  "build_s": round(wall, 1), "cpu_s": round(cpu, 1),
                  "clean_accuracy": info.get("clean_accuracy"), "attack_success_rate": info.get("attack_success_rate")}
        records.append(record)
        acc = "" if record["clean_accuracy"] is None else f"{record['clean_accuracy']:.3f}"
        print(f"| {name} | {args.size} | {record['train_s']:.1f} | {wall:.1f} | {cpu:.1f} | {acc} |", flush=True)
    machine = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
               "python": platform.python_version(), "load_average": os.getloadavg()}
    print(f"machine: {machine}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "records": records}, indent=1))


if __name__ == "__main__":
    main()
