"""The side-by-side benchmark: every detector on every task and split, in one run.

``run_bench`` runs each selected detector on each selected task, split and seed with
``causalmad.evaluation.evaluate_splits`` (the same splits, trusted inputs and
held-out thresholds for every detector) and writes, under ``out``:

* ``results.json`` — one record per (task, split, detector, seed), rewritten atomically
  after every cell, so an interrupted run loses at most the cell it was computing;
* ``tasks.json`` — each loaded task's info (clean accuracy, attack success, training time);
* ``scores/*.npz`` — every cell's scores, labels and held-out trusted scores (the plots
  are drawn from them, so a resumed run plots finished cells without recomputing them);
  a scrubbing cell's file (``aggregation="calibrated"``, the default) also keeps what
  scoring it with other tail models or combinations needs
  (``causalmad.evaluation.scrubbing_arrays``), so that they can be measured without
  scrubbing again;
* ``results.md`` — the tables, mean ± std over seeds, the best detector per row in bold
  (a skyline is marked and never bolded);
* ``roc_<task>_<split>.png`` and ``hist_<task>_<split>.png`` — ROC curves of all detectors
  and their score histograms, normal versus anomalous (first seed).

Running again with the same ``out`` skips every finished cell; a task whose cells are all
finished is not even loaded.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from causalmad import persistence
from causalmad.detectors import DETECTORS, ActivationDetector, Detector, ScrubbingDetector
from causalmad.detectors.base import ScoreDetails
from causalmad.errors import CausalMADError, InputError, TaskError, close_matches
from causalmad.evaluation import evaluate_splits, scrubbing_ablation, scrubbing_arrays
from causalmad.models import move_model
from causalmad.progress import progress_bar, show_progress
from causalmad.task import Split, Task, available_tasks, load_task

logger = logging.getLogger(__name__)

Cell = tuple[str, str, str, str, int]  # task, size, split, detector, seed
# detector -> (its first seed's scores file, its records over seeds, that seed's record)
PlotCells = dict[str, tuple[dict[str, np.ndarray], list[dict[str, Any]], dict[str, Any]]]


def cell_of(record: dict[str, Any]) -> Cell:
    """The (task, size, split, detector, seed) cell a record belongs to."""
    return (record["task"], record["size"], record["split"], record["detector"], int(record["seed"]))


@dataclass
class BenchSummary:
    """What a ``run_bench`` call did."""

    out: Path
    records: list[dict[str, Any]]
    computed: list[Cell] = field(default_factory=list)
    skipped: list[Cell] = field(default_factory=list)
    failed: list[tuple[str, str, int, str]] = field(default_factory=list)  # task, detector, seed, error
    seconds: float = 0.0


def build_detector(
    name: str, task: Task, seed: int, progress: bool = False, params: dict[str, Any] | None = None
) -> Detector:
    """The registered detector ``name`` for ``task``: seeded with ``seed``, given the task's
    hypothesis if it takes one, with a progress bar if it has one, and ``params`` (its
    other constructor arguments, checked by ``check_params``)."""
    cls = DETECTORS[name]
    accepted = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {"random_state": seed}
    if "hypothesis" in accepted:
        kwargs["hypothesis"] = task.hypothesis
    if "progress" in accepted:
        kwargs["progress"] = progress
    return cls(task.model, **kwargs, **(params or {}))


#: constructor arguments a benchmark sets itself, never from ``params``
_OWN_ARGS = ("self", "model", "hypothesis", "random_state", "progress")


def check_params(params: dict[str, dict[str, Any]], detectors: Sequence[str]) -> None:
    """Raise [`InputError`][causalmad.errors.InputError] unless ``params`` (detector -> constructor arguments)
    names only selected detectors and arguments their constructors take."""
    for det, kwargs in params.items():
        if det not in detectors:
            raise InputError(
                f"parameters given for detector {det!r}, which this run does not include "
                f"(detectors: {list(detectors)})."
            )
        accepted = [a for a in inspect.signature(DETECTORS[det]).parameters if a not in _OWN_ARGS]
        unknown = [k for k in kwargs if k not in accepted]
        if unknown:
            raise InputError(f"detector {det!r} takes no parameter(s) {unknown}; it takes {accepted}.")


def extras(detector: Detector, split: Split, details: ScoreDetails) -> dict[str, Any]:
    """Per-detector extra fields: AUROC of each site and of max / mean aggregation for
    activation detectors; explanation counts and per-family AUROC for scrubbing."""
    from sklearn.metrics import roc_auc_score

    if isinstance(detector, ActivationDetector):
        z = detector.site_scores(split.inputs)
        return {
            "auroc_max_over_sites": float(roc_auc_score(split.labels, z.max(1))),
            "auroc_mean_over_sites": float(roc_auc_score(split.labels, z.mean(1))),
            "auroc_by_site": {
                s.key: float(roc_auc_score(split.labels, z[:, j])) for j, s in enumerate(detector.sites_)
            },
        }
    if isinstance(detector, ScrubbingDetector):
        return scrubbing_ablation(detector, split, details)
    return {}


# ----------------------------------------------------------------------------- files
def _slug(*parts: object) -> str:
    return "__".join(re.sub(r"[^A-Za-z0-9_.-]+", "_", str(p)) for p in parts)


def scores_path(out: Path, cell: Cell) -> Path:
    return out / "scores" / f"{_slug(*cell)}.npz"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, flushed and renamed into place."""
    persistence.write_atomic(path, text.encode())


def read_records(out: Path) -> list[dict[str, Any]]:
    """The records of ``out/results.json`` (none if the file does not exist)."""
    path = out / "results.json"
    if not path.exists():
        return []
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path} is not valid JSON ({exc}); move it away to start the benchmark afresh."
        ) from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and "detector" in r for r in records):
        raise InputError(f"{path} is not a list of benchmark records; move it away to start afresh.")
    return records


# ----------------------------------------------------------------------------- running
def _check_names(asked: Sequence[str] | None, known: Iterable[str], what: str) -> list[str]:
    known = sorted(known)
    if asked is None:
        return known
    unknown = [a for a in asked if a not in known and not (what == "task" and ":" in a)]
    if unknown:
        hint = close_matches(unknown[0], known)
        err = TaskError if what == "task" else InputError
        raise err(f"Unknown {what}(s) {unknown}; known: {known}.{hint}")
    return list(dict.fromkeys(asked))


def run_bench(
    out: str | Path,
    tasks: Sequence[str] | None = None,
    detectors: Sequence[str] | None = None,
    size: str = "full",
    seeds: Sequence[int] = (0,),
    progress: bool = False,
    max_inputs: int | None = None,
    device: torch.device | str = "cpu",
    params: dict[str, dict[str, Any]] | None = None,
    ray: bool | str = False,
) -> BenchSummary:
    """Run every selected detector on every selected task, split and seed.

    Args:
        out: output folder (created); an existing ``results.json`` there is resumed.
        tasks: task names (default: every registered task).
        detectors: detector names (default: every registered detector).
        size: task size passed to each task (``"full"`` or ``"tiny"``).
        max_inputs: a quick run: each split keeps its first ``max_inputs`` normal and first
            ``max_inputs`` anomalous inputs, and trusted data its first ``8 * max_inputs``.
            Cells are recorded with the sizes actually used.
        seeds: each seed trains (or loads) its own task model and seeds every detector.
        progress: progress bars over cells and inside long detectors.
        device: where each task's model runs (inputs are moved to it batch by batch);
            every record notes it, since fit and score times depend on it.
        params: detector -> constructor arguments other than the defaults (e.g.
            ``{"scrubbing": {"resamples": 8}}``). Records note them under ``params``, and a
            finished cell counts as finished only if it was computed with the same ones.
        ray: run each (task, detector, seed) cell as a Ray task (the ray extra): ``True``
            on a local Ray instance (started if none runs), a string on the cluster at that
            address. Each task is first loaded once by a Ray task of its own (training it
            into that node's cache if needed), then its cells run side by side, one CPU
            (or, with a CUDA ``device``, one GPU) each; this process writes every file, as
            each cell returns. The records are those of a run here, in the order the cells
            finished.

    Returns:
        a ``BenchSummary`` with every record in ``results.json`` and the cells
        computed, skipped as finished, and failed (a detector raising a causalmad error on
        a task, or a task whose factory raises [`TaskError`][causalmad.errors.TaskError], is reported and left
        unfinished; other cells go on).
    """
    t_start = time.perf_counter()
    out = Path(out)
    task_names = _check_names(tasks, available_tasks(), "task")
    det_names = _check_names(detectors, DETECTORS, "detector")
    if not seeds:
        raise InputError("seeds is empty; pass at least one seed.")
    params = {d: dict(kw) for d, kw in (params or {}).items() if kw}
    check_params(params, det_names)
    records = read_records(out)
    done = {
        cell_of(r) for r in records if "size" in r and r.get("params", {}) == params.get(r["detector"], {})
    }
    summary = BenchSummary(out=out, records=records)
    recorded = set(task_names)
    bar = progress_bar(len(seeds) * len(task_names) * len(det_names), "bench", unit="cell", enabled=progress)
    run = _RunState(
        out, size, det_names, str(torch.device(device)), params, records, done, summary, bar, recorded
    )
    if ray is False:
        _run_here(run, task_names, seeds, max_inputs, device, progress)
    else:
        _run_on_ray(run, task_names, seeds, max_inputs, None if ray is True else str(ray))
    bar.close()
    write_atomic(out / "results.md", results_markdown(records))
    infos = json.loads((out / "tasks.json").read_text()) if (out / "tasks.json").exists() else {}
    write_atomic(out / "tasks.md", tasks_markdown(records, infos))
    computed = {(c[0], c[2]) for c in summary.computed}
    plot_all(out, [r for r in records if r.get("size") == size and r["task"] in recorded], only=computed)
    summary.seconds = time.perf_counter() - t_start
    return summary


def _run_here(
    run: _RunState,
    task_names: list[str],
    seeds: Sequence[int],
    max_inputs: int | None,
    device: torch.device | str,
    progress: bool,
) -> None:
    """Every unfinished cell in this process, a task loaded once for all its detectors."""
    for seed in seeds:
        for task_name in task_names:
            if run.finished(task_name, seed):
                continue
            run.bar.set_postfix_str(f"{task_name} seed {seed}: loading task")
            torch.manual_seed(seed)
            try:
                with show_progress(progress):  # the task's training, if it is not cached
                    task = load_task(task_name, size=run.size, seed=seed)
            except TaskError as exc:  # a task that cannot be built here (an optional extra missing, say)
                logger.error(
                    "task %s (seed %d) could not be loaded, its cells are skipped: %s", task_name, seed, exc
                )
                run.summary.failed.append((task_name, "(loading the task)", seed, str(exc)))
                run.bar.update(len(run.det_names))
                continue
            if max_inputs is not None:
                task = limit_task(task, max_inputs)
            move_model(task.model, device)
            run.recorded.add(task.name)  # records go by the task's name ("module:function" factories too)
            _record_task_info(run.out, task.name, run.size, task.seed, task.info, list(task.splits))
            for det_name in run.det_names:
                todo = run.todo(task.name, list(task.splits), det_name, seed)
                if todo:
                    run.bar.set_postfix_str(f"{task_name} seed {seed}: {det_name}")
                    _run_cells(
                        run.out,
                        task,
                        det_name,
                        todo,
                        run.size,
                        seed,
                        progress,
                        run.records,
                        run.done,
                        run.summary,
                        run.device,
                        run.params.get(det_name, {}),
                    )
                run.bar.update(1)


def limit_task(task: Task, max_inputs: int) -> Task:
    """``task`` with at most ``max_inputs`` normal and ``max_inputs`` anomalous inputs per
    split (the first ones) and its first ``8 * max_inputs`` trusted inputs."""
    if max_inputs < 1:
        raise InputError(f"max_inputs must be >= 1, got {max_inputs}.")
    splits = {}
    for name, split in task.splits.items():
        keep = np.r_[
            np.flatnonzero(split.labels == 0)[:max_inputs], np.flatnonzero(split.labels == 1)[:max_inputs]
        ]
        keep.sort()
        splits[name] = Split(name, split.inputs[torch.as_tensor(keep)], split.labels[keep])
    return dataclasses.replace(task, trusted=task.trusted[: 8 * max_inputs], splits=splits)


def _record_task_info(
    out: Path, name: str, size: str, seed: int, info: dict[str, Any], splits: list[str] | None = None
) -> None:
    """Keep each loaded task's ``info`` (accuracies, training time) in ``out/tasks.json``,
    with the names of its splits (``"splits"``), so that a resumed run knows a task is
    unfinished when it was interrupted between two of its splits."""
    path = out / "tasks.json"
    infos = json.loads(path.read_text()) if path.exists() else {}
    infos[f"{name}/{size}/seed{seed}"] = {**info, **({"splits": splits} if splits is not None else {})}
    write_atomic(path, json.dumps(infos, indent=1, default=str))


def _run_cells(
    out: Path,
    task: Task,
    det_name: str,
    splits: list[str],
    size: str,
    seed: int,
    progress: bool,
    records: list[dict[str, Any]],
    done: set[Cell],
    summary: BenchSummary,
    device: str,
    params: dict[str, Any],
) -> None:
    try:
        for record, arrays in evaluate_cells(task, det_name, splits, size, seed, progress, device, params):
            _store(out, record, arrays, records, done, summary)
    except CausalMADError as exc:
        logger.error("%s on %s (seed %d) failed: %s", det_name, task.name, seed, exc)
        summary.failed.append((task.name, det_name, seed, str(exc)))


def evaluate_cells(
    task: Task,
    det_name: str,
    splits: list[str],
    size: str,
    seed: int,
    progress: bool,
    device: str,
    params: dict[str, Any],
) -> Iterator[tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """Fit ``det_name`` on ``task`` and score ``splits``: each cell's record and its
    arrays (scores, labels, held-out trusted scores), as each split is scored."""
    # seeded per cell, so a resumed run computes what an uninterrupted one would have
    torch.manual_seed(seed)
    np.random.seed(seed)
    detector = build_detector(det_name, task, seed, progress, params)
    kept: dict[str, np.ndarray] = {}

    def extras_kept(det: Detector, split: Split, details: ScoreDetails) -> dict[str, Any]:
        if isinstance(det, ScrubbingDetector):  # the split's divergences, for scrubbing_arrays
            kept["divergences"] = np.asarray(details.parts["divergences"])
        return extras(det, split, details)

    for record, scores in evaluate_splits(det_name, detector, task, splits=splits, extras=extras_kept):
        record["size"] = size
        record["device"] = device
        if params:
            record["params"] = params
        labels = task.splits[record["split"]].labels
        arrays = {"scores": scores, "labels": labels, "heldout": np.asarray(detector.heldout_scores_)}
        if (
            isinstance(detector, ScrubbingDetector)
            and detector.aggregation == "calibrated"
            and "divergences" in kept
        ):
            arrays |= scrubbing_arrays(detector, kept.pop("divergences"))
        yield record, arrays


def _store(
    out: Path,
    record: dict[str, Any],
    arrays: dict[str, np.ndarray],
    records: list[dict[str, Any]],
    done: set[Cell],
    summary: BenchSummary,
) -> None:
    """Write one finished cell: its scores file, ``results.json`` and ``results.md``."""
    cell = cell_of(record)
    path = scores_path(out, cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]  # (no object arrays: nothing pickled)
    records[:] = [r for r in records if "size" not in r or cell_of(r) != cell] + [record]
    write_atomic(out / "results.json", json.dumps(records, indent=1))
    write_atomic(out / "results.md", results_markdown(records))
    done.add(cell)
    summary.computed.append(cell)
    logger.info(
        "%s / %s / %s / seed %d: AUROC %.3f", cell[0], record["split"], cell[3], cell[4], record["auroc"]
    )


# ----------------------------------------------------------------------------- on Ray
@dataclass
class _RunState:
    """What one ``run_bench`` call writes to and keeps count in."""

    out: Path
    size: str
    det_names: list[str]
    device: str
    params: dict[str, dict[str, Any]]
    records: list[dict[str, Any]]
    done: set[Cell]
    summary: BenchSummary
    bar: Any
    recorded: set[str]

    @functools.cached_property
    def earlier_infos(self) -> dict[str, Any]:
        """``tasks.json`` as earlier runs left it, read once (what ``finished`` consults)."""
        path = self.out / "tasks.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def finished(self, task_name: str, seed: int) -> bool:
        """Whether every cell of a task and seed is finished, as far as earlier runs wrote
        its splits (in records, and in ``tasks.json`` when a run loaded the task: a run
        interrupted between two splits wrote only the first's records); then it is not even
        loaded, and counted as skipped."""
        listed = self.earlier_infos.get(f"{task_name}/{self.size}/seed{seed}", {}).get("splits", [])
        known_splits = sorted(
            {
                r["split"]
                for r in self.records
                if r["task"] == task_name and r.get("size") == self.size and int(r["seed"]) == seed
            }
            | set(listed)
        )
        cells = [(task_name, self.size, s, d, seed) for s in known_splits for d in self.det_names]
        if not known_splits or not all(c in self.done for c in cells):
            return False
        self.summary.skipped += cells
        self.bar.update(len(self.det_names))
        return True

    def todo(self, task_name: str, splits: list[str], det_name: str, seed: int) -> list[str]:
        """The splits of a (task, detector, seed) cell still to compute (the others skipped)."""
        cells = [(task_name, self.size, s, det_name, seed) for s in splits]
        self.summary.skipped += [c for c in cells if c in self.done]
        return [c[2] for c in cells if c not in self.done]


def prepare_task(task_name: str, size: str, seed: int) -> tuple[str, int, dict[str, Any], list[str]]:
    """On a Ray worker: load ``task_name`` once (training it into that node's cache if it
    is not there), so that its cells load it from the cache. Returns its name, seed, info
    and split names."""
    torch.manual_seed(seed)
    task = load_task(task_name, size=size, seed=seed)
    return task.name, task.seed, task.info, list(task.splits)


def run_cell(
    task_name: str,
    size: str,
    seed: int,
    det_name: str,
    splits: list[str],
    max_inputs: int | None,
    device: str,
    params: dict[str, Any],
) -> tuple[list[tuple[dict[str, Any], dict[str, np.ndarray]]], str | None]:
    """On a Ray worker: one (task, detector, seed) cell, as ``run_bench`` computes it
    here. Returns each split's record and arrays, and the causalmad error that stopped it
    (or ``None``)."""
    torch.manual_seed(seed)
    task = load_task(task_name, size=size, seed=seed)
    if max_inputs is not None:
        task = limit_task(task, max_inputs)
    move_model(task.model, device)
    found: list[tuple[dict[str, Any], dict[str, np.ndarray]]] = []
    try:
        for cell in evaluate_cells(task, det_name, splits, size, seed, False, device, params):
            found.append(cell)
    except CausalMADError as exc:
        return found, str(exc)
    return found, None


def _run_on_ray(
    run: _RunState, task_names: list[str], seeds: Sequence[int], max_inputs: int | None, address: str | None
) -> None:
    """Every unfinished cell as a Ray task; the files written here as each returns."""
    from causalmad.distributed import get, ray_session

    with ray_session(address, "causalmad bench --ray") as ray:
        need = {"num_gpus": 1} if torch.device(run.device).type == "cuda" else {"num_cpus": 1}
        prepare, cell = ray.remote(prepare_task).options(**need), ray.remote(run_cell).options(**need)
        pending: dict[Any, tuple[str, int, str]] = {}  # ref -> task name, seed, detector ("" to load)
        for seed in seeds:
            for task_name in task_names:
                if not run.finished(task_name, seed):
                    pending[prepare.remote(task_name, run.size, seed)] = (task_name, seed, "")
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            task_name, seed, det_name = pending.pop(ref)
            if det_name:
                found, error = get(ray, ref)
                for record, arrays in found:
                    _store(run.out, record, arrays, run.records, run.done, run.summary)
                if error is not None:
                    logger.error("%s on %s (seed %d) failed: %s", det_name, task_name, seed, error)
                    run.summary.failed.append((task_name, det_name, seed, error))
                run.bar.update(1)
                continue
            try:
                name, task_seed, info, splits = get(ray, ref)
            except TaskError as exc:
                logger.error(
                    "task %s (seed %d) could not be loaded, its cells are skipped: %s", task_name, seed, exc
                )
                run.summary.failed.append((task_name, "(loading the task)", seed, str(exc)))
                run.bar.update(len(run.det_names))
                continue
            run.recorded.add(name)
            _record_task_info(run.out, name, run.size, task_seed, info, list(splits))
            for det in run.det_names:
                todo = run.todo(name, splits, det, seed)
                if not todo:
                    run.bar.update(1)
                    continue
                args = (task_name, run.size, seed, det, todo, max_inputs, run.device, run.params.get(det, {}))
                pending[cell.remote(*args)] = (name, seed, det)


# ----------------------------------------------------------------------------- tables
def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std()) if len(a) > 1 else 0.0


def _fmt(values: list[float], digits: int = 3) -> str:
    m, s = _mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


METRICS = [
    ("auroc", "AUROC"),
    ("ap", "AP"),
    ("tpr_at_1pct_fpr", "TPR @ 1 % FPR"),
    ("tpr_at_5pct_fpr", "TPR @ 5 % FPR"),
]


def _label(name: str, skyline: bool) -> str:
    return f"{name} (skyline)" if skyline else name


def results_markdown(records: list[dict[str, Any]]) -> str:
    """The results tables: a summary of AUROC per (task, split) × detector, then each
    split's full table; mean ± std over seeds; best non-skyline in bold."""
    lines = [
        "# Benchmark results",
        "",
        "Mean ± std over seeds. **Bold**: the best detector of the row (skylines excluded; they see",
        "anomaly labels). TPR thresholds are quantiles of held-out *trusted* scores.",
        "",
    ]
    sizes = sorted({str(r.get("size", "?")) for r in records})
    for size in sizes:
        rs = [r for r in records if str(r.get("size", "?")) == size]
        if len(sizes) > 1:
            lines += [f"## size `{size}`", ""]
        lines += [*_summary_table(rs), ""]
        lines += [*_summary_table(rs, "tpr_at_1pct_fpr", "TPR at 1 % FPR"), ""]
        lines += _family_table(rs)
        lines += _variants_table(rs)
        for task, split in sorted({(r["task"], r["split"]) for r in rs}):
            lines += [
                *_split_table([r for r in rs if r["task"] == task and r["split"] == split], task, split),
                "",
            ]
    return "\n".join(lines)


TASK_DETECTORS = ("scrubbing", "mahalanobis", "output-disagreement")


def tasks_markdown(records: list[dict[str, Any]], infos: dict[str, dict[str, Any]]) -> str:
    """One row per task and split: the task's own figures (``Task.info``: clean accuracy,
    attack success rate, training time; mean over seeds), split sizes, and the AUROC of
    the scrubbing detector, Mahalanobis and output disagreement."""
    head = [
        "task",
        "size",
        "split",
        "clean acc.",
        "attack success",
        "train s",
        "trusted",
        "normal",
        "anomalous",
        *(f"AUROC {d}" for d in TASK_DETECTORS),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def info_mean(task: str, size: str, key: str, digits: int) -> str:
        vals = [
            float(v[key])
            for k, v in infos.items()
            if k.startswith(f"{task}/{size}/") and v.get(key) is not None
        ]
        return f"{np.mean(vals):.{digits}f}" if vals else "–"

    for task, size, split in sorted({(r["task"], str(r.get("size", "?")), r["split"]) for r in records}):
        rs = [
            r
            for r in records
            if r["task"] == task and str(r.get("size", "?")) == size and r["split"] == split
        ]
        sizes = [str(rs[0][k]) for k in ("n_trusted", "n_normal", "n_anomalous")]
        aurocs = [
            _fmt([r["auroc"] for r in rs if r["detector"] == d])
            if any(r["detector"] == d for r in rs)
            else "–"
            for d in TASK_DETECTORS
        ]
        lines.append(
            "| "
            + " | ".join(
                [
                    task,
                    size,
                    split,
                    info_mean(task, size, "clean_accuracy", 3),
                    info_mean(task, size, "attack_success_rate", 3),
                    info_mean(task, size, "train_seconds", 0),
                    *sizes,
                    *aurocs,
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def _by_detector(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(
        records, key=lambda r: (bool(r.get("skyline")), r["detector"] != "scrubbing", r["detector"])
    ):
        out.setdefault(r["detector"], []).append(r)
    return out


def _best(groups: dict[str, list[dict[str, Any]]], key: str, higher: bool = True) -> set[str]:
    means = {
        d: round(_mean_std([r[key] for r in rs])[0], 3)
        for d, rs in groups.items()
        if not rs[0].get("skyline") and all(r.get(key) is not None for r in rs)
    }
    if not means:
        return set()
    target = max(means.values()) if higher else min(means.values())
    return {d for d, m in means.items() if m == target}


def _summary_table(records: list[dict[str, Any]], key: str = "auroc", title: str = "AUROC") -> list[str]:
    """One row per (task, split), one column per detector: ``key``'s mean ± std over
    seeds, the best non-skyline baseline and scrubbing's difference from it, and the
    seeds the row holds."""
    dets = list(_by_detector(records))
    sky = {r["detector"] for r in records if r.get("skyline")}
    has_scrub = "scrubbing" in dets
    head = ["task", "split", *(_label(d, d in sky) for d in dets)]
    if has_scrub:
        head += ["best baseline", "scrubbing − best baseline"]
    head.append("seeds")
    lines = [f"### {title}, every detector", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task, split in sorted({(r["task"], r["split"]) for r in records}):
        rows = [r for r in records if r["task"] == task and r["split"] == split]
        groups = _by_detector(rows)
        best = _best(groups, key)
        row = [task, split]
        for d in dets:
            cell = _fmt([r[key] for r in groups[d]]) if d in groups else "–"
            row.append(f"**{cell}**" if d in best else cell)
        if has_scrub:
            baselines = {
                d: _mean_std([r[key] for r in rs])[0]
                for d, rs in groups.items()
                if d != "scrubbing" and not rs[0].get("skyline")
            }
            if "scrubbing" in groups and baselines:
                top = max(baselines, key=lambda d: baselines[d])
                gap = _mean_std([r[key] for r in groups["scrubbing"]])[0] - baselines[top]
                row += [f"{top} ({baselines[top]:.3f})", f"{gap:+.3f}"]
            else:
                row += ["–", "–"]
        row.append(" ".join(str(s) for s in sorted({r.get("seed") for r in rows}, key=str)))
        lines.append("| " + " | ".join(row) + " |")
    return lines


#: the scrubbing detector's AUROC with all valid explanations and with each family alone
FAMILY_KEYS = [
    ("auroc", "all valid (the score)"),
    ("auroc_declared_hypothesis", "declared hypothesis"),
    ("auroc_hypothesis_and_subsets", "hypothesis, subsets and interchanges"),
    ("auroc_pieces_only", "pieces of sites only"),
    ("auroc_input_cut_only", "input cut only"),
    ("auroc_hypothesis_free_only", "hypothesis-free only"),
]


def _family_table(records: list[dict[str, Any]]) -> list[str]:
    """Scrubbing AUROC per (task, split) when the score combines one explanation family
    only: which explanations carry the signal, and which dilute it. No lines when no
    scrubbing record carries the per-family figures; no column for a family that no record
    has (the hypothesis-free claims, under a hypothesis, by default)."""
    scrub = [r for r in records if r["detector"] == "scrubbing" and "auroc_declared_hypothesis" in r]
    if not scrub:
        return []
    keys = [(k, label) for k, label in FAMILY_KEYS if any(r.get(k) is not None for r in scrub)]
    lines = [
        "### Scrubbing AUROC by explanation family",
        "",
        "The detector's score over every valid explanation and input-cut scrub beside the same",
        "combination over one family alone; `–`: the family has no valid column there.",
        "",
        "| task | split | " + " | ".join(label for _, label in keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for task, split in sorted({(r["task"], r["split"]) for r in scrub}):
        rs = [r for r in scrub if r["task"] == task and r["split"] == split]
        cells = []
        for key, _ in keys:
            vals = [r[key] for r in rs if r.get(key) is not None]
            cells.append(_fmt(vals) if len(vals) == len(rs) else "–")
        lines.append(f"| {task} | {split} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _variants_table(records: list[dict[str, Any]]) -> list[str]:
    """Scrubbing AUROC per (task, split) with each mechanism switched off alone
    (``auroc_variants``: ``causalmad.evaluation.scrubbing_variants``, from the same
    divergences); mean over seeds, ``–`` where a variant has no column. No lines when no
    record carries the variants."""
    scrub = [r for r in records if r["detector"] == "scrubbing" and r.get("auroc_variants")]
    if not scrub:
        return []
    names = list(dict.fromkeys(name for r in scrub for name in r["auroc_variants"]))
    lines = [
        "### Scrubbing AUROC with each mechanism switched off alone",
        "",
        "`all` is the score; every other column recomputes it from the same divergences with",
        "one mechanism off (`causalmad.evaluation.scrubbing_variants`).",
        "",
        "| task | split | " + " | ".join(names) + " | seeds |",
        "|---|---|" + "---|" * (len(names) + 1),
    ]
    for task, split in sorted({(r["task"], r["split"]) for r in scrub}):
        rs = [r for r in scrub if r["task"] == task and r["split"] == split]
        cells = []
        for name in names:
            vals = [r["auroc_variants"][name] for r in rs if name in r["auroc_variants"]]
            cells.append(f"{np.mean(vals):.3f}" if len(vals) == len(rs) else "–")
        seeds = " ".join(str(s) for s in sorted({int(r["seed"]) for r in rs}))
        lines.append(f"| {task} | {split} | " + " | ".join(cells) + f" | {seeds} |")
    return [*lines, ""]


def _split_table(records: list[dict[str, Any]], task: str, split: str) -> list[str]:
    groups = _by_detector(records)
    r0 = records[0]
    seeds = sorted({int(r["seed"]) for r in records})
    lines = [
        f"### {task} / {split}",
        "",
        f"{r0['n_trusted']} trusted, {r0['n_normal']} normal and {r0['n_anomalous']} anomalous "
        "untrusted inputs; "
        f"seeds {', '.join(map(str, seeds))}.",
        "",
    ]
    head = ["detector", *(m[1] for m in METRICS), "fit s", "score s", "seeds"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = {key: _best(groups, key) for key, _ in METRICS}
    for d, rs in groups.items():
        row = [_label(d, bool(rs[0].get("skyline")))]
        for key, _ in METRICS:
            cell = _fmt([r[key] for r in rs])
            row.append(f"**{cell}**" if d in best[key] else cell)
        row += [
            _fmt([r["fit_seconds"] for r in rs], 1),
            _fmt([r["score_seconds"] for r in rs], 1),
            str(len(rs)),
        ]
        lines.append("| " + " | ".join(row) + " |")
    agg = {d: rs for d, rs in groups.items() if all("auroc_mean_over_sites" in r for r in rs)}
    if agg:
        lines += [
            "",
            "Activation detectors, AUROC by aggregation over sites (standardised per-site scores):",
            "",
            "| detector | max over sites | mean over sites |",
            "|---|---|---|",
        ]
        for d, rs in agg.items():
            lines.append(
                f"| {_label(d, bool(rs[0].get('skyline')))} "
                f"| {_fmt([r['auroc_max_over_sites'] for r in rs])} "
                f"| {_fmt([r['auroc_mean_over_sites'] for r in rs])} |"
            )
    return lines


# ----------------------------------------------------------------------------- plots
def plot_all(
    out: Path, records: list[dict[str, Any]], only: set[tuple[str, str]] | None = None
) -> list[Path]:
    """ROC curves and score histograms for every (task, split) in ``records`` (each
    detector's first seed whose scores file exists). With ``only``, just those rows and
    rows whose pictures are missing (a resumed run redraws what it changed). Returns the
    files written."""
    written = []
    for task, split in sorted({(r["task"], r["split"]) for r in records}):
        pictures = [out / f"{kind}_{_slug(task)}_{_slug(split)}.png" for kind in ("roc", "hist")]
        if only is not None and (task, split) not in only and all(p.exists() for p in pictures):
            continue
        cells = {}
        for d, rs in _by_detector([r for r in records if r["task"] == task and r["split"] == split]).items():
            for r in sorted(rs, key=lambda r: int(r["seed"])):
                path = scores_path(out, cell_of(r))
                if path.exists():
                    with np.load(path) as f:
                        cells[d] = (dict(f), rs, r)
                    break
            else:
                logger.warning("no scores file for %s / %s / %s; left out of the plots", task, split, d)
        if cells:
            written += [
                plot_roc(pictures[0], cells, task, split),
                plot_histograms(pictures[1], cells, task, split),
            ]
    return written


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(path: Path, cells: PlotCells, task: str, split: str) -> Path:
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5.5))
    for d, (f, rs, _) in cells.items():
        fpr, tpr, _ = roc_curve(f["labels"], f["scores"])
        sky = bool(rs[0].get("skyline"))
        ax.plot(
            fpr,
            tpr,
            ls="--" if sky else "-",
            lw=2.2 if d == "scrubbing" else 1.3,
            label=f"{_label(d, sky)}  AUROC {_fmt([r['auroc'] for r in rs])}",
        )
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    seed = min(int(r["seed"]) for _, _, r in cells.values())
    ax.set(
        xlabel="false-positive rate",
        ylabel="true-positive rate",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title=f"{task} / {split} (curves: seed {seed}; AUROC: mean ± std over seeds)",
    )
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_histograms(path: Path, cells: PlotCells, task: str, split: str) -> Path:
    plt = _pyplot()
    n = len(cells)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for ax, (d, (f, _rs, first)) in zip(axes.flat, cells.items()):
        s, y = f["scores"], f["labels"]
        lo, hi = np.quantile(np.r_[s, f["heldout"]], [0.005, 0.995])
        hi = hi if hi > lo else lo + 1.0
        bins = np.linspace(lo, hi, 40)
        clip = lambda v: np.clip(v, lo, hi)  # noqa: E731
        ax.hist(clip(s[y == 0]), bins, alpha=0.55, density=True, label="normal")
        ax.hist(clip(s[y == 1]), bins, alpha=0.55, density=True, label="anomalous")
        ax.axvline(
            np.quantile(f["heldout"], 0.99, method="higher"),
            color="k",
            ls="--",
            lw=0.8,
            label="1 % FPR threshold",
        )
        ax.set_title(
            f"{_label(d, bool(first.get('skyline')))}: seed {first['seed']}, AUROC {first['auroc']:.3f}",
            fontsize=8,
        )
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(
        f"{task} / {split}: scores, normal vs anomalous (first seed; tails clipped to 0.5–99.5 %)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
