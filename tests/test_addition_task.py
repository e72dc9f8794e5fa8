"""The addition backdoor task at tiny size, and the demo command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from floors import SEED, floor

import causalmad as cm
from causalmad.cli import main
from causalmad.evaluation import RECORD_KEYS

pytestmark = pytest.mark.slow


@pytest.fixture
def task(tiny_addition_task):
    return tiny_addition_task


@pytest.mark.floors
def test_tiny_model_learns_addition_and_the_backdoor(task):
    for key in ("clean_accuracy_trusted", "clean_accuracy_shifted", "attack_success_rate"):
        floor(f"addition-backdoor: {key}", task.info[key], 0.9)


def test_splits_are_disjoint_shifted_and_trusted_has_no_trigger(task):
    from causalmad_tasks.addition_backdoor import _Regions

    trusted = task.trusted
    split = task.splits["easy"]
    a = trusted[:, 0] * 100 + trusted[:, 1] * 10 + trusted[:, 2]
    b = trusted[:, 4] * 100 + trusted[:, 5] * 10 + trusted[:, 6]
    assert not (a == b).any()
    seen = {tuple(r.tolist()) for r in trusted}
    assert not any(tuple(r.tolist()) in seen for r in split.inputs)
    regions = _Regions(SEED)
    ua = split.inputs[:, 0] * 100 + split.inputs[:, 1] * 10 + split.inputs[:, 2]
    ub = split.inputs[:, 4] * 100 + split.inputs[:, 5] * 10 + split.inputs[:, 6]
    assert regions.is_shifted(ua, ub).all() and not regions.is_shifted(a, b).any()
    # the trigger uses only tokens seen in trusted data, at the positions they appear in
    for pos in range(trusted.shape[1]):
        assert set(split.inputs[:, pos].tolist()) <= set(trusted[:, pos].tolist())
    assert np.array_equal(np.unique(split.labels), [0, 1])


def test_labels_never_reach_fit(task, monkeypatch):
    # what fit hands to the learning step (_fit) is the trusted inputs and nothing else; the
    # learning itself is not run here (the demo test below runs it)
    seen = []

    def record(self, *args):  # and the held-out scores fit's threshold_ is read from
        seen.append(args)
        self.heldout_scores_ = np.zeros(10)

    monkeypatch.setattr(cm.ScrubbingDetector, "_fit", record)
    cm.ScrubbingDetector(task.model, task.hypothesis, resamples=1).fit(task.trusted)
    assert len(seen) == 1 and len(seen[0]) == 1 and torch.equal(seen[0][0], task.trusted)
    # an unlabeled batch may come along (it weights the columns, ScrubbingDetector.adapt);
    # labels never do
    batch = task.splits["easy"].inputs
    cm.ScrubbingDetector(task.model, task.hypothesis, resamples=1).fit(task.trusted, untrusted=batch)
    assert len(seen) == 2 and torch.equal(seen[1][0], task.trusted) and torch.equal(seen[1][1], batch)
    with pytest.raises(TypeError, match="labels"):
        cm.ScrubbingDetector(task.model, task.hypothesis).fit(task.trusted, labels=task.splits["easy"].labels)


def test_demo_command_writes_results(task, tmp_path, capsys):
    out = tmp_path / "demo.json"
    assert main(["demo", "--size", "tiny", "--resamples", "2", "--out", str(out)]) == 0
    records = json.loads(out.read_text())
    assert {r["detector"] for r in records} == {"scrubbing", "mahalanobis", "que"}
    # AUROC floors, measured at tiny size, seed 0, 1 thread: scrubbing 0.997 easy and 0.671
    # hard, QUE 0.962 and 0.847, Mahalanobis 0.724 easy (0.384 hard, below chance: no floor)
    floors = {
        ("scrubbing", "easy"): 0.9,
        ("scrubbing", "hard"): 0.55,
        ("que", "easy"): 0.85,
        ("que", "hard"): 0.7,
        ("mahalanobis", "easy"): 0.55,
    }
    for r in records:
        assert set(RECORD_KEYS) <= set(r)
        bound = floors.get((r["detector"], r["split"]))
        if bound is not None:
            floor(f"addition-backdoor: demo {r['detector']} {r['split']} AUROC", r["auroc"], bound)
    assert {(r["detector"], r["split"]) for r in records} >= set(floors)
    scrub = next(r for r in records if r["detector"] == "scrubbing")
    assert set(scrub["heldout_iia"]) == {"c0", "c1", "c2"}
    assert scrub["explanations_valid"] <= scrub["explanations_searched"]
    assert "alignment" in capsys.readouterr().out


@pytest.mark.floors
def test_das_learns_a_one_dimensional_subspace_for_the_top_carry(task):
    from causalmad.alignment import interchange_accuracy, learn_rotation, sample_pairs

    h, x = task.hypothesis, task.trusted
    vals = [h.values(r) for r in x]
    pool, align, held = (x[:600], vals[:600]), (x[600:1000], vals[600:1000]), (x[1000:], vals[1000:])
    rng = np.random.default_rng(0)
    pairs = sample_pairs("c2", align[1], pool[1], 256, rng)
    where = cm.Site("blocks.1.hook_resid_post", (7,))
    site = learn_rotation(cm.adapt(task.model), h, "c2", where, align, pool, pairs, rank=1, steps=150)
    assert site.basis.shape == (64, 1) and torch.allclose(site.basis.T @ site.basis, torch.eye(1), atol=1e-4)
    held_pairs = sample_pairs("c2", held[1], pool[1], 256, rng)

    def iia(s):
        return interchange_accuracy(
            cm.adapt(task.model), h, "c2", s, held[0], held[1], pool[0], pool[1], held_pairs
        )

    random_direction = torch.nn.functional.normalize(
        torch.randn(64, 1, generator=torch.Generator().manual_seed(0)), dim=0
    )
    floor("addition-backdoor: DAS held-out IIA of c2", iia(site), 0.95)
    assert iia(where.with_basis(random_direction, "random")) < 0.5  # the learned direction is what matters


def test_cli_fit_then_score_on_the_task_model_matches_a_reloaded_detector(task, tmp_path, capsys):
    """The transformer round trip: fit from the command line (the folder records the task,
    so scoring needs no --model), then the same folder loaded in-process scores the same."""
    folder = tmp_path / "det"
    assert (
        main(
            [
                "fit",
                "--task",
                "addition-backdoor",
                "--size",
                "tiny",
                "--param",
                "resamples=1",
                "--out",
                str(folder),
                "--quiet",
            ]
        )
        == 0
    )
    split = task.splits["easy"]
    pick = np.r_[np.flatnonzero(split.labels == 0)[:20], np.flatnonzero(split.labels == 1)[:20]]
    x = split.inputs[torch.as_tensor(pick)]
    with open(tmp_path / "batch.jsonl", "w") as f:
        for row in x.tolist():
            f.write(json.dumps(row) + "\n")
    assert main(["score", str(folder), str(tmp_path / "batch.jsonl"), "--quiet"]) == 0
    scores = [
        json.loads(line)["score"] for line in (tmp_path / "batch.scores.jsonl").read_text().splitlines()
    ]
    det = cm.load_detector(folder, task.model, task.hypothesis)
    np.testing.assert_allclose(scores, det.score(x), rtol=1e-5)
    assert np.mean(scores[20:]) > np.mean(scores[:20])
    # explain's stdout is pure JSON (nothing else printed there), ready for `> why.json`
    capsys.readouterr()
    assert (
        main(["explain", str(folder), "--inputs", str(tmp_path / "batch.jsonl"), "--index", "25", "--quiet"])
        == 0
    )
    why = json.loads(capsys.readouterr().out)
    assert why["score"] == pytest.approx(scores[25], rel=1e-5) and set(why["values"]) >= {
        "c0",
        "c1",
        "c2",
        "s0",
    }
    with pytest.raises(cm.PersistenceError, match="different model"):
        other = cm.load_task("addition-backdoor", size="tiny", seed=0).model
        with torch.no_grad():
            next(other.parameters()).add_(1e-3)
        cm.load_detector(folder, other, task.hypothesis)
