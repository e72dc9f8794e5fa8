"""Speed and memory of the scrubbing engine (figures for docs/performance.md).

    python scripts/bench_speed.py --size full --repeats 5 --out results/speed.json

Measures, on the default task (the backdoored addition transformer), with a scrubbing
detector fitted once and saved:

* overhead ratio: seconds per scrubbed forward row (N inputs x E valid explanations x K
  resamples, the engine) over seconds per plain forward row of the same model, batch size
  and device;
* versus naive: the same divergences computed one explanation and one resample at a
  time through pyvene ``IntervenableModel`` calls (``interchange_pyvene``), on a subset of
  explanations; speed-up and the largest difference between the two;
* scaling: wall time and peak memory (max RSS of a fresh process) as N, E and K each grow
  10x, under a memory budget;
* end to end: fit + score of the task's easy split;
* traffic: the overhead comparison's plain and scrubbed passes run again on an accelerator
  simulated on the CPU (``causalmad.simulated_device``), counting per 1,024 rows the
  operations run on the device (kernel launches on a GPU) and the times the host waits
  for it (blocking copies, reads): what decides speed on a GPU whose passes are bound by
  launches, measured without one.

``--device cuda`` runs the model (plain, scrubbed and naive passes alike) on the GPU; the
scaling section then also reports the GPU's peak allocated memory.

Every figure is the median of ``--repeats`` runs (min-max spread beside it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

import causalmad as cm
from causalmad.cli import _device
from causalmad.interventions import interchange_pyvene
from causalmad.models import move_model
from causalmad.scrubbing import (
    clean_log_probs,
    counterfactual_classes,
    counterfactual_nll,
    explanation_sources,
    kl_divergence,
    readout_log_probs,
    row_keys,
)


def spread(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": len(xs)}


def sync() -> None:
    """Wait for queued GPU work, so that a timer reads the work's end, not its launch."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times, out


def fitted(size: str, folder: Path, device: str = "cpu", seed: int = 0):
    task = cm.load_task("addition-backdoor", size=size, seed=seed)
    move_model(task.model, device)
    if (folder / "config.json").exists():
        try:
            return task, cm.load_detector(folder, task.model, task.hypothesis)
        except cm.PersistenceError:
            pass
    det = cm.ScrubbingDetector(task.model, hypothesis=task.hypothesis, random_state=seed).fit(task.trusted)
    det.save(folder, overwrite=True)
    return task, det


def engine(det, x, family, k, memory_mb=None):
    """The detector's own scoring path: hypothesis values, clean passes, ``scrub_many``."""
    det.resamples = k
    if memory_mb is not None:
        det.memory_mb = memory_mb
    return det._divergences(family, x, det._values(x))[0]


def naive(det, x, family, k):
    """One pyvene call per explanation and resample; the engine's sources and divergences
    (KL to the clean readout, or for an interchange explanation the negative
    log-likelihood of the counterfactual output)."""
    ad, values, keys = det.adapter_, det._values(x), row_keys(x)
    clean = clean_log_probs(ad, x, det.readouts_, det.batch_size)
    div = np.zeros((len(x), len(family)))
    for j, e in enumerate(family):
        srcs, _, gap = explanation_sources(det.pool_, e, values, keys, k, det.random_state)
        classes = (
            counterfactual_classes(det._counterfactual, e, values, det.pool_, srcs[0])
            if e.target is not None
            else None
        )
        for kk in range(k):
            sources = [det.pool_.inputs[torch.as_tensor(s[:, kk])] for s in srcs]
            scrubbed = readout_log_probs(det.readouts_, interchange_pyvene(ad, x, sources, e.sites).cpu())
            if classes is None:
                d = kl_divergence(clean, scrubbed)
            else:
                d = counterfactual_nll(scrubbed, classes[:, kk])
            div[:, j] += d.double().numpy() / k
        div[gap, j] = np.nan
    return div


def child(args: argparse.Namespace) -> None:
    """One scaling point in a fresh process: load the detector, scrub, report time and peak RSS."""
    task = cm.load_task("addition-backdoor", size=args.size, seed=0)
    move_model(task.model, args.device)
    det = cm.load_detector(args.folder, task.model, task.hypothesis)
    x = task.splits["easy"].inputs
    x = x[torch.arange(args.n) % len(x)]
    family = (det.valid_ * (args.e // len(det.valid_) + 1))[: args.e]
    engine(det, x[:2], family[:1], 1)  # warm-up
    before = rss_mb()
    peak = [before]
    done = threading.Event()

    def sample() -> None:  # the process's resident memory, every 2 ms, while scrubbing runs
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    if args.device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    engine(det, x, family, args.k, args.budget)
    seconds = time.perf_counter() - t0
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if args.device != "cpu" else None
    done.set()
    sampler.join()
    print(
        json.dumps(
            {
                "n": args.n,
                "e": args.e,
                "k": args.k,
                "seconds": seconds,
                "rss_before_mb": before,
                "peak_rss_mb": peak[0],
                "scrub_peak_mb": peak[0] - before,
                "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "gpu_peak_allocated_mb": gpu_peak,
            }
        )
    )


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def overhead(args, det, x, family, k, out) -> None:
    ad, rows = det.adapter_, len(x) * len(family) * k
    plain_x = x[torch.arange(rows) % len(x)]

    def plain() -> None:
        with torch.no_grad():
            for s in range(0, rows, det.batch_size):
                ad.forward(plain_x[s : s + det.batch_size].to(ad.device))

    t_plain, _ = timed(plain, args.repeats)
    t_scrub, _ = timed(lambda: engine(det, x, family, k), args.repeats)
    ratios = [s / q for s, q in zip(t_scrub, t_plain)]
    out["overhead"] = {
        "n": len(x),
        "explanations": len(family),
        "k": k,
        "rows": rows,
        "batch_size": det.batch_size,
        "plain_seconds": spread(t_plain),
        "scrub_seconds": spread(t_scrub),
        "plain_rows_per_s": rows / statistics.median(t_plain),
        "scrub_rows_per_s": rows / statistics.median(t_scrub),
        "ratio": spread(ratios),
    }
    print(json.dumps(out["overhead"]), flush=True)


def versus_naive(args, det, x, family, k) -> dict[str, object]:
    sub = family[: args.naive_explanations]
    t_fast, fast = timed(lambda: engine(det, x, sub, k), args.repeats)
    t_naive, slow = timed(lambda: naive(det, x, sub, k), max(1, args.repeats // 2))
    res = {
        "n": len(x),
        "explanations": len(sub),
        "k": k,
        "engine_seconds": spread(t_fast),
        "naive_pyvene_seconds": spread(t_naive),
        "speedup": statistics.median(t_naive) / statistics.median(t_fast),
        "max_abs_difference": float(np.nanmax(np.abs(np.asarray(fast) - np.asarray(slow)))),
        "max_divergence": float(np.nanmax(np.asarray(slow))),
    }
    print(json.dumps(res), flush=True)
    return res


def scaling(args) -> list[dict[str, object]]:
    """N, E and K each 10x the base (and N 100x), each point in a fresh process."""
    base = {"n": 100, "e": 12, "k": 2}
    points = [base, {**base, "n": 1000}, {**base, "e": 120}, {**base, "k": 20}, {**base, "n": 10000}]
    result = []
    for pt in points:
        runs = []
        for _ in range(max(1, args.repeats // 2)):
            cmd = [
                sys.executable,
                __file__,
                "--child",
                "--size",
                args.size,
                "--folder",
                args.folder,
                "--device",
                args.device,
                "--budget",
                str(args.budget),
                "--n",
                str(pt["n"]),
                "--e",
                str(pt["e"]),
                "--k",
                str(pt["k"]),
            ]
            runs.append(
                json.loads(
                    subprocess.run(cmd, capture_output=True, text=True, check=True)
                    .stdout.strip()
                    .splitlines()[-1]
                )
            )
        result.append(
            {
                **pt,
                "rows": pt["n"] * pt["e"] * pt["k"],
                "seconds": spread([r["seconds"] for r in runs]),
                "peak_rss_mb": spread([r["peak_rss_mb"] for r in runs]),
                "rss_before_mb": spread([r["rss_before_mb"] for r in runs]),
                "scrub_peak_mb": spread([r["scrub_peak_mb"] for r in runs]),
                "budget_mb": args.budget,
                "gpu_peak_allocated_mb": max((r["gpu_peak_allocated_mb"] or 0) for r in runs) or None,
            }
        )
        print(json.dumps(result[-1]), flush=True)
    return result


def traffic(args, det, x, family, k) -> dict[str, object]:
    from causalmad.simulated_device import DEVICE, simulated_device

    rows = len(x) * len(family) * k
    plain_x = x[torch.arange(rows) % len(x)]
    passes: list[int] = []
    ad = det.adapter_
    device = ad.device
    with simulated_device() as seen:
        move_model(ad.model, DEVICE)  # the same detector, its model on the simulated device
        for name in ("run_window", "run_from"):  # count the scrubbed passes
            run = getattr(ad, name)
            setattr(ad, name, lambda *a, run=run, **kw: passes.append(1) or run(*a, **kw))
        try:
            seen.clear()
            with torch.no_grad():
                for s in range(0, rows, det.batch_size):
                    ad.forward(plain_x[s : s + det.batch_size].to(ad.device))
            plain = dataclasses.replace(seen)
            seen.clear()
            engine(det, x, family, k)
            scrub = dataclasses.replace(seen)
        finally:
            for name in ("run_window", "run_from"):
                delattr(ad, name)
            move_model(ad.model, device)
    per = lambda c: {
        "ops": c.ops * 1024 / rows,
        "syncs": c.syncs * 1024 / rows,  # noqa: E731
        "to_device": c.to_device * 1024 / rows,
        "to_host": c.to_host * 1024 / rows,
        "reads": c.reads * 1024 / rows,
    }
    res = {
        "n": len(x),
        "explanations": len(family),
        "k": k,
        "rows": rows,
        "batch_size": det.batch_size,
        "plain_passes": -(-rows // det.batch_size),
        "scrub_passes": len(passes),
        "plain_per_1024_rows": per(plain),
        "scrub_per_1024_rows": per(scrub),
        # every wait of the scoring call (its clean passes and once-per-call copies too) per scrubbed pass
        "ops_ratio": scrub.ops / max(plain.ops, 1),
        "syncs_per_scrub_pass": scrub.syncs / max(len(passes), 1),
    }
    print(json.dumps(res), flush=True)
    return res


def end_to_end(args, task) -> dict[str, object] | None:
    fits, scores = [], []
    for _ in range(args.e2e_repeats):
        d = cm.ScrubbingDetector(task.model, hypothesis=task.hypothesis, random_state=0)
        t0 = time.perf_counter()
        d.fit(task.trusted)
        fits.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        d.score(task.splits["easy"].inputs)
        scores.append(time.perf_counter() - t0)
    if not fits:
        return None
    res = {
        "n_trusted": len(task.trusted),
        "n_scored": len(task.splits["easy"].inputs),
        "fit_seconds": spread(fits),
        "score_seconds": spread(scores),
        "total_seconds": spread([f + s for f, s in zip(fits, scores)]),
    }
    print(json.dumps(res), flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="full", choices=["full", "tiny"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--n", type=int, default=200, help="inputs for the overhead comparison")
    p.add_argument("--naive-explanations", type=int, default=16)
    p.add_argument(
        "--naive-n",
        type=int,
        nargs="+",
        default=[1, 10, 200],
        help="batch sizes N of the comparison with naive pyvene calls",
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=["overhead", "naive", "scaling", "e2e", "traffic"],
        default=["overhead", "naive", "scaling", "e2e", "traffic"],
        help="sections to run",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="rows per forward pass, plain and scrubbed (default: the detector's, 1,024); small "
        "passes cost what their operations' dispatch costs, as a GPU's do",
    )
    p.add_argument("--budget", type=float, default=512.0, help="memory budget (MiB) of the scaling runs")
    p.add_argument("--e2e-repeats", type=int, default=3)
    p.add_argument("--folder", default="results/speed-detector")
    p.add_argument("--out", default="results/speed.json")
    p.add_argument("--device", default="cpu", help="where the model runs: cpu (default) or cuda")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--e", type=int, default=12, help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    torch.manual_seed(0)
    try:
        device = _device(args.device)  # the CLI's own check of a device name
    except cm.InputError as exc:
        sys.exit(str(exc))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out: dict[str, object] = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, device {name}",
    }
    task, det = fitted(args.size, Path(args.folder), args.device)
    x, family, k = task.splits["easy"].inputs[: args.n], det.valid_, det.resamples
    if args.batch_size is not None:
        det.batch_size = args.batch_size
    print(f"{len(family)} valid explanations, K={k}", flush=True)
    if "overhead" in args.only:
        overhead(args, det, x, family, k, out)
    if "naive" in args.only:
        out["naive"] = [
            versus_naive(args, det, task.splits["easy"].inputs[:n], family, k) for n in args.naive_n
        ]
    if "scaling" in args.only:
        out["scaling"] = scaling(args)
    if "e2e" in args.only:
        out["end_to_end"] = end_to_end(args, task)
    if "traffic" in args.only:
        out["traffic"] = traffic(args, det, x, family, k)
    previous = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({**previous, **out}, indent=2))  # --only updates its sections
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
