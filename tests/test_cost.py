"""The cost estimate (``causalmad.cost``) and ``--budget`` on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PlantedSum, planted_data, sum_hypothesis

import causalmad as cm
import causalmad.detectors.scrubbing as scrubbing_module
from causalmad import input_cut
from causalmad.cli import main
from causalmad.cost import REDUCIBLE, Budget, FitCost, parse_budget

CONFTEST = Path(__file__).with_name("conftest.py")
MODEL = ["--model", f"{CONFTEST}:PlantedSum", "--hypothesis", f"{CONFTEST}:sum_hypothesis"]


def detector(**params) -> cm.ScrubbingDetector:
    return cm.ScrubbingDetector(PlantedSum(), hypothesis=sum_hypothesis(), random_state=0, **params)


@pytest.fixture(scope="module")
def trusted() -> torch.Tensor:
    return planted_data(300, 0, 0, 0.05)


@pytest.mark.parametrize(
    ("text", "budget"),
    [
        ("600s", Budget(seconds=600)),
        ("10min", Budget(seconds=600)),
        ("1.5h", Budget(seconds=5400)),
        ("2e6rows", Budget(rows=2e6)),
        ("5000 rows", Budget(rows=5000)),
    ],
)
def test_a_budget_is_seconds_or_rows_with_its_unit(text, budget):
    assert parse_budget(text) == budget


@pytest.mark.parametrize(
    "text",
    ["600", "0s", "-5s", "10 minutes", "rows", "1e6 bytes", "1e400s", "1e400rows", "0.5rows", "2.5rows"],
)
def test_a_budget_without_a_known_unit_is_one_clear_error(text):
    with pytest.raises(cm.InputError, match="600s, 10min, 1.5h or 2e6rows"):
        parse_budget(text)


def test_the_estimate_counts_the_rows_the_fit_and_scoring_run(trusted, monkeypatch):
    """Scrubbed rows (inputs x explanations x resamples, and each call's clean pass) as
    the engine is asked for them, and the input cut's hybrids, counted during a real fit
    and scoring; the estimate bounds them and is exact for a fitted detector's scoring."""
    counted = {"scrubbed": 0, "forward": 0}
    scrub_many, forward = scrubbing_module.scrub_many, input_cut._forward

    def count_scrub(adapter, explanations, inputs, *args, **kwargs):
        counted["scrubbed"] += len(inputs) * (len(explanations) * args[4] + 1)
        return scrub_many(adapter, explanations, inputs, *args, **kwargs)

    def count_forward(adapter, rows, *args):
        counted["forward"] += len(rows)
        return forward(adapter, rows, *args)

    monkeypatch.setattr(scrubbing_module, "scrub_many", count_scrub)
    monkeypatch.setattr(input_cut, "_forward", count_forward)
    det = detector(resamples=2, input_cut_budget=4, n_pairs=64)
    planned = cm.estimate_fit_cost(det, trusted)
    stages = {s.name: s for s in planned.stages}
    assert set(stages) == {"alignment", "validation", "input cut", "threshold"}
    assert planned.rows == sum(s.rows for s in planned.stages) and planned.seconds > 0
    assert counted == {"scrubbed": 0, "forward": 0}  # the timing pass calls the engine directly
    det.fit(trusted)
    fit_rows = counted["scrubbed"] + counted["forward"]
    # alignment's interchanges do not go through scrub_many: the other stages bound what ran
    assert fit_rows <= planned.rows - stages["alignment"].rows
    untrusted = torch.cat([planted_data(10, 0, 3, 0.05), planted_data(10, 1, 4, 0.05)])
    counted.update(scrubbed=0, forward=0)
    scoring = cm.estimate_score_cost(det, untrusted[:8], n=len(untrusted))
    counted.update(scrubbed=0, forward=0)
    det.score(untrusted)
    assert counted["scrubbed"] + counted["forward"] <= scoring.rows
    assert scoring.rows == len(untrusted) * (scoring.rows // len(untrusted))
    assert counted["scrubbed"] == scoring.rows - len(untrusted) * _cut_rows(det)
    assert json.loads(json.dumps(scoring.to_dict()))["stages"][0]["name"] == "scoring"


def _cut_rows(det: cm.ScrubbingDetector) -> int:
    dirs = det.input_cut_["directions"]
    return det.resamples * dirs.count("base") + det.dual_resamples * dirs.count("dual") + ("base" in dirs)


def test_estimating_changes_neither_the_detector_nor_its_scores(trusted):
    untrusted = planted_data(20, 1, 4, 0.05)
    plain = detector(resamples=2, input_cut_budget=4).fit(trusted).score(untrusted)
    det = detector(resamples=2, input_cut_budget=4)
    before = det.get_params()
    FitCost(det, trusted).estimate(resamples=1)
    assert det.get_params() == before
    np.testing.assert_array_equal(det.fit(trusted).score(untrusted), plain)


def test_a_budget_only_reduces_and_never_below_the_floors(trusted):
    det = detector(resamples=3)
    cost = FitCost(det, trusted)
    full = cost.estimate()
    changed, est, fits = cost.within(Budget(rows=full.rows))
    assert changed == {} and fits and est.rows == full.rows
    changed, est, fits = cost.within(Budget(rows=full.rows // 2))
    assert fits and est.rows <= full.rows // 2 and changed
    assert all(v < getattr(det, k) for k, v in changed.items())
    # counterfactual_resamples goes first: the largest share of the rows
    assert "counterfactual_resamples" in changed
    changed, est, fits = cost.within(Budget(rows=1))
    floors = dict(REDUCIBLE)
    assert not fits and all(v == floors[k] for k, v in changed.items())
    assert est.params == {k: min(getattr(det, k), floors[k]) for k in floors}
    assert det.resamples == 3  # the detector itself is left as it was


def test_the_fewest_trusted_inputs_a_fit_takes_are_enough_to_estimate():
    est = cm.estimate_fit_cost(detector(resamples=2), planted_data(40, 0, 0, 0.05))
    assert est.rows > 0 and 0 < est.seconds < float("inf")


def test_an_estimate_for_an_unknown_parameter_is_refused(trusted):
    with pytest.raises(cm.InputError, match="tolerance"):
        FitCost(detector(), trusted).estimate(tolerance=1.0)


@pytest.fixture(scope="module")
def files(tmp_path_factory, trusted):
    root = tmp_path_factory.mktemp("cost")
    for name, rows in (
        ("trusted.jsonl", trusted),
        ("untrusted.jsonl", torch.cat([planted_data(20, 0, 3, 0.05), planted_data(20, 1, 4, 0.05)])),
    ):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows.tolist()))
    return root


def test_fit_prints_the_estimate_and_fits_a_budget(files, capsys):
    root = files
    fit = ["fit", *MODEL, "--trusted", str(root / "trusted.jsonl")]
    assert main([*fit, "--out", str(root / "full"), "--param", "input_cut_budget=4"]) == 0
    err = capsys.readouterr().err
    assert err.count("estimate: ") == 1 and "forward rows (alignment" in err
    config = json.loads((root / "full" / "config.json").read_text())
    rows = config["extra"]["estimate"]["rows"]
    assert main([*fit, "--out", str(root / "small"), "--budget", f"{rows // 3}rows"]) == 0
    err = capsys.readouterr().err
    assert f"budget {rows // 3:,} rows: reduced counterfactual_resamples 32 -> " in err
    params = json.loads((root / "small" / "config.json").read_text())["params"]
    assert params["counterfactual_resamples"] < 32
    # even the floors do not fit: a warning, and the fit goes on at them
    assert main([*fit, "--out", str(root / "least"), "--budget", "1rows", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning: --budget 1 rows: even at the least" in err
    assert "budget 1 rows: reduced " in err  # what was reduced is said even with --quiet
    params = json.loads((root / "least" / "config.json").read_text())["params"]
    assert {k: params[k] for k, _ in REDUCIBLE} == dict(REDUCIBLE)


def test_bad_budgets_are_refused_before_any_work(files, capsys):
    root = files
    fit = ["fit", *MODEL, "--trusted", str(root / "trusted.jsonl"), "--out", str(root / "never")]
    assert main([*fit, "--budget", "ten minutes"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("causalmad: error: --budget 'ten minutes'") and err.count("\n") == 1
    # a negative budget given apart from its option reaches the same check (argparse alone
    # would take "-5s" for an option)
    assert main([*fit, "--budget", "-5s"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("causalmad: error: --budget '-5s'") and err.count("\n") == 1
    assert main([*fit, "--budget", "60s", "--detector", "mahalanobis"]) == 2
    assert "a 'mahalanobis' detector has none" in capsys.readouterr().err
    # a bad argument is refused in one line before the estimate's timing pass runs it
    for param, message in (("resamples=0", "must be >= 1"), ('resamples="4"', "whole number")):
        assert main([*fit, "--param", param]) == 2
        err = capsys.readouterr().err
        assert message in err and "internal error" not in err, err
    assert not (root / "never").exists()


def test_score_prints_the_estimate_and_refuses_a_run_over_budget(files, capsys):
    root = files
    assert main(["fit", *MODEL, "--trusted", str(root / "trusted.jsonl"), "--out", str(root / "d")]) == 0
    capsys.readouterr()
    score = ["score", str(root / "d"), str(root / "untrusted.jsonl"), *MODEL]
    out = root / "scores.jsonl"
    assert main([*score, "--out", str(out), "--budget", "1rows"]) == 2
    err = capsys.readouterr().err
    assert "estimate: " in err and "--budget 1 rows: scoring 40 inputs is estimated at" in err
    assert not out.exists()
    assert main([*score, "--out", str(out), "--budget", "1e12rows", "--quiet"]) == 0
    assert len(out.read_text().splitlines()) == 40
    assert main([*score, "--out", str(out), "--budget", "2 days"]) == 2
    assert "--budget '2 days'" in capsys.readouterr().err
    fit = ["fit", *MODEL[:2], "--trusted", str(root / "trusted.jsonl"), "--detector", "mahalanobis"]
    assert main([*fit, "--out", str(root / "m"), "--quiet"]) == 0
    assert main(["score", str(root / "m"), str(root / "untrusted.jsonl"), *MODEL[:2], "--budget", "60s"]) == 2
    assert "holds a 'mahalanobis' detector: drop --budget" in capsys.readouterr().err


def test_a_resumed_run_is_charged_only_for_the_inputs_it_has_left(files, monkeypatch, capsys):
    root = files
    assert main(["fit", *MODEL, "--trusted", str(root / "trusted.jsonl"), "--out", str(root / "r")]) == 0
    score = ["score", str(root / "r"), str(root / "untrusted.jsonl"), *MODEL, "--chunk", "16"]
    out = root / "resumed.jsonl"
    original = cm.ScrubbingDetector.score
    calls: list[int] = []

    def interrupted(self, x):  # Ctrl-C during the second chunk
        if len(calls) == 1:
            raise KeyboardInterrupt
        calls.append(len(x))
        return original(self, x)

    monkeypatch.setattr(cm.ScrubbingDetector, "score", interrupted)
    assert main([*score, "--out", str(out), "--quiet"]) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert main([*score, "--out", str(out), "--resume", "--budget", "1rows"]) == 2
    err = capsys.readouterr().err
    assert "--budget 1 rows: scoring 24 inputs is estimated at" in err, err
    assert main([*score, "--out", str(out), "--resume", "--budget", "1e12rows", "--quiet"]) == 0
    assert len(out.read_text().splitlines()) == 40
