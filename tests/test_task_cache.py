"""The task cache: a task's data (trusted inputs, splits, info) is built once and loaded
afterwards, identical, and built again when the code that builds it changes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import causalmad as cm
from causalmad_tasks import _cache


@dataclass(frozen=True)
class _Cfg:
    n: int = 6


def _builder(calls: list[int]):
    def build() -> cm.Task:
        calls.append(1)
        g = torch.Generator().manual_seed(len(calls))  # a rebuild would give other data
        x = torch.randint(0, 9, (6, 3), generator=g)
        splits = {
            "easy": cm.Split("easy", x[:4], np.array([0, 0, 1, 1])),
            "hard": cm.Split("hard", x[2:], [0, 1, 0, 1]),
        }
        return cm.Task(
            "toy",
            torch.nn.Identity(),
            x.float(),
            splits,
            None,
            info={"clean_accuracy": np.float32(0.75), "counts": {"a": 1}, "size": "tiny"},
            seed=3,
        )

    return build


def test_task_data_is_built_once_then_loaded_identically(tmp_path, monkeypatch):
    monkeypatch.setenv("CAUSALMAD_CACHE", str(tmp_path))
    calls: list[int] = []
    model = torch.nn.Linear(3, 2)
    first = _cache.load_or_build_task(
        "toy", 1, _Cfg(), 3, model, None, _builder(calls), model_from_cache=False
    )
    again = _cache.load_or_build_task(
        "toy", 1, _Cfg(), 3, model, None, _builder(calls), model_from_cache=True
    )
    assert len(calls) == 1 and again.model is model and again.name == "toy" and again.seed == 3
    assert torch.equal(again.trusted, first.trusted) and again.trusted.dtype == torch.float32
    for name, split in first.splits.items():
        assert torch.equal(again.splits[name].inputs, split.inputs)
        assert (
            np.array_equal(again.splits[name].labels, split.labels)
            and again.splits[name].labels.dtype == np.int64
        )
    assert first.info["model_from_cache"] is False and again.info["model_from_cache"] is True
    assert again.info["clean_accuracy"] == 0.75 and again.info["counts"] == {"a": 1}

    # another config or seed is another task; changed task, hypothesis or causalmad code builds again
    _cache.load_or_build_task("toy", 1, _Cfg(n=7), 3, model, None, _builder(calls))
    _cache.load_or_build_task("toy", 1, _Cfg(), 4, model, None, _builder(calls))
    assert len(calls) == 3
    monkeypatch.setattr(_cache, "_source_digest", lambda: "edited")
    rebuilt = _cache.load_or_build_task("toy", 1, _Cfg(), 3, model, None, _builder(calls))
    assert len(calls) == 4 and not torch.equal(rebuilt.trusted, first.trusted)
