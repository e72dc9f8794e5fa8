"""The task interface: what a MAD task hands to detectors and benchmarks.

A task bundles a trained model, trusted inputs (assumed normal), untrusted test splits
with anomaly labels (used only for evaluation, never by ``fit``), and a reference
hypothesis. Task definitions live outside the library (``tasks/``) and are found through
the ``causalmad.tasks`` entry-point group, so that causalmad never imports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from causalmad.errors import PersistenceError, TaskError, close_matches
from causalmad.hypothesis import Hypothesis


@dataclass
class Split:
    """Untrusted test inputs with ground-truth anomaly labels (1 = anomalous).

    Args:
        name: the split's name (``"easy"``, ``"hard"``).
        inputs: ``[n, ...]`` inputs of the task's model.
        labels: ``[n]`` labels, 0 = normal and 1 = anomalous; stored as an int64 array.

    Raises:
        TaskError: if ``labels`` and ``inputs`` differ in length.

    Example:
        >>> split = Split("easy", torch.zeros(3, 4), [0, 1, 1])
        >>> split.n_normal, split.n_anomalous
        (1, 2)
    """

    name: str
    inputs: torch.Tensor
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.labels) != len(self.inputs):
            raise TaskError(f"Split {self.name!r}: {len(self.inputs)} inputs but {len(self.labels)} labels.")

    @property
    def n_normal(self) -> int:
        """How many inputs are labelled normal (0)."""
        return int((self.labels == 0).sum())

    @property
    def n_anomalous(self) -> int:
        """How many inputs are labelled anomalous (1)."""
        return int((self.labels == 1).sum())


@dataclass
class Task:
    """A model, trusted data, labelled untrusted splits and a reference hypothesis.

    Args:
        name: the task's registered name.
        model: the trained model (a TransformerLens bridge, a Hugging Face model or an
            ``nn.Module``; [`adapt`][causalmad.adapt] wraps it).
        trusted: ``[n, ...]`` inputs on which the model behaves normally, for ``fit``.
        splits: split name -> [`Split`][causalmad.Split] of labelled untrusted inputs (each
            registered task has ``"easy"`` and ``"hard"``), for evaluation only.
        hypothesis: the reference [`Hypothesis`][causalmad.Hypothesis] of what the
            model computes, or ``None`` if the task has none.
        info: task-specific records (how the model was trained and on what machine, the
            attack's success rate, ...).
        seed: the seed the task was built with.
    """

    name: str
    model: nn.Module
    trusted: torch.Tensor
    splits: dict[str, Split]
    hypothesis: Hypothesis | None
    info: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


def available_tasks() -> dict[str, Any]:
    """The registered tasks, from the ``causalmad.tasks`` entry-point group.

    Returns:
        Task name -> its ``importlib.metadata.EntryPoint`` (not loaded: ``.load()``
        imports the task's module and gives its factory, as [`load_task`][causalmad.load_task] does).

    Raises:
        TaskError: if two installed packages register a task of the same name.
    """
    found: dict[str, Any] = {}
    for ep in metadata.entry_points(group="causalmad.tasks"):
        if ep.name in found:
            raise TaskError(f"Two installed packages register a task named {ep.name!r}.")
        found[ep.name] = ep  # loaded lazily in load_task
    return found


def load_task(name: str, **kwargs: Any) -> Task:
    """Build a task by registered name.

    Args:
        name: a registered task's name (see [`available_tasks`][causalmad.available_tasks]), or
            ``"package.module:function"``: a task factory that is importable but not
            registered (one's own task under development, say).
        **kwargs: passed to the task's factory; the registered tasks take
            ``size="tiny"|"full"`` and ``seed=...``.

    Returns:
        What the factory returns: a [`Task`][causalmad.Task].

    Raises:
        TaskError: if ``name`` is not registered (close matches suggested), two installed
            packages register it, or a ``"module:function"`` factory cannot be imported.
    """
    if ":" in name:
        import importlib

        module, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise TaskError(f"Cannot load the task factory {name!r}: {exc}.") from exc
        return factory(**kwargs)
    tasks = available_tasks()
    if name not in tasks:
        raise TaskError(
            f"Unknown task {name!r}; known tasks: {sorted(tasks)} (or give a factory as 'module:function')."
            f"{close_matches(name, tasks)}"
        )
    factory = tasks[name].load()  # type: ignore[attr-defined]
    return factory(**kwargs)


def folder_task(source: dict[str, Any], folder: str | Path) -> tuple[str, str, int]:
    """``(name, size, seed)`` of the task a detector folder was fitted on.

    A folder is data, never code: its task must be a registered name (found through the
    ``causalmad.tasks`` entry points); a ``module:function`` there is refused.

    Args:
        source: the ``source`` record of the folder's ``config.json`` (its ``extra``).
        folder: the detector folder, named in errors.

    Returns:
        the task's registered name, its size (``"full"`` or ``"tiny"``) and its seed.

    Raises:
        PersistenceError: the task is not registered here, or its size or seed is malformed.
    """
    name, size, seed = source.get("task"), source.get("size"), source.get("seed")
    where = Path(folder) / "config.json"
    known = available_tasks()
    if not isinstance(name, str) or name not in known:
        raise PersistenceError(
            f"{where} names the task {name!r}, which is not a registered task here (known: "
            f"{sorted(known)}); causalmad runs no code named in a detector folder: pass the "
            "model with --model module:function (and --hypothesis) on the command line, or "
            "model= (and hypothesis=) in Python."
        )
    if size not in ("full", "tiny") or not isinstance(seed, int) or isinstance(seed, bool):
        raise PersistenceError(
            f"{where}: the task's size {size!r} and seed {seed!r} should be 'full' or 'tiny' "
            "and an integer; the folder is corrupted."
        )
    return name, size, seed
