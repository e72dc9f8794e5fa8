"""The ``causalmad`` command line: ``demo``, ``bench`` and ``tasks``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from causalmad.errors import CausalMADError


def _demo(args: argparse.Namespace) -> int:
    from causalmad.detectors import Detector, MahalanobisDetector, ScrubbingDetector
    from causalmad.evaluation import evaluate_detector, format_table, subset_auroc
    from causalmad.task import Split, load_task

    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    print(f"[1/4] task {args.task!r} ({args.size}, seed {args.seed}): training or loading the model ...", flush=True)
    task = load_task(args.task, size=args.size, seed=args.seed)
    print(f"      {json.dumps(task.info)}", flush=True)
    print("[2/4] scrubbing detector: align, build and validate explanations, score ...", flush=True)
    scrub = ScrubbingDetector(task.model, hypothesis=task.hypothesis, resamples=args.resamples,
                              random_state=args.seed, progress=not args.quiet)

    def ablation(_: Detector, split: Split) -> dict[str, Any]:
        # AUROC of each explanation family on the split just scored
        z, fam, summary = scrub.last_explanation_z_, np.array([e.family for e in scrub.valid_]), scrub.summary()
        return {
            "heldout_iia": summary["heldout_iia"],
            "explanations_searched": summary["searched"],
            "explanations_valid": summary["valid"],
            "explanations_by_family": summary["by_family"],
            "auroc_declared_hypothesis": subset_auroc(z, split.labels, fam == "hypothesis"),
            "auroc_hypothesis_and_subsets": subset_auroc(z, split.labels, fam != "hypothesis-free"),
            "auroc_hypothesis_free_only": subset_auroc(z, split.labels, fam == "hypothesis-free"),
        }

    records, _ = evaluate_detector("scrubbing", scrub, task, ablation)
    summary = scrub.summary()
    print("[3/4] Mahalanobis baseline on the same split ...", flush=True)
    maha, _ = evaluate_detector("mahalanobis", MahalanobisDetector(task.model, random_state=args.seed), task)
    records += maha
    print("[4/4] results\n", flush=True)
    print(format_table(records))
    if scrub.alignment_ is not None:
        print("\nalignment (held-out IIA of each inner variable's best site):")
        for v in scrub.alignment_.variables:
            c = scrub.alignment_.best(v)
            print(f"  {v}: {c.key}  held-out IIA {c.heldout_iia:.3f}")
    print(f"\nexplanations: {summary['searched']} searched, {summary['valid']} valid "
          "(" + ", ".join(f"{k}: {v['valid']}/{v['searched']}" for k, v in summary["by_family"].items()) + ")")
    r0 = records[0]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"AUROC: robust max over all valid explanations {r0['auroc']:.3f} | declared hypothesis alone "
          f"{fmt(r0['auroc_declared_hypothesis'])} | hypothesis + its subsets {fmt(r0['auroc_hypothesis_and_subsets'])} | "
          f"hypothesis-free alone {fmt(r0['auroc_hypothesis_free_only'])}")
    valid_declared = [e["name"] for e in scrub.explanations_ if e["family"] == "hypothesis" and e["valid"]]
    print(f"valid declared-hypothesis explanations: {valid_declared or 'none'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=2))
    print(f"\nwrote {out} ({time.perf_counter() - t0:.0f} s in all)")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from causalmad.bench import run_bench

    s = run_bench(args.out, tasks=args.tasks, detectors=args.detectors, size=args.size, seeds=args.seeds,
                  progress=not args.quiet)
    print(f"bench: {len(s.computed)} cell(s) computed, {len(s.skipped)} finished cell(s) skipped, "
          f"{len(s.failed)} failed ({s.seconds:.0f} s)")
    for task, det, seed, err in s.failed:
        print(f"  failed: {det} on {task} (seed {seed}): {err}")
    print(f"wrote {s.out / 'results.json'}, {s.out / 'results.md'} and the ROC / histogram pictures")
    return 1 if s.failed else 0


def _tasks(args: argparse.Namespace) -> int:
    from causalmad.task import available_tasks

    for name, ep in sorted(available_tasks().items()):
        print(f"{name}\t{ep.value}")  # type: ignore[attr-defined]
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="causalmad", description="Mechanistic anomaly detection by causal scrubbing.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress of each step")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train (or load) the default task, fit, score, print the results table")
    demo.add_argument("--task", default="addition-backdoor")
    demo.add_argument("--size", default="full", choices=["full", "tiny"])
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--resamples", type=int, default=4)
    demo.add_argument("--out", default="results/demo.json")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)
    bench = sub.add_parser("bench", help="every detector on every task and split, side by side (resumable)")
    bench.add_argument("--tasks", nargs="+", default=None, help="task names (default: all registered)")
    bench.add_argument("--detectors", nargs="+", default=None, help="detector names (default: all registered)")
    bench.add_argument("--size", default="full", choices=["full", "tiny"])
    bench.add_argument("--seeds", nargs="+", type=int, default=[0])
    bench.add_argument("--out", default="results/bench", help="output folder; finished cells there are skipped")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    bench.set_defaults(func=_bench)
    tasks = sub.add_parser("tasks", help="list the registered tasks")
    tasks.set_defaults(func=_tasks)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return int(args.func(args))
    except CausalMADError as exc:
        print(f"causalmad: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
