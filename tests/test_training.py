"""Task models are trained to a specification (tasks/_training.py train_to_spec): the
schedule alone when it meets the criteria, further rounds when it does not, a clear error
naming the criterion when the budget runs out, and the record cached with the model."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

import causalmad as cm
from causalmad_tasks import _cache
from causalmad_tasks._training import EXTRA_ROUNDS, ROUND_FRACTION, Criterion, adamw, train_to_spec

X = torch.randn(256, 4, generator=torch.Generator().manual_seed(0))
Y = (X[:, 0] + X[:, 1] > 0).long()


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 2)
    opt = adamw(model.parameters(), 0.05, fused=False)
    g = torch.Generator().manual_seed(seed)

    def step() -> None:
        idx = torch.randint(0, len(X), (32,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(X[idx]), Y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()

    return model, opt, step


def _accuracy(model) -> dict[str, float]:
    return {"accuracy": float((model(X).argmax(-1) == Y).float().mean())}


def test_a_model_that_meets_its_criteria_is_the_one_the_schedule_alone_trains():
    model, opt, step = _setup()
    trained, _, record = train_to_spec(
        "toy", model, opt, step, 40, 0.05, [Criterion("accuracy", 0.5, "right")], lambda: _accuracy(model)
    )
    plain, opt2, step2 = _setup()
    sched = torch.optim.lr_scheduler.OneCycleLR(opt2, max_lr=0.05, total_steps=40, pct_start=0.1)
    for _ in range(40):
        step2()
        sched.step()
    assert record["extra_rounds"] == 0 and record["steps"] == 40
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), plain.state_dict().values()))
    assert record["criteria"]["accuracy"]["floor"] == 0.5 and record["criteria"]["accuracy"]["value"] >= 0.5


def test_training_goes_on_until_the_criteria_hold_and_records_each_round():
    model, opt, step = _setup()
    calls = []

    def measure() -> dict[str, float]:  # met at the third check
        calls.append(1)
        return {"accuracy": 0.2 * len(calls) + 0.3}

    _, _, record = train_to_spec(
        "toy", model, opt, step, 40, 0.05, [Criterion("accuracy", 0.85, "right")], measure
    )
    assert record["extra_rounds"] == 2 and record["steps"] == 40 + 2 * max(20, round(ROUND_FRACTION * 40))
    assert [r["accuracy"] for r in record["history"]] == pytest.approx([0.5, 0.7, 0.9])


@dataclass(frozen=True)
class _Cfg:
    steps: int = 20


def test_an_unmet_specification_stops_task_construction_with_the_criterion_named_and_caches_nothing(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("CAUSALMAD_CACHE", str(tmp_path))

    def train():
        model, opt, step = _setup()
        return train_to_spec(
            "toy",
            model,
            opt,
            step,
            20,
            0.05,
            [Criterion("accuracy", 1.01, "every row right")],
            lambda: _accuracy(model),
        )

    with pytest.raises(cm.TaskError, match=r"'toy'.*accuracy = .* < 1.01 \(every row right\)") as err:
        _cache.load_or_train("toy", 1, _Cfg(), 0, lambda: torch.nn.Linear(4, 2), train)
    assert f"{EXTRA_ROUNDS} further rounds" in str(err.value)
    assert not list(tmp_path.rglob("*.safetensors"))


def _train_toy():
    """The toy task trained to a spec it meets (accuracy 0.5)."""
    model, opt, step = _setup()
    return train_to_spec(
        "toy", model, opt, step, 20, 0.05, [Criterion("accuracy", 0.5, "right")], lambda: _accuracy(model)
    )


def test_the_cached_model_records_its_criteria_and_where_it_was_trained(tmp_path, monkeypatch):
    monkeypatch.setenv("CAUSALMAD_CACHE", str(tmp_path))

    first, info, cached = _cache.load_or_train("toy", 1, _Cfg(), 0, lambda: torch.nn.Linear(4, 2), _train_toy)
    again, info2, cached2 = _cache.load_or_train(
        "toy", 1, _Cfg(), 0, lambda: torch.nn.Linear(4, 2), _train_toy
    )
    assert (cached, cached2) == (False, True) and torch.equal(first.weight, again.weight)
    assert info2["spec"] == info["spec"] and info2["spec"]["criteria"]["accuracy"]["value"] >= 0.5
    assert {"cpu", "threads", "torch", "transformers", "transformer-lens"} <= set(info2["trained_on"])
    meta = json.loads(next(tmp_path.rglob("*.json")).read_text())
    assert meta["spec"] == info["spec"]


def test_a_model_cached_under_another_version_of_a_named_library_is_trained_again(tmp_path, monkeypatch):
    monkeypatch.setenv("CAUSALMAD_CACHE", str(tmp_path))

    def load():
        return _cache.load_or_train(
            "toy", 1, _Cfg(), 0, lambda: torch.nn.Linear(4, 2), _train_toy, libraries=("transformers",)
        )

    assert load()[2] is False and load()[2] is True
    meta_path = next(tmp_path.rglob("*.json"))
    meta = json.loads(meta_path.read_text())
    meta["trained_on"]["transformers"] += ".9"  # a patch release: still the same layout
    meta_path.write_text(json.dumps(meta))
    assert load()[2] is True
    meta["trained_on"]["transformers"] = "0.1.0"  # another minor version: trained again
    meta_path.write_text(json.dumps(meta))
    assert load()[2] is False
    assert json.loads(meta_path.read_text())["trained_on"]["transformers"] != "0.1.0"
