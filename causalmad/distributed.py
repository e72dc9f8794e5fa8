"""Scoring on a Ray cluster (the optional ``ray`` extra: ``pip install 'causalmad[ray]'``).

A saved detector folder is scored by a pool of Ray actors. Each actor loads the folder
once, through ``causalmad.persistence.load_detector`` and all of its checks (the
folder is data: only its path travels; the model and hypothesis come from the registered
task the folder records, or from the caller), then scores the blocks of inputs it is
sent. The driver reads and checks the inputs, hands out blocks (at most two per actor in
flight, so memory holds a few blocks whatever the file's length) and takes the scores
back **in input order**. A Ray Dataset is scored with Ray Data instead
(``Dataset.map_batches`` over the same actors, order preserved).

Scores are bitwise identical to single-process scoring: a scrubbing detector draws each
input's trusted sources from that input alone, so a score does not depend on the block it
was scored in (``tests/test_ray.py`` checks it with 1, 2 and 4 actors). Each actor runs
torch with one thread (a fraction of a CPU when there are more actors than CPUs), or on
one GPU of its own with ``device="cuda"``.

Ray is imported only when one of these functions runs; without it they raise
``causalmad.errors.MissingExtraError`` in one line.
"""

from __future__ import annotations

import itertools
import logging
import math
import socket
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from causalmad.errors import CausalMADError, InputError, MissingExtraError
from causalmad.hypothesis import Hypothesis
from causalmad.inputs import InputsFile, check_rows, count_inputs, iter_inputs
from causalmad.models import move_model
from causalmad.persistence import load_detector, read_config
from causalmad.task import folder_task, load_task

logger = logging.getLogger(__name__)

INSTALL = "pip install 'causalmad[ray]'"
#: blocks sent ahead to each actor: one being scored, one waiting
IN_FLIGHT = 2
#: the largest block a default run sends (``causalmad score``'s default ``--chunk``)
MAX_CHUNK = 4096

ModelSpec = nn.Module | Callable[[], nn.Module] | None
HypothesisSpec = Hypothesis | Callable[[], Hypothesis | None] | None


def require_ray(what: str = "this") -> Any:
    """The ``ray`` module, or one clear line saying how to install it.

    Args:
        what: what needs Ray, for the message (``"causalmad score --ray"``).

    Returns:
        the imported ``ray`` module.

    Raises:
        MissingExtraError: Ray is not installed.
    """
    try:
        import ray
    except ImportError as exc:
        raise MissingExtraError(f"{what} needs the ray extra: {INSTALL} ({exc}).") from None
    return ray


@contextmanager
def ray_session(address: str | None = None, what: str = "this") -> Iterator[Any]:
    """Ray, connected: the instance this process is attached to already, else the
    cluster at ``address``, else a running local instance or a new one. A connection this
    call made is closed when the block ends; one that was there before is left open.

    Args:
        address: a Ray cluster's address (``"ray://head:10001"``, ``"head:6379"``,
            ``"auto"``); ``None`` attaches to a local instance or starts one.
        what: what needs Ray, for the messages.

    Yields:
        the ``ray`` module.

    Raises:
        MissingExtraError: Ray is not installed.
        InputError: no Ray cluster answers at ``address``.
    """
    ray = require_ray(what)
    if ray.is_initialized():
        yield ray
        return
    if address:
        check_reachable(address, what)
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"at {address!r}" if address else "on this machine"
        raise InputError(f"{what}: cannot start or reach a Ray cluster {where} ({exc}).") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def check_reachable(address: str, what: str = "this", timeout: float = 10.0) -> None:
    """Refuse, in one line, a ``host:port`` (or ``ray://host:port``) address where nothing
    answers, rather than let Ray retry it for minutes. ``"auto"`` and other forms pass.

    Raises:
        InputError: nothing accepts a connection at the address within ``timeout`` seconds.
    """
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise InputError(
            f"{what}: no Ray cluster answers at {address!r} ({exc.strerror or exc}); start one there "
            "(ray start --head) or give its address."
        ) from None


def unwrap(ray: Any, exc: BaseException) -> BaseException:
    """The causalmad error a Ray task or actor raised, out of Ray's wrappers (or ``exc``)."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None or isinstance(seen, CausalMADError):
            break
        cause = getattr(seen, "cause", None) if isinstance(seen, ray.exceptions.RayTaskError) else None
        seen = cause if cause is not None else seen.__cause__
    return seen if isinstance(seen, CausalMADError) else exc


def get(ray: Any, refs: Any) -> Any:
    """``ray.get(refs)``, a causalmad error raised remotely re-raised as itself."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayError as exc:
        cause = unwrap(ray, exc)
        if cause is exc:
            raise
        raise cause from None


@dataclass
class FolderLoader:
    """How an actor loads a detector folder: the folder, and the model and hypothesis it
    was fitted with. Called once per actor, on the actor.

    Args:
        folder: the detector folder (read with every check of
            ``causalmad.persistence.load_detector``).
        model: the model, a function of no arguments that returns it (run on the actor:
            a large model is then built there rather than sent), or ``None`` for the
            registered task the folder records.
        hypothesis: the hypothesis, a function returning it, or ``None`` (the task's, when
            the folder was fitted on a task with one).
        trust_modified: load a folder whose files do not match its checksums (warns).
        device: where the model runs on the actor.
    """

    folder: str
    model: ModelSpec = None
    hypothesis: HypothesisSpec = None
    trust_modified: bool = False
    device: str = "cpu"

    def __call__(self) -> Any:
        config = read_config(self.folder, self.trust_modified)
        model, hypothesis = self.model, self.hypothesis
        if model is None:
            name, size, seed = folder_task(recorded_source(config, self.folder), self.folder)
            task = load_task(name, size=size, seed=seed)
            model = task.model
            if hypothesis is None and config.get("hypothesis") is not None:
                hypothesis = task.hypothesis
        elif not isinstance(model, nn.Module):
            model = model()
        if hypothesis is not None and not isinstance(hypothesis, Hypothesis):
            hypothesis = hypothesis()
        move_model(model, self.device)
        detector = load_detector(self.folder, model, hypothesis, trust_modified=self.trust_modified)
        if hasattr(detector, "progress"):
            detector.progress = False
        return detector


def recorded_source(config: dict[str, Any], folder: str | Path) -> dict[str, Any]:
    """The ``source`` a detector folder's config records (where its model came from).

    Raises:
        InputError: the folder records no registered task, so the model must be given.
    """
    extra = config.get("extra")
    source = extra.get("source") if isinstance(extra, dict) else None
    if not isinstance(source, dict) or "task" not in source:
        fitted = (
            f" (it was fitted on {source['model']})" if isinstance(source, dict) and "model" in source else ""
        )
        raise InputError(
            f"{folder} was not fitted on a registered task{fitted}: pass its model (and hypothesis); "
            "causalmad runs no code named in a detector folder."
        )
    return source


class Scorer:
    """One actor's work: the detector, loaded once, scoring the blocks it is sent.

    A loading error is kept and raised by ``ready``, so that the driver gets the
    causalmad error itself rather than Ray's report of a dead actor.
    """

    def __init__(self, loader: Callable[[], Any]) -> None:
        torch.set_num_threads(1)  # one actor per CPU: threads would only contend
        self.error: CausalMADError | None = None
        try:
            self.detector = loader()
        except CausalMADError as exc:
            self.error = exc

    def ready(self) -> bool:
        if self.error is not None:
            raise self.error
        return True

    def threshold(self, fpr: float) -> float:
        return float(self.detector.threshold(fpr))

    def score(self, part: InputsFile, path: str) -> np.ndarray:
        """Scores of one block of an inputs file (a bad input is named by its line)."""
        check_rows(self.detector, part, path)
        return self.detector.score(part.inputs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data: a numpy batch with an ``input`` column -> its ``score`` column."""
        self.ready()
        raw = torch.from_numpy(np.array(batch["input"]))  # a copy: Ray hands read-only arrays
        x = raw.to(getattr(torch, self.detector.input_dtype_))
        if not x.is_floating_point() and x.dtype != raw.dtype and not torch.equal(x.to(raw.dtype), raw):
            # token ids given as floats: 3.7 -> 3 would score another input
            raise InputError(
                f"Ray Dataset column 'input': {raw.dtype} values that {x.dtype} cannot hold exactly "
                f"(the detector was fitted on {x.dtype} inputs); give them as {x.dtype}."
            )
        return {"score": self.detector.score(x)}


class ActorPool:
    """Scoring actors on a Ray cluster, each holding the detector (see the module
    docstring). Made by ``scoring_actors``.

    Attributes:
        size: the number of actors.
    """

    def __init__(self, ray: Any, actors: list[Any]) -> None:
        self.ray, self.actors, self.size = ray, actors, len(actors)

    def threshold(self, fpr: float) -> float:
        """The detector's flagging threshold at ``fpr`` (computed by the first actor)."""
        return float(get(self.ray, self.actors[0].threshold.remote(fpr)))

    def score_parts(self, parts: Iterable[InputsFile], path: str) -> Iterator[tuple[InputsFile, np.ndarray]]:
        """Each block of ``parts`` with its scores, in the order of ``parts``.

        Blocks go to the actor with the fewest in flight, at most ``IN_FLIGHT`` per
        actor, so the blocks held at once do not grow with the file.

        Raises:
            InputError: an input does not fit the model (its line in ``path`` named).
        """
        todo = iter(parts)
        load = [0] * self.size
        window: deque[tuple[InputsFile, int, Any]] = deque()

        def send(part: InputsFile) -> None:
            i = min(range(self.size), key=load.__getitem__)
            load[i] += 1
            window.append((part, i, self.actors[i].score.remote(part, path)))

        for part in itertools.islice(todo, IN_FLIGHT * self.size):
            send(part)
        while window:
            part, i, ref = window.popleft()
            scores = get(self.ray, ref)
            load[i] -= 1
            following = next(todo, None)
            if following is not None:
                send(following)
            yield part, scores


def actor_options(ray: Any, actors: int | None, device: str) -> tuple[int, dict[str, float]]:
    """How many actors, and the resources each asks for: one CPU each, or a share of one
    when there are more actors than CPUs; one GPU each with a CUDA device (a share when
    there are more actors than GPUs).

    Raises:
        InputError: ``actors`` is below 1, or a CUDA device is asked for on a cluster
            without GPUs.
    """
    if actors is not None and actors < 1:
        raise InputError(f"actors {actors}: give at least 1 scoring actor.")
    total = ray.cluster_resources()
    cpus = float(total.get("CPU", 1.0)) or 1.0
    if torch.device(device).type == "cuda":
        gpus = float(total.get("GPU", 0.0))
        if gpus < 1:
            raise InputError(f"device {device}: the Ray cluster has no GPU; use device cpu.")
        n = actors or int(gpus)
        return n, {"num_gpus": min(1.0, gpus / n), "num_cpus": min(1.0, cpus / n)}
    n = actors or max(1, int(cpus))
    return n, {"num_cpus": min(1.0, cpus / n)}


def ray_chunk(n: int, actors: int) -> int:
    """The default block size: about four blocks per actor, at most ``MAX_CHUNK``."""
    return max(1, min(MAX_CHUNK, math.ceil(n / (4 * actors))))


@contextmanager
def scoring_actors(
    ray: Any, loader: Callable[[], Any], actors: int, options: dict[str, float]
) -> Iterator[ActorPool]:
    """``actors`` actors, each loading the detector once with ``loader``, ready to score;
    killed when the block ends.

    Raises:
        CausalMADError: an actor could not load the detector (the error it raised).
    """
    ref = ray.put(loader)
    pool = [ray.remote(Scorer).options(**options).remote(ref) for _ in range(actors)]
    try:
        get(ray, [a.ready.remote() for a in pool])
        yield ActorPool(ray, pool)
    finally:
        for actor in pool:
            ray.kill(actor)


def score_with_ray(
    detector_dir: str | Path,
    inputs: str | Path | Any,
    *,
    model: ModelSpec = None,
    hypothesis: HypothesisSpec = None,
    actors: int | None = None,
    address: str | None = None,
    chunk: int | None = None,
    device: str = "cpu",
    trust_modified: bool = False,
) -> np.ndarray:
    """Score an inputs file or a Ray Dataset with a saved detector, on a Ray cluster.

    Each of ``actors`` Ray actors loads the detector folder once; inputs go to them in
    blocks; the scores come back in input order, bitwise identical to
    ``load_detector(detector_dir, model, hypothesis).score(inputs)`` in one process.

    Args:
        detector_dir: a folder written by ``Detector.save`` or ``causalmad fit``.
        inputs: an inputs file (``.jsonl``, ``.npy`` or ``.pt``, as ``causalmad score``
            reads them; every input is checked before Ray starts), or a
            ``ray.data.Dataset`` with a column ``input`` (one input per row) or a single
            column of any name.
        model: the model the folder was fitted on, a function of no arguments returning
            it (called on each actor), or ``None`` when the folder records a registered
            task (``causalmad fit --task``).
        hypothesis: its hypothesis, or a function returning it; ``None`` takes the task's.
        actors: the number of actors (default: one per CPU of the cluster; one per GPU
            with a CUDA ``device``).
        address: the Ray cluster to use when this process is not attached to one already
            (``None``: a local instance, started if none runs).
        chunk: inputs per block (default: about four blocks per actor, at most 4,096).
        device: where each actor runs the model (``"cuda"``: one GPU per actor).
        trust_modified: load a folder whose files do not match its checksums (warns).

    Returns:
        the scores, shape ``(n,)``, in input order (higher = more anomalous).

    Raises:
        MissingExtraError: Ray is not installed.
        InputError: a bad input (named by its line, before any actor starts), a bad
            ``actors`` or ``chunk``, or no Ray cluster at ``address``.
        PersistenceError: the folder is damaged or does not fit the model or hypothesis.

    Example:
        >>> scores = score_with_ray("det/", "batch.jsonl", actors=4)  # doctest: +SKIP
    """
    if chunk is not None and chunk < 1:
        raise InputError(f"chunk {chunk}: give the number of inputs per block, at least 1.")
    folder = str(detector_dir)
    config = read_config(folder, trust_modified)  # a bad folder fails before Ray starts
    if model is None:
        folder_task(recorded_source(config, folder), folder)
    loader = FolderLoader(folder, model, hypothesis, trust_modified, device)
    if isinstance(inputs, (str, Path)):
        shape, dtype = config["input_shape"], config["input_dtype"]
        n = count_inputs(inputs, shape, dtype)  # every input checked before Ray starts
        with ray_session(address, "score_with_ray") as ray:
            n_actors, options = actor_options(ray, actors, device)
            block = chunk or ray_chunk(n, n_actors)
            with scoring_actors(ray, loader, n_actors, options) as pool:
                parts = iter_inputs(inputs, shape, dtype, block)
                scores = [s for _, s in pool.score_parts(parts, str(inputs))]
        return np.concatenate(scores) if scores else np.zeros(0)
    with ray_session(address, "score_with_ray") as ray:
        return _score_dataset(ray, inputs, loader, actors, chunk, device)


def _score_dataset(
    ray: Any, dataset: Any, loader: FolderLoader, actors: int | None, chunk: int | None, device: str
) -> np.ndarray:
    """Scores of a Ray Dataset's rows, in order, through ``Dataset.map_batches``."""
    if not isinstance(dataset, ray.data.Dataset):
        raise InputError(
            f"inputs: expected an inputs file path or a ray.data.Dataset, got {type(dataset).__name__}."
        )
    names = list(dataset.schema().names)
    if "input" not in names:
        if len(names) != 1:
            raise InputError(
                f"the Dataset has columns {names}; name the inputs column 'input' (or give one column)."
            )
        dataset = dataset.rename_columns({names[0]: "input"})
    n_actors, options = actor_options(ray, actors, device)
    context = ray.data.DataContext.get_current()
    before = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # scores in the Dataset's row order
    try:
        scored = dataset.select_columns(["input"]).map_batches(
            Scorer,
            fn_constructor_args=(loader,),
            batch_size=chunk or MAX_CHUNK,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=n_actors),
            **options,
        )
        batches = [b["score"] for b in scored.iter_batches(batch_size=None, batch_format="numpy")]
    except ray.exceptions.RayError as exc:
        cause = unwrap(ray, exc)
        if cause is exc:
            raise
        raise cause from None
    finally:
        context.execution_options.preserve_order = before
    return np.concatenate(batches) if batches else np.zeros(0)
