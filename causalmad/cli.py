"""The ``causalmad`` command line.

Commands: ``demo`` (train, fit, score, print the results table), ``fit`` (trusted data ->
detector folder), ``score`` (detector folder + inputs file -> scores file, optional HTML
report), ``explain`` (one input -> why it scored as it did), ``bench`` (every detector on every
task and split), ``tasks`` (list).

Exit codes: 0 success; 2 bad usage, bad input or a file that cannot be written (one line
on stderr says what and where); 3 ``score --fail-on-flag`` flagged at least one input; 1
an unexpected internal error (a bug: one line, and with ``--debug`` the traceback to
report); 130 interrupted. ``--debug`` adds the traceback to any error.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import itertools
import json
import logging
import math
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from causalmad.errors import CausalMADError, CausalMADWarning, InputError
from causalmad.models import move_model
from causalmad.progress import progress_bar, show_progress


def _print_info(info: dict) -> None:
    """A task's ``info`` in a few lines: its scalars, the criteria its model met and where
    it was trained (the full record is ``task.info``)."""
    scalars = {k: v for k, v in info.items() if not isinstance(v, (dict, list))}
    print(f"      {json.dumps(scalars)}", flush=True)
    spec = info.get("spec") or {}
    if spec.get("criteria"):
        met = ", ".join(f"{k} {c['value']:.3f} >= {c['floor']}" for k, c in spec["criteria"].items())
        print(
            f"      criteria met after {spec['steps']} steps ({spec['extra_rounds']} extra rounds): {met}",
            flush=True,
        )
    where = info.get("trained_on")
    if where:
        print(
            f"      trained on {where.get('cpu')}, {where.get('threads')} threads, "
            f"torch {where.get('torch')}",
            flush=True,
        )


def _demo(args: argparse.Namespace) -> int:
    from causalmad.detectors import MahalanobisDetector, QUEDetector, ScrubbingDetector
    from causalmad.evaluation import evaluate_detector, format_table, scrubbing_ablation
    from causalmad.task import load_task

    device = _device(args.device)  # checked before the model is trained
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    print(
        f"[1/4] task {args.task!r} ({args.size}, seed {args.seed}): training or loading the model ...",
        flush=True,
    )
    with show_progress(not args.quiet):
        task = load_task(args.task, size=args.size, seed=args.seed)
    move_model(task.model, device)
    _print_info(task.info)
    print("[2/4] scrubbing detector: align, build and validate explanations, score ...", flush=True)
    scrub = ScrubbingDetector(
        task.model,
        hypothesis=task.hypothesis,
        resamples=args.resamples,
        random_state=args.seed,
        progress=not args.quiet,
    )

    records, _ = evaluate_detector("scrubbing", scrub, task, scrubbing_ablation)
    summary = scrub.summary()
    print("[3/4] Mahalanobis and QUE baselines on the same splits ...", flush=True)
    for name, baseline in (("mahalanobis", MahalanobisDetector), ("que", QUEDetector)):
        records += evaluate_detector(name, baseline(task.model, random_state=args.seed), task)[0]
    print("[4/4] results\n", flush=True)
    print(format_table(records))
    if scrub.alignment_ is not None:
        print("\nalignment (each inner variable's chosen site, the earliest reaching the IIA bar):")
        for v in scrub.alignment_.variables:
            c = scrub.alignment_.best(v)
            print(f"  {v}: {c.key}  held-out IIA {c.heldout_iia:.3f}")
    print(
        f"\nexplanations: {summary['searched']} searched, {summary['valid']} valid "
        "(" + ", ".join(f"{k}: {v['valid']}/{v['searched']}" for k, v in summary["by_family"].items()) + ")"
    )
    r0 = records[0]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(
        f"AUROC ({r0['split']} split): all valid explanations and scrubs {r0['auroc']:.3f} | "
        f"declared hypothesis alone {fmt(r0['auroc_declared_hypothesis'])} | hypothesis, subsets and "
        f"interchanges {fmt(r0['auroc_hypothesis_and_subsets'])} | "
        f"pieces of sites alone {fmt(r0.get('auroc_pieces_only'))} | "
        f"input cut alone {fmt(r0.get('auroc_input_cut_only'))}"
        + (
            ""  # none built: the hypothesis' own claims are the tests (hypothesis_free="auto")
            if r0["auroc_hypothesis_free_only"] is None
            else f" | hypothesis-free alone {fmt(r0['auroc_hypothesis_free_only'])}"
        )
    )
    valid_declared = [e["name"] for e in scrub.explanations_ if e["family"] == "hypothesis" and e["valid"]]
    print(f"valid declared-hypothesis explanations: {valid_declared or 'none'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=2))
    print(f"\nwrote {out} ({time.perf_counter() - t0:.0f} s in all)")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from causalmad.bench import run_bench

    if args.ray is not None:
        from causalmad.distributed import require_ray

        require_ray("causalmad bench --ray")
    # checked before any task is loaded (with --ray, CUDA is the cluster's, not this machine's)
    device = _device(args.device) if args.ray is None else _device_name(args.device)
    params: dict[str, dict[str, Any]] = {}
    for key, value in _params(args.param).items():
        det, dot, name = key.partition(".")
        if not dot or not det or not name:
            raise InputError(f"--param {key}=...: name the detector too, e.g. --param scrubbing.resamples=8.")
        params.setdefault(det, {})[name] = value
    s = run_bench(
        args.out,
        tasks=args.tasks,
        detectors=args.detectors,
        size=args.size,
        seeds=args.seeds,
        progress=not args.quiet,
        max_inputs=args.max_inputs,
        device=device,
        params=params,
        ray=False if args.ray is None else args.ray or True,
    )
    print(
        f"bench: {len(s.computed)} cell(s) computed, {len(s.skipped)} finished cell(s) skipped, "
        f"{len(s.failed)} failed ({s.seconds:.0f} s)"
    )
    for task, det, seed, err in s.failed:
        print(f"  failed: {det} on {task} (seed {seed}): {err}")
    print(f"wrote {s.out / 'results.json'}, {s.out / 'results.md'} and the ROC / histogram pictures")
    return 1 if s.failed else 0


def _tasks(args: argparse.Namespace) -> int:
    from causalmad.task import available_tasks

    for name, ep in sorted(available_tasks().items()):
        print(f"{name}\t{ep.value}")  # type: ignore[attr-defined]
    return 0


# ---------------------------------------------------------------- fit / score / explain
def _import(spec: str, what: str) -> Any:
    """``module:attr`` or ``path/to/file.py:attr`` -> the object (a user's own code,
    named on the command line by the user)."""
    import importlib
    import importlib.util

    if ":" not in spec:
        raise InputError(f"--{what} {spec!r}: use module:function or path/to/file.py:function.")
    where, attr = spec.rsplit(":", 1)
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise InputError(f"--{what} {spec!r}: no file {path}.")
            mod_spec = importlib.util.spec_from_file_location(path.stem, path)
            if mod_spec is None or mod_spec.loader is None:
                raise InputError(f"--{what} {spec!r}: {path} cannot be loaded as a Python module.")
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[path.stem] = module
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ImportError as exc:
        raise InputError(f"--{what} {spec!r}: cannot import {where!r} ({exc}).") from exc
    if not hasattr(module, attr):
        raise InputError(f"--{what} {spec!r}: {where!r} has no {attr!r}.")
    obj = getattr(module, attr)
    return obj() if callable(obj) and not isinstance(obj, torch.nn.Module) else obj


def _device(name: str) -> torch.device:
    """The device the user chose (``--device``), checked before anything runs."""
    device = _device_name(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA device is available here; use --device cpu.")
    return device


def _device_name(name: str) -> torch.device:
    """``--device`` as a device, its name checked (not whether this machine has it)."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"--device {name!r}: not a device name (cpu, cuda, cuda:1, ...).") from exc
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device {name}: causalmad runs on cpu or cuda.")
    return device


def _model_and_hypothesis(
    args: argparse.Namespace, source: dict[str, Any] | None, folder: str | None = None
) -> tuple[Any, Any, Any, dict[str, Any]]:
    """``(model, hypothesis, task or None, source record)`` from the command line, or
    from the source a detector folder records when it is a registered task."""
    device = _device(args.device)  # checked before any expensive work
    from causalmad.hypothesis import Hypothesis
    from causalmad.task import folder_task, load_task

    task_name = getattr(args, "task", None)
    if args.model is None and task_name is None and source and "task" in source:
        task_name, args.size, args.seed = folder_task(source, str(folder))
    if task_name is not None:
        if args.model is not None:
            raise InputError("give either --task or --model, not both.")
        _say(args, f"task {task_name!r} ({args.size}, seed {args.seed}): training or loading the model ...")
        with show_progress(not args.quiet):
            task = load_task(task_name, size=args.size, seed=args.seed)
        move_model(task.model, device)
        return task.model, task.hypothesis, task, {"task": task_name, "size": args.size, "seed": args.seed}
    if args.model is None:
        _refuse_missing_model(source)
        raise InputError("say which model: --task NAME, or --model module:function (with --hypothesis).")
    model = _import(args.model, "model")
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"--model {args.model}: expected a torch.nn.Module, got {type(model).__name__}.")
    hypothesis = _import(args.hypothesis, "hypothesis") if args.hypothesis else None
    if hypothesis is not None and not isinstance(hypothesis, Hypothesis):
        raise InputError(
            f"--hypothesis {args.hypothesis}: expected a causalmad.Hypothesis, got "
            f"{type(hypothesis).__name__}."
        )
    move_model(model, device)
    return model, hypothesis, None, {"model": args.model, "hypothesis": args.hypothesis}


def _source(config: dict[str, Any]) -> dict[str, Any] | None:
    """Where a detector folder's model came from, as its config records it (or None)."""
    extra = config.get("extra")
    source = extra.get("source") if isinstance(extra, dict) else None
    return source if isinstance(source, dict) else None


def _code_files(args: argparse.Namespace) -> dict[str, str | None]:
    """The Python files named by ``--model`` / ``--hypothesis`` (inputs a write must spare)."""
    found: dict[str, str | None] = {}
    for flag in ("model", "hypothesis"):
        spec = getattr(args, flag, None)
        where = spec.rsplit(":", 1)[0] if spec and ":" in spec else None
        found[f"the --{flag} file"] = where if where and where.endswith(".py") else None
    return found


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # hard links too
    except OSError:
        return False


def _check_outputs(outputs: dict[str, str | Path | None], inputs: dict[str, str | Path | None]) -> None:
    """Refuse, before any work, an output that is, holds or lies inside an input (or the
    detector folder, or another output): paths resolved, symbolic links followed."""
    taken = [(what, Path(p).resolve()) for what, p in inputs.items() if p]
    for flag, p in outputs.items():
        if not p:
            continue
        mine = Path(p).resolve()
        for what, other in taken:
            if mine == other or _same_file(mine, other):
                clash = "is"
            elif other in mine.parents:
                clash = "lies inside"
            elif mine in other.parents:
                clash = "holds"
            else:
                continue
            raise InputError(
                f"{flag} {p} {clash} {what} ({other}); causalmad does not write over its inputs: "
                "give another path."
            )
        taken.append((f"the {flag} output", mine))


def _json_safe(value: Any) -> Any:
    """``value`` with every non-finite float written as None (JSON null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _say(args: argparse.Namespace, message: str, even_quiet: bool = False) -> None:
    """``message`` on stderr, unless ``--quiet`` (``even_quiet``: what the user must know)."""
    if even_quiet or not args.quiet:
        print(message, file=sys.stderr, flush=True)


def _params(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--param {pair!r}: use name=value (value as JSON, e.g. tolerance=0.2).")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _fit(args: argparse.Namespace) -> int:
    from causalmad.detectors import DETECTORS
    from causalmad.models import HuggingFaceAdapter, HuggingFaceCausalLMAdapter, TransformerLensAdapter, adapt
    from causalmad.persistence import check_replaceable, remove_stale, save_detector

    if args.detector not in DETECTORS:
        raise InputError(f"unknown detector {args.detector!r}; known: {sorted(DETECTORS)}.")
    budget = _budget(args)
    if budget is not None and args.detector != "scrubbing":
        raise InputError(
            f"--budget chooses the scrubbing detector's resamples and explanation budget; a "
            f"{args.detector!r} detector has none: drop --budget."
        )
    out = Path(args.out)
    _check_outputs(
        {"--out": out},
        {"the --trusted file": args.trusted, "the --untrusted file": args.untrusted, **_code_files(args)},
    )
    remove_stale(out)
    if os.path.lexists(out):
        if not args.force:
            raise InputError(f"{out} already exists; pass --force to replace it.")
        check_replaceable(out)  # --force replaces a detector folder, nothing else
    if args.task is not None and args.trusted is not None:
        raise InputError("--trusted is for --model; a task brings its own trusted inputs.")
    if args.task is None and args.trusted is None:
        raise InputError("--model needs --trusted FILE (JSON lines or .npy) with the trusted inputs.")
    model, hypothesis, task, source = _model_and_hypothesis(args, None)
    if task is not None:
        trusted = task.trusted
    # token ids for transformers, numbers for other modules
    token_ids = (TransformerLensAdapter, HuggingFaceAdapter, HuggingFaceCausalLMAdapter)
    dtype = "int64" if isinstance(adapt(model), token_ids) else "float32"
    if task is None:
        trusted = _read_any_shape(args.trusted, dtype)
    cls = DETECTORS[args.detector]
    if cls.skyline:
        raise InputError(
            f"{args.detector!r} is a skyline that needs anomaly labels; fit it in Python "
            "(see docs/concepts.md) or with `causalmad bench`."
        )
    if cls.needs_untrusted and args.untrusted is None:
        raise InputError(
            f"{args.detector!r} also fits on an unlabeled untrusted batch: pass --untrusted FILE."
        )
    if args.untrusted is not None and not (cls.needs_untrusted or cls.accepts_untrusted):
        raise InputError(f"{args.detector!r} fits on trusted inputs only; drop --untrusted.")
    untrusted = _read_any_shape(args.untrusted, dtype) if args.untrusted else None
    kwargs = _params(args.param)
    if "hypothesis" in inspect.signature(cls).parameters:
        kwargs.setdefault("hypothesis", hypothesis)
    elif args.hypothesis:
        raise InputError(f"{args.detector!r} does not use a hypothesis; drop --hypothesis.")
    if "progress" in inspect.signature(cls).parameters:
        kwargs.setdefault("progress", not args.quiet)
    try:
        det = cls(model, random_state=args.seed, **kwargs)
    except TypeError as exc:
        raise InputError(f"--param: {exc}.") from exc
    estimate = _fit_estimate(args, det, trusted, budget) if args.detector == "scrubbing" else None
    _say(args, f"fitting {args.detector} on {len(trusted)} trusted inputs ...")
    t0 = time.perf_counter()
    det.fit(trusted, untrusted) if untrusted is not None else det.fit(trusted)
    fit_seconds = round(time.perf_counter() - t0, 2)
    extra: dict[str, Any] = {"source": source, "fit_seconds": fit_seconds}
    if estimate is not None:
        extra["estimate"] = {"rows": estimate.rows, "seconds": round(estimate.seconds, 2)}
    save_detector(det, out, overwrite=args.force, extra=extra)
    told = f"; estimated {estimate.seconds:.0f} s" if estimate is not None else ""
    _say(args, f"saved {out} (fit {fit_seconds:.0f} s{told})")
    return 0


def _budget(args: argparse.Namespace) -> Any:
    """``--budget`` parsed (``causalmad.cost.Budget``), or None; a bad one refused at once."""
    from causalmad.cost import parse_budget

    return None if args.budget is None else parse_budget(args.budget)


def _fit_estimate(args: argparse.Namespace, det: Any, trusted: torch.Tensor, budget: Any) -> Any:
    """Print the fit's estimated rows and time (``causalmad.cost``); with ``budget``, first
    reduce the detector's cost-scaling parameters until the estimate fits and say what
    was reduced. Returns the estimate the fit goes on with (None: quiet and no budget)."""
    from causalmad.cost import FitCost, duration

    if args.quiet and budget is None:
        return None  # the timing pass is only for what is printed
    det._check_params()  # a bad argument is one line, before the timing pass runs the detector
    cost = FitCost(det, trusted)
    estimate = cost.estimate()
    _say(args, estimate.line())
    if budget is None:
        return estimate
    changed, estimate, fits = cost.within(budget)
    if not changed:
        _say(args, f"budget {budget}: the run fits as it is")
        return estimate
    what = ", ".join(f"{k} {getattr(det, k)} -> {v}" for k, v in changed.items())
    det.set_params(**changed)
    _say(  # even with --quiet: the fit is not the one asked for
        args,
        f"budget {budget}: reduced {what}; now {estimate.rows:,} rows, about {duration(estimate.seconds)}",
        even_quiet=True,
    )
    if not fits:
        warnings.warn(
            f"--budget {budget}: even at the least resamples and explanation budget the fit is "
            f"estimated at {duration(estimate.seconds)} ({estimate.rows:,} rows); going on at that least",
            CausalMADWarning,
            stacklevel=1,
        )
    return estimate


def _read_any_shape(path: str, dtype: str) -> torch.Tensor:
    """Trusted inputs for --model: the shape comes from the file's first input."""
    from causalmad.inputs import read_inputs

    return read_inputs(path, None, dtype).inputs


def _load(args: argparse.Namespace, config: dict[str, Any]) -> Any:
    """The detector in ``args.detector_dir``, whose ``config`` was read already."""
    from causalmad.persistence import load_detector

    model, hypothesis, task, _ = _model_and_hypothesis(args, _source(config), args.detector_dir)
    if task is not None and config.get("hypothesis") is None:
        hypothesis = None  # a baseline fitted on a task: the task's hypothesis was never used
    return load_detector(args.detector_dir, model, hypothesis, trust_modified=args.trust_modified)


CHUNK = 4096  # inputs scored per step (``--chunk``) in one process


def _score(args: argparse.Namespace) -> int:
    """Score an inputs file chunk by chunk (``--chunk`` inputs at a time), writing each
    chunk's scores as it goes: memory holds one chunk, whatever the file's length (all of
    the file with ``--report``, which shows the top inputs). The file is read through once
    first, so a bad input stops the run before the model loads. Each chunk's scores are
    also kept on the disk (``causalmad.partial_scores``) until the scores file is in
    place, so that ``--resume`` continues a run that was killed. With ``--ray`` the chunks
    are scored by Ray actors (``causalmad.distributed``), the scores file the same."""
    from causalmad.inputs import count_inputs, scores_format
    from causalmad.persistence import read_config, remove_stale

    if args.chunk is not None and args.chunk < 1:
        raise InputError(f"--chunk {args.chunk}: give the number of inputs scored per step, at least 1.")
    if not 0 < args.fpr < 1:
        raise InputError(f"--fpr must be in (0, 1), got {args.fpr}.")
    if args.ray_actors is not None and args.ray is None:
        raise InputError(
            "--ray-actors is the number of Ray actors: add --ray (and a cluster address if any)."
        )
    if args.ray_actors is not None and args.ray_actors < 1:
        raise InputError(f"--ray-actors {args.ray_actors}: give the number of Ray actors, at least 1.")
    budget = _budget(args)
    if budget is not None and args.ray is not None:
        raise InputError("--budget checks single-process scoring; drop it with --ray.")
    if args.ray is not None:
        from causalmad.distributed import require_ray

        require_ray("causalmad score --ray")  # the extra missing: one line before the file is read
    out = Path(args.out) if args.out else Path(args.inputs).with_suffix(".scores.jsonl")
    _check_outputs(
        {"--out": out, "--report": args.report},
        {"the inputs file": args.inputs, "the detector folder": args.detector_dir, **_code_files(args)},
    )
    fmt = scores_format(out)
    config = read_config(
        args.detector_dir, args.trust_modified
    )  # a bad folder fails here, before anything runs
    shape, dtype = config["input_shape"], config["input_dtype"]
    if budget is not None and config.get("detector") != "scrubbing":
        raise InputError(
            f"--budget checks a scrubbing detector's scoring; {args.detector_dir} holds a "
            f"{config.get('detector')!r} detector: drop --budget."
        )
    # every input checked before the model loads
    n = count_inputs(args.inputs, shape, dtype, args.chunk or CHUNK)
    if args.ray is not None:
        return _score_on_ray(args, config, out, fmt, n)
    chunk = args.chunk or CHUNK
    partial = _partial_scores(args, out, chunk, n)  # refused before the model loads
    det = _load(args, config)
    for target in (out, args.report):
        if target:
            remove_stale(target)
    threshold = det.threshold(args.fpr)
    if hasattr(det, "progress"):
        det.progress = False
    if hasattr(det, "valid_") and (budget is not None or not args.quiet) and partial.rows_stored < n:
        # a resumed run is charged only for the inputs it has left
        _score_estimate(args, det, config, n - partial.rows_stored, budget)
    _say(args, f"scoring {n} inputs in chunks of {min(chunk, n)}")

    def here(parts: Iterator[Any]) -> Iterator[tuple[Any, np.ndarray]]:
        from causalmad.inputs import check_rows

        for part in parts:
            check_rows(det, part, args.inputs)
            yield part, det.score(part.inputs)

    flagged, kept = _write_scores(args, out, partial, fmt, config, n, chunk, threshold, here, eta=True)
    return _scored(args, out, n, flagged, threshold, kept, lambda: det)


#: share of the inputs ``score`` times its estimate on, twice over (at least one, at most
#: ``ESTIMATE_MOST``): about 3% of the run
ESTIMATE_SHARE = 0.02
ESTIMATE_MOST = 16


def _score_estimate(args: argparse.Namespace, det: Any, config: dict[str, Any], n: int, budget: Any) -> None:
    """Print the run's estimated rows and time, timed on its first few inputs; with
    ``budget``, refuse the run when the estimate exceeds it (the explanations of a fitted
    detector are fixed, so nothing can be reduced)."""
    from causalmad.cost import duration, estimate_score_cost
    from causalmad.inputs import check_rows, iter_inputs

    few = max(min(2, n), min(ESTIMATE_MOST, int(n * ESTIMATE_SHARE)))  # 2+: the fixed cost apart
    part = next(iter_inputs(args.inputs, config["input_shape"], config["input_dtype"], few))
    check_rows(det, part, args.inputs)
    estimate = estimate_score_cost(det, part.inputs, n, args.chunk or CHUNK)
    _say(args, f"{estimate.line()}, on the first {len(part.inputs)} input(s)")
    if budget is not None and not budget.fits(estimate):
        raise InputError(
            f"--budget {budget}: scoring {n} inputs is estimated at {duration(estimate.seconds)} "
            f"({estimate.rows:,} forward rows); a fitted detector's explanations are fixed: score fewer "
            "inputs, raise --budget, or refit with `causalmad fit --budget`."
        )


def _score_on_ray(args: argparse.Namespace, config: dict[str, Any], out: Path, fmt: str, n: int) -> int:
    """``score --ray``: the chunks scored by Ray actors, each holding the detector."""
    from causalmad.distributed import actor_options, ray_chunk, ray_session, scoring_actors
    from causalmad.persistence import remove_stale

    loader = _ray_loader(args, config)  # a missing model is named before Ray starts
    with ray_session(args.ray or None, "causalmad score --ray") as ray:
        actors, options = actor_options(ray, args.ray_actors, args.device)
        chunk = args.chunk or ray_chunk(n, actors)
        partial = _partial_scores(args, out, chunk, n)
        _say(args, f"starting {actors} Ray actor(s), each loading {args.detector_dir} ...")
        with scoring_actors(ray, loader, actors, options) as pool:
            for target in (out, args.report):
                if target:
                    remove_stale(target)
            threshold = pool.threshold(args.fpr)
            _say(args, f"scoring {n} inputs in chunks of {min(chunk, n)} on {actors} Ray actor(s)")
            flagged, kept = _write_scores(
                args,
                out,
                partial,
                fmt,
                config,
                n,
                chunk,
                threshold,
                lambda parts: pool.score_parts(parts, args.inputs),
            )
    return _scored(args, out, n, flagged, threshold, kept, lambda: _load(_driver_args(args), config))


def _driver_args(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with a ``--device`` this machine has: the Ray actors' GPU need not be on
    the driver, which then explains the report's flagged inputs on its CPU."""
    if _device_name(args.device).type == "cuda" and not torch.cuda.is_available():
        _say(args, f"--device {args.device} is the actors'; this machine has no CUDA: the report runs on CPU")
        return argparse.Namespace(**{**vars(args), "device": "cpu"})
    return args


def _ray_loader(args: argparse.Namespace, config: dict[str, Any]) -> Any:
    """What each Ray actor loads: the folder, with the registered task it records or the
    ``--model`` / ``--hypothesis`` functions (imported on the actor, never from the folder)."""
    from causalmad.distributed import FolderLoader
    from causalmad.task import folder_task

    device = torch.device(_device_name(args.device))  # CUDA is the actors', not this machine's
    source = _source(config)
    if args.model is None:
        _refuse_missing_model(source)
        if not source or "task" not in source:
            raise InputError("say which model: --model module:function (with --hypothesis).")
        folder_task(source, args.detector_dir)
        return FolderLoader(args.detector_dir, None, None, args.trust_modified, str(device))
    for flag in ("model", "hypothesis"):
        spec = getattr(args, flag)
        if spec and ":" not in spec:
            raise InputError(f"--{flag} {spec!r}: use module:function or path/to/file.py:function.")
    model = functools.partial(_actor_model, args.model)
    hypothesis = functools.partial(_actor_hypothesis, args.hypothesis) if args.hypothesis else None
    return FolderLoader(args.detector_dir, model, hypothesis, args.trust_modified, str(device))


def _actor_model(spec: str) -> torch.nn.Module:
    """``--model``, imported where it runs (a Ray actor)."""
    model = _import(spec, "model")
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"--model {spec}: expected a torch.nn.Module, got {type(model).__name__}.")
    return model


def _refuse_missing_model(source: dict[str, Any] | None) -> None:
    """A folder fitted on ``--model`` needs it passed again: causalmad runs no code a folder names."""
    if source and "model" in source:
        raise InputError(
            f"this detector was fitted on --model {source['model']}"
            + (f" --hypothesis {source['hypothesis']}" if source.get("hypothesis") else "")
            + "; pass them again (causalmad runs no code named in a detector folder)."
        )


def _actor_hypothesis(spec: str) -> Any:
    """``--hypothesis``, imported where it runs (a Ray actor)."""
    from causalmad.hypothesis import Hypothesis

    hypothesis = _import(spec, "hypothesis")
    if not isinstance(hypothesis, Hypothesis):
        raise InputError(
            f"--hypothesis {spec}: expected a causalmad.Hypothesis, got {type(hypothesis).__name__}."
        )
    return hypothesis


def _partial_scores(args: argparse.Namespace, out: Path, chunk: int, n: int) -> Any:
    """This run's partial scores file; with ``--resume``, an earlier run's checked."""
    from causalmad.partial_scores import PartialScores, run_header

    partial = PartialScores(out, run_header(args.detector_dir, args.inputs, chunk, n, args.trust_modified))
    done = partial.resume() if args.resume else 0  # another run's partial scores are refused here
    if args.resume:
        _say(
            args,
            f"resuming: {done} of {n} inputs were scored before ({partial.path})"
            if partial.exists()
            else f"nothing to resume ({partial.path} does not exist): scoring from the start",
        )
    elif partial.exists():
        warnings.warn(
            f"replacing {partial.path}, the partial scores of an earlier run (pass --resume to continue "
            "that run instead)",
            CausalMADWarning,
            stacklevel=1,
        )
    return partial


def _write_scores(
    args: argparse.Namespace,
    out: Path,
    partial: Any,
    fmt: str,
    config: dict[str, Any],
    n: int,
    chunk: int,
    threshold: float,
    score: Callable[[Iterator[Any]], Iterator[tuple[Any, np.ndarray]]],
    eta: bool = False,
) -> tuple[int, list[Any]]:
    """The scores file, written atomically; the partial file kept until it is in place."""
    from causalmad.inputs import atomic_write

    try:
        with atomic_write(out) as f:
            found = _score_chunks(args, partial, f, fmt, config, n, chunk, threshold, score, eta)
    except BaseException as exc:
        partial.abandon(exc)
        raise
    partial.remove()
    return found


def _scored(
    args: argparse.Namespace,
    out: Path,
    n: int,
    flagged: int,
    threshold: float,
    kept: list[Any],
    detector: Callable[[], Any],
) -> int:
    """Say what was written, write ``--report`` (with ``detector()``), return the exit code."""
    from causalmad.inputs import atomic_write

    _say(args, f"wrote {out}: {n} inputs, {flagged} flagged at FPR {args.fpr} (threshold {threshold:.4g})")
    if args.report:
        from causalmad.report import html_report

        det = detector()
        if hasattr(det, "progress"):
            det.progress = False
        inputs, ids = torch.cat([k[0] for k in kept]), [i for k in kept for i in k[1]]
        with atomic_write(args.report) as f:
            f.write(
                html_report(
                    det,
                    inputs,
                    np.concatenate([k[2] for k in kept]),
                    ids,
                    fpr=args.fpr,
                    top=args.top,
                    title=f"causalmad report: {Path(args.inputs).name}",
                )
            )
        _say(args, f"wrote {args.report}")
    return 3 if args.fail_on_flag and flagged else 0


def _score_chunks(
    args: argparse.Namespace,
    partial: Any,
    f: Any,
    fmt: str,
    config: dict[str, Any],
    n: int,
    chunk: int,
    threshold: float,
    score: Callable[[Iterator[Any]], Iterator[tuple[Any, np.ndarray]]],
    eta: bool,
) -> tuple[int, list[Any]]:
    """Write the scores of every chunk to ``f``: those ``partial`` kept from an earlier
    run as they were, the others scored now by ``score`` (chunks in, each with its
    scores out, in order) and kept too. Returns the number flagged and, for ``--report``,
    the chunks (inputs, ids, scores)."""
    from causalmad.inputs import ScoresWriter, iter_inputs

    writer = ScoresWriter(f, fmt)
    stored = partial.stored()
    parts = iter_inputs(args.inputs, config["input_shape"], config["input_dtype"], chunk)
    kept: list[Any] = []
    flagged, t0, timed = 0, time.perf_counter(), False
    with progress_bar(n, "scoring", unit="input", enabled=not args.quiet) as bar:
        for part, scores, fresh in _stored_then_scored(parts, stored, score):
            if fresh:
                partial.append(part.offset, scores)
                if eta and not timed and part.offset + len(part.inputs) < n:
                    bar.note(_eta(len(part.inputs), n - part.offset, time.perf_counter() - t0))
                timed = True
            for i, s in enumerate(scores):
                writer.write(part.offset + i, part.ids[i], s, bool(s > threshold))
            flagged += int((scores > threshold).sum())
            if args.report:
                kept.append((part.inputs, part.ids, scores))
            bar.update(len(part.inputs))
    return flagged, kept


def _stored_then_scored(
    parts: Iterator[Any],
    stored: Iterator[np.ndarray],
    score: Callable[[Iterator[Any]], Iterator[tuple[Any, np.ndarray]]],
) -> Iterator[tuple[Any, np.ndarray, bool]]:
    """``(chunk, scores, scored now)`` in order: the first chunks' scores from an earlier
    run (``stored``, a prefix), the rest scored by ``score``."""
    for part in parts:
        scores = next(stored, None)
        if scores is None:
            for fresh, computed in score(itertools.chain([part], parts)):
                yield fresh, computed, True
            return
        yield part, scores, False


def _eta(done: int, total: int, seconds: float) -> str:
    """What the first chunk says of the whole run's time."""
    rate = done / seconds if seconds > 0 else math.inf
    left = (total - done) / rate
    return (
        f"first {done} inputs in {seconds:.1f} s ({rate:.3g} inputs/s): about "
        f"{_duration(left)} more for the other {total - done}"
    )


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _explain(args: argparse.Namespace) -> int:
    from causalmad.inputs import atomic_write, check_rows, parse_input, read_inputs
    from causalmad.persistence import read_config, remove_stale, write_atomic

    if (args.input is None) == (args.inputs is None):
        raise InputError("give the input to explain: --input '[...]' or --inputs FILE --index N.")
    _check_outputs(
        {"--out": args.out, "--plot": args.plot},
        {"the --inputs file": args.inputs, "the detector folder": args.detector_dir, **_code_files(args)},
    )
    config = read_config(args.detector_dir, args.trust_modified)
    if args.input is not None:
        data = parse_input(args.input, config["input_shape"], config["input_dtype"])
        row = 0
    else:
        data = read_inputs(args.inputs, config["input_shape"], config["input_dtype"])
        row = args.index
        if not 0 <= row < len(data.inputs):
            raise InputError(f"--index {row}: {args.inputs} has {len(data.inputs)} inputs (0-based).")
    det = _load(args, config)
    if hasattr(det, "progress"):
        det.progress = False
    check_rows(det, data, args.inputs or "--input")
    if not hasattr(det, "explain"):
        raise InputError(f"a {det.name!r} detector does not explain inputs.")
    result = det.explain(data.inputs[row], top=args.top, fpr=args.fpr)
    why = _json_safe({"id": data.ids[row], **result.to_dict()})
    text = json.dumps(why, indent=2, allow_nan=False)
    for target in (args.out, args.plot):
        if target:
            remove_stale(target)
    if args.out:
        with atomic_write(args.out) as f:
            f.write(text + "\n")
    if args.plot:
        from causalmad.report import explanation_chart

        write_atomic(args.plot, explanation_chart(why))
    if not args.out or not args.quiet:
        print(text)
    return 0


def _add_model_args(p: argparse.ArgumentParser, fitting: bool) -> None:
    g = p.add_argument_group("model" + ("" if fitting else " (only for detectors fitted with --model)"))
    if fitting:
        g.add_argument(
            "--task",
            help="a registered task (see `causalmad tasks`): its model, hypothesis and trusted inputs",
        )
        g.add_argument("--size", default="full", choices=["full", "tiny"], help="task size (default full)")
    g.add_argument("--model", help="module:function or file.py:function returning the torch model")
    g.add_argument(
        "--hypothesis", help="module:function or file.py:function returning the causalmad.Hypothesis"
    )
    g.add_argument("--device", default="cpu", help="where the model runs: cpu (default), cuda, cuda:1, ...")


TRUST_HELP = (
    "load the detector folder even if its files do not match its SHA256SUMS (changed since it was "
    "saved, or saved by an older causalmad); prints a warning"
)


class _Parser(argparse.ArgumentParser):
    """argparse with a bad command line reported in one line (what, and where to look),
    not a usage block."""

    def error(self, message: str) -> NoReturn:
        line = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {line} (see `{self.prog} --help`)\n")


#: options whose value may begin with '-' (a negative budget such as ``-5s``): argparse
#: would take the value for an option and answer "expected one argument"; joined to the
#: option with '=', the value reaches its own check, which says what is wrong with it
_SIGNED_VALUES = ("--budget",)


def _join_signed_values(argv: list[str]) -> list[str]:
    out: list[str] = []
    it = iter(argv)
    for token in it:
        if token in _SIGNED_VALUES:
            value = next(it, None)
            if value is not None and value.startswith("-") and not value.startswith("--"):
                out.append(f"{token}={value}")
                continue
            out.append(token)
            if value is not None:
                out.append(value)
            continue
        out.append(token)
    return out


def parser() -> argparse.ArgumentParser:
    import causalmad

    top = _Parser(prog="causalmad", description="Mechanistic anomaly detection by causal scrubbing.")
    top.add_argument("--version", action="version", version=f"causalmad {causalmad.__version__}")
    top.add_argument("-v", "--verbose", action="store_true", help="log progress of each step")
    common = _Parser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bars or progress messages")
    common.add_argument("--debug", action="store_true", help="on an error, print its traceback as well")
    sub = top.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", parents=[common], help="train (or load) the default task, fit, score, print the results table"
    )
    demo.add_argument("--task", default="addition-backdoor")
    demo.add_argument("--size", default="full", choices=["full", "tiny"])
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--resamples", type=int, default=4)
    demo.add_argument("--out", default="results/demo.json")
    demo.add_argument(
        "--device", default="cpu", help="where the model runs: cpu (default), cuda, cuda:1, ..."
    )
    demo.set_defaults(func=_demo)

    fit = sub.add_parser(
        "fit", parents=[common], help="fit a detector on trusted inputs and save it to a folder"
    )
    _add_model_args(fit, fitting=True)
    fit.add_argument("--trusted", help="with --model: trusted inputs file (JSON lines or .npy)")
    fit.add_argument(
        "--untrusted",
        help="unlabeled untrusted batch, for detectors that fit on one (que, spectral-signature; scrubbing "
        "weights its columns by it)",
    )
    fit.add_argument("--detector", default="scrubbing", help="detector name (default scrubbing)")
    fit.add_argument("--seed", type=int, default=0, help="task seed and detector random_state")
    fit.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="detector argument, value as JSON (repeatable), e.g. --param resamples=8",
    )
    fit.add_argument(
        "--budget",
        metavar="LIMIT",
        help="fit within this many seconds (600s, 10min, 1.5h) or forward rows (2e6rows): reduces the "
        "scrubbing detector's resamples and explanation budget to fit, never below their floors",
    )
    fit.add_argument("--out", required=True, help="detector folder to write")
    fit.add_argument("--force", action="store_true", help="replace an existing detector folder")
    fit.set_defaults(func=_fit)

    score = sub.add_parser("score", parents=[common], help="score an inputs file with a saved detector")
    score.add_argument("detector_dir", help="folder written by `causalmad fit`")
    score.add_argument(
        "inputs", help='inputs file: JSON lines (one array, or {"input": [...], "id": ...} per line) or .npy'
    )
    score.add_argument("--out", help="scores file, .jsonl or .csv (default: INPUTS with .scores.jsonl)")
    score.add_argument(
        "--fpr", type=float, default=0.01, help="false-positive rate of the flag (default 0.01)"
    )
    score.add_argument("--report", help="also write a self-contained HTML report here")
    score.add_argument("--top", type=int, default=10, help="flagged inputs explained in the report")
    score.add_argument(
        "--chunk",
        type=int,
        default=None,
        help=f"inputs scored per step (default {CHUNK}; with --ray about 4 per actor, at most {CHUNK})",
    )
    score.add_argument(
        "--budget",
        metavar="LIMIT",
        help="refuse the run, before scoring, if its estimate exceeds this many seconds (600s, 10min, "
        "1.5h) or forward rows (2e6rows); a fitted detector's explanations are fixed",
    )
    score.add_argument("--fail-on-flag", action="store_true", help="exit with code 3 if any input is flagged")
    score.add_argument("--trust-modified", action="store_true", help=TRUST_HELP)
    score.add_argument(
        "--resume",
        action="store_true",
        help="continue a run that was killed, from the chunks it kept in .OUT.causalmad-partial",
    )
    score.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="score on a Ray cluster (the ray extra): at ADDRESS, or a local instance without one "
        "(put --ray after DETECTOR_DIR INPUTS, or write --ray=ADDRESS)",
    )
    score.add_argument(
        "--ray-actors",
        type=int,
        default=None,
        metavar="N",
        help="Ray actors, each loading the detector once (default: one per CPU of the cluster, "
        "one per GPU with --device cuda)",
    )
    _add_model_args(score, fitting=False)
    score.set_defaults(func=_score)

    explain = sub.add_parser(
        "explain", parents=[common], help="why one input scored as it did (JSON, bar chart)"
    )
    explain.add_argument("detector_dir")
    explain.add_argument("--input", help="the input as a JSON array (or an object with an 'input' field)")
    explain.add_argument("--inputs", help="inputs file to take the input from (with --index)")
    explain.add_argument("--index", type=int, default=0, help="0-based input number in --inputs")
    explain.add_argument("--fpr", type=float, default=0.01)
    explain.add_argument("--top", type=int, default=5, help="explanations listed")
    explain.add_argument("--out", help="write the JSON here as well")
    explain.add_argument("--plot", help="write a bar chart (PNG) here")
    explain.add_argument("--trust-modified", action="store_true", help=TRUST_HELP)
    _add_model_args(explain, fitting=False)
    explain.set_defaults(func=_explain)

    bench = sub.add_parser(
        "bench", parents=[common], help="every detector on every task and split, side by side (resumable)"
    )
    bench.add_argument("--tasks", nargs="+", default=None, help="task names (default: all registered)")
    bench.add_argument(
        "--detectors", nargs="+", default=None, help="detector names (default: all registered)"
    )
    bench.add_argument("--size", default="full", choices=["full", "tiny"])
    bench.add_argument("--seeds", nargs="+", type=int, default=[0])
    bench.add_argument(
        "--max-inputs",
        type=int,
        default=None,
        help="quick run: first N normal and N anomalous inputs per split, 8N trusted",
    )
    bench.add_argument(
        "--out", default="results/bench", help="output folder; finished cells there are skipped"
    )
    bench.add_argument(
        "--device", default="cpu", help="where each task's model runs: cpu (default), cuda, ..."
    )
    bench.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="DETECTOR.NAME=VALUE",
        help="a detector argument, value as JSON (repeatable), e.g. --param scrubbing.resamples=8",
    )
    bench.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run each (task, detector, seed) cell as a Ray task (the ray extra): on the cluster at "
        "ADDRESS, or a local instance without one",
    )
    bench.set_defaults(func=_bench)
    tasks = sub.add_parser("tasks", help="list the registered tasks")
    tasks.set_defaults(func=_tasks, quiet=False)
    return top


_default_showwarning = warnings.showwarning


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """causalmad's own warnings as one line, like its errors; others as Python prints them."""
    if issubclass(category, CausalMADWarning):
        print(f"causalmad: warning: {message}", file=sys.stderr, flush=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(_join_signed_values(sys.argv[1:] if argv is None else list(argv)))
    except SystemExit as exc:  # argparse: 0 for --help/--version, 2 for bad usage
        return int(exc.code or 0)
    for name, default in (
        ("task", None),
        ("size", "full"),
        ("seed", None),
        ("model", None),
        ("hypothesis", None),
        ("device", "cpu"),
        ("trust_modified", False),
        ("debug", False),
    ):
        if not hasattr(args, name):
            setattr(args, name, default)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args.func(args))
    except CausalMADError as exc:
        return _error(args, str(exc), 2)
    except KeyboardInterrupt:
        print("causalmad: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `causalmad explain ... | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # the machine (no permission, a full disk), not a bug
        where = f"{exc.filename}: " if exc.filename else ""
        return _error(args, f"{where}{exc.strerror or exc}.", 2)
    except Exception as exc:
        return _error(
            args,
            f"{type(exc).__name__}: {exc}",
            1,
            "internal error",
            " (a bug in causalmad: run the command again with --debug and report the traceback)",
        )


def _error(args: argparse.Namespace, message: str, code: int, kind: str = "error", hint: str = "") -> int:
    """One line on stderr (the traceback too with --debug); returns the exit code."""
    if args.debug:
        traceback.print_exc()
    line = " ".join(message.split()) or "(no message)"  # one line whatever the message holds
    print(f"causalmad: {kind}: {line}{hint}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
