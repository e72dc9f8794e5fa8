"""The local cache every task trains into (no downloads: a task model is trained from its
seed the first time and loaded from ``$CAUSALMAD_CACHE/models`` afterwards; the task's
data built with it, from ``$CAUSALMAD_CACHE/tasks``)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from causalmad.provenance import environment
from causalmad.task import Split, Task


def cache_dir() -> Path:
    return Path(os.environ.get("CAUSALMAD_CACHE", Path.home() / ".cache" / "causalmad"))


def model_key(name: str, version: int, cfg: Any, seed: int) -> str:
    """The cache file name (without suffix) of a task model."""
    return f"{name}-v{version}-seed{seed}-" + "-".join(f"{v}" for v in asdict(cfg).values())


def load_or_train(
    name: str,
    version: int,
    cfg: Any,
    seed: int,
    build: Callable[[], nn.Module],
    train: Callable[[], tuple[nn.Module, float, dict[str, Any]]],
    libraries: tuple[str, ...] = (),
) -> tuple[nn.Module, dict[str, Any], bool]:
    """``(model, training, from_cache)``.

    The cache key is the task ``name``, its code ``version``, the ``seed`` and every field
    of the dataclass ``cfg``: bump ``version`` when training code changes. ``build()``
    returns an untrained model of the right shape (the weights are loaded into it);
    ``train()`` trains one to its task's specification and returns it with its wall time
    in seconds and the specification's record (``causalmad_tasks._training.train_to_spec``).
    ``training`` is ``{"train_seconds", "spec", "trained_on", "environment"}``: the
    criteria the model met, the machine and package versions it was trained with, and
    those of this process ([`causalmad.environment`][causalmad.environment]); tasks put it in
    their ``info``. The file is written to a temporary name and renamed, so an
    interrupted run leaves no half model. A cached model saved without a specification's
    record (by an older version of this code) is trained again, and so is one trained
    under another major.minor version of any package named in ``libraries`` (a model
    built by ``transformers`` names, and computes, its weights as that version does).
    """
    from safetensors.torch import load_file

    path = cache_dir() / "models" / f"{model_key(name, version, cfg, seed)}.safetensors"
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if path.exists() and meta_path.exists() else {}
    if "spec" in meta and _same_versions(meta.get("trained_on", {}), environment(), libraries):
        model = build()
        model.load_state_dict(load_file(path))
        model.eval()
        cached = True
    else:
        model, seconds, spec = train()
        model.eval()
        meta = {
            "train_seconds": round(seconds, 1),
            "spec": spec,
            "trained_on": environment(),
            "config": asdict(cfg),
        }
        _save(path, model.state_dict(), meta)
        cached = False
    training = {k: meta[k] for k in ("train_seconds", "spec", "trained_on")}
    return model, {**training, "environment": environment()}, cached


def _same_versions(then: dict[str, Any], now: dict[str, Any], libraries: tuple[str, ...]) -> bool:
    """Whether each of ``libraries`` has the same major.minor version in both records."""

    def minor(version: Any) -> tuple[str, ...]:
        return tuple(str(version).split("+")[0].split(".")[:2])

    return all(minor(then.get(name)) == minor(now.get(name)) for name in libraries)


def _save(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """``tensors`` to ``path`` (safetensors) and ``meta`` beside it (JSON), the tensors
    written to a temporary name and renamed last, so an interrupted run leaves nothing
    that loads. Tensors are copied contiguous: safetensors refuses shared memory."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.clone(memory_format=torch.contiguous_format) for k, v in tensors.items()}, tmp)
    path.with_suffix(".json").write_text(json.dumps(meta, default=_plain))
    tmp.replace(path)


@functools.cache
def _source_digest() -> str:
    """A digest of every source file a task's data can depend on: the task modules, the
    hypotheses and causalmad itself (splits are matched with causalmad's detectors)."""
    import causalmad
    import causalmad_hypotheses

    h = hashlib.sha256()
    for package in (
        Path(__file__).parent,
        Path(causalmad_hypotheses.__file__).parent,
        Path(causalmad.__file__).parent,
    ):
        for f in sorted(package.rglob("*.py")):
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def load_or_build_task(
    name: str,
    version: int,
    cfg: Any,
    seed: int,
    model: nn.Module,
    hypothesis: Any,
    build: Callable[[], Task],
    **info: Any,
) -> Task:
    """The task built by ``build()`` for a model from ``load_or_train``, with its data
    (trusted inputs, splits, ``info``) cached beside the model: building splits runs the
    model over large pools (matching, PGD, accuracies), loading them takes milliseconds.

    The data's key is the model's plus a digest of the source of the task modules, the
    hypotheses and causalmad, so that any change to the code that builds the data builds
    it again, plus the model's training record (``info["train_seconds"]``, ``"spec"``,
    ``"trained_on"``), so that a model trained again gets its data built again. ``info``
    items (``model_from_cache``, say) are set on the task however it was obtained.
    """
    from safetensors.torch import load_file

    trained = json.dumps({k: info.get(k) for k in ("train_seconds", "spec", "trained_on")}, sort_keys=True)
    key = hashlib.sha256(
        f"{model_key(name, version, cfg, seed)}-{_source_digest()}-{trained}".encode()
    ).hexdigest()[:24]
    path = cache_dir() / "tasks" / f"{name}-seed{seed}-{key}.safetensors"
    if path.exists():
        tensors = load_file(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        splits = {
            s: Split(s, tensors[f"split.{s}.inputs"], tensors[f"split.{s}.labels"].numpy())
            for s in meta["splits"]
        }
        return Task(
            name=meta["name"],
            model=model,
            trusted=tensors["trusted"],
            splits=splits,
            hypothesis=hypothesis,
            info={**meta["info"], **info},
            seed=seed,
        )
    task = build()
    task.info.update(info)
    tensors = {
        "trusted": task.trusted,
        **{f"split.{s}.inputs": sp.inputs for s, sp in task.splits.items()},
        **{f"split.{s}.labels": torch.as_tensor(sp.labels) for s, sp in task.splits.items()},
    }
    _save(path, tensors, {"name": task.name, "splits": list(task.splits), "info": task.info})
    return task


def _plain(value: Any) -> Any:
    """JSON for the numpy and torch scalars a task's ``info`` may hold."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
