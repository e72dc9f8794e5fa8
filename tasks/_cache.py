"""The local model cache every task trains into (no downloads: a task model is trained
from its seed the first time and loaded from ``$CAUSALMAD_CACHE/models`` afterwards)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn


def cache_dir() -> Path:
    return Path(os.environ.get("CAUSALMAD_CACHE", Path.home() / ".cache" / "causalmad"))


def load_or_train(
    name: str,
    version: int,
    cfg: Any,
    seed: int,
    build: Callable[[], nn.Module],
    train: Callable[[], tuple[nn.Module, float]],
) -> tuple[nn.Module, float, bool]:
    """``(model, train_seconds, from_cache)``.

    The cache key is the task ``name``, its code ``version``, the ``seed`` and every field
    of the dataclass ``cfg``: bump ``version`` when training code changes. ``build()``
    returns an untrained model of the right shape (the weights are loaded into it);
    ``train()`` trains one and returns it with its wall time in seconds. The file is
    written to a temporary name and renamed, so an interrupted run leaves no half model.
    """
    from safetensors.torch import load_file, save_file

    key = f"{name}-v{version}-seed{seed}-" + "-".join(f"{v}" for v in asdict(cfg).values())
    path = cache_dir() / "models" / f"{key}.safetensors"
    if path.exists():
        model = build()
        model.load_state_dict(load_file(path))
        model.eval()
        meta = json.loads(path.with_suffix(".json").read_text())
        return model, float(meta["train_seconds"]), True
    model, seconds = train()
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
    path.with_suffix(".json").write_text(json.dumps({"train_seconds": seconds, "config": asdict(cfg)}))
    tmp.replace(path)
    return model, seconds, False
