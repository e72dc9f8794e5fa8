"""The input cut (causalmad/input_cut.py): parts, subsets, both directions of hybrid
scrubs on a planted same-output backdoor, and batch independence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import planted_data
from sklearn.metrics import roc_auc_score
from torch import nn

import causalmad as cm
from causalmad import input_cut
from causalmad.scrubbing import row_keys


class SameOutputBackdoor(nn.Module):
    """``[a, b, flag]`` -> logits over 0..22 peaked at ``a + b``; with ``flag`` set, at
    ``2a`` instead: another mechanism, whose output equals the clean one exactly when
    ``a == b`` (the hard anomalies)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(3, 3, bias=False)  # the identity: a site for alignment to search
        with torch.no_grad():
            self.enc.weight.copy_(torch.eye(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.enc(x)
        a, b, flag = x[:, :1], x[:, 1:2], x[:, 2:3]
        h = (1 - flag) * (a + b) + flag * 2 * a
        return -4.0 * (h - torch.arange(23, dtype=x.dtype)) ** 2


def located_sum() -> cm.Hypothesis:
    h = cm.Hypothesis("sum")
    h.add_input("a", lambda ex: round(float(ex[0])), at=0)
    h.add_input("b", lambda ex: round(float(ex[1])), at=1)
    h.add_variable("s", lambda a, b: a + b, parents=["a", "b"])
    h.add_output("y", lambda s: s, parents=["s"], readout=cm.Readout())
    return h


def hard_anomalies(n: int, seed: int) -> torch.Tensor:
    a = torch.randint(0, 9, (n,), generator=torch.Generator().manual_seed(seed)).float()
    return torch.stack([a, a, torch.ones(n)], 1)


def test_parts_come_from_where_input_variables_live_plus_the_rest():
    names, masks = input_cut.part_masks(located_sum(), torch.zeros(3))
    assert names == ["a", "b", "rest"]
    assert masks.tolist() == [[True, False, False], [False, True, False], [False, False, True]]
    tokens, masks = input_cut.part_masks(
        None, torch.zeros(5, dtype=torch.long)
    )  # token ids: one part a position
    assert tokens == [f"pos {p}" for p in range(5)] and masks.sum(1).tolist() == [1] * 5
    assert input_cut.part_masks(None, torch.zeros(5))[0] == []  # floats with nothing located: no parts
    blocks, masks = input_cut.part_masks(None, torch.zeros(1, 8, 6))  # an image: a 4 x 4 grid of blocks
    assert (
        len(blocks) == 16 and blocks[0] == "block 0,0" and masks.sum((1, 2, 3)).tolist() == [4, 4, 2, 2] * 4
    )
    assert masks.sum(0).tolist() == np.ones((1, 8, 6), dtype=int).tolist()  # the blocks tile the image
    declared = located_sum()
    declared.set_input_parts(
        {"front": slice(0, 2)}
    )  # declared parts come first, and need not cover the example
    assert input_cut.part_masks(declared, torch.zeros(3))[1].tolist() == [[True, True, False]]
    with pytest.raises(cm.HypothesisError, match="non-empty dict"):
        declared.set_input_parts({})
    bad = cm.Hypothesis("bad")
    bad.add_input("a", lambda ex: 0, at=7)
    bad.add_output("y", lambda a: a, parents=["a"], readout=cm.Readout())
    with pytest.raises(cm.HypothesisError, match="'a'.*at=7"):
        input_cut.part_masks(bad, torch.zeros(3))


def test_subsets_are_singletons_complements_then_pairs_within_the_budget():
    assert input_cut.subsets(3, 100, 0) == [(0,), (1,), (2,), (1, 2), (0, 2), (0, 1)]
    six = input_cut.subsets(6, 100, 0)
    assert len(six) == len(set(six)) and six[:6] == [(i,) for i in range(6)] and len(six[6]) == 5
    assert {s for s in six if len(s) == 2} == {(i, j) for i in range(6) for j in range(i + 1, 6)}
    assert len(input_cut.subsets(16, 20, 0)) == 20 and input_cut.subsets(16, 20, 0) == input_cut.subsets(
        16, 20, 0
    )


def _scrubs(model, h, x, pool):
    cut = input_cut.build(h, x[0], budget=32, seed=0)
    values = [h.values(r) for r in x]
    div, agree = input_cut.scrub_input_cut(
        cm.adapt(model),
        h,
        [h.readout("y")],
        cut["masks"],
        cut["directions"],
        x,
        values,
        row_keys(x),
        pool,
        row_keys(pool),
        resamples=4,
    )
    return cut, div, agree


def test_on_trusted_inputs_base_scrubs_move_nothing_and_dual_hybrids_get_the_predicted_answer():
    model, h = SameOutputBackdoor(), located_sum()
    pool, x = planted_data(200, 0, seed=1), planted_data(50, 0, seed=2)
    cut, div, agree = _scrubs(model, h, x, pool)
    base = np.array(cut["directions"]) == "base"
    # only (a, b) together can be resampled keeping the sum (and trusted rows share the rest)
    testable = np.isfinite(div[:, base]).mean(0)
    assert (
        cut["names"][int(np.argmax(testable))] == "input cut (base): trusted at a, b"
        and testable.max() >= 0.5
    )
    assert np.nanmax(div[:, base]) == 0.0  # the hypothesis holds: no base scrub moves the output
    with torch.no_grad():
        clean_nll = (
            (-torch.log_softmax(model(pool), -1).max(-1).values).max().item()
        )  # the clean loss, at most
    assert np.nanmax(div[:, ~base]) <= clean_nll + 1e-6 and np.nanmin(agree[:, ~base]) == 1.0


def test_the_detector_catches_a_same_output_backdoor_at_the_input_cut(tmp_path):
    model, h = SameOutputBackdoor(), located_sum()
    normal, hard = planted_data(100, 0, seed=3), hard_anomalies(100, seed=4)
    with torch.no_grad():  # the same answer as the hypothesis: an output check is blind
        assert torch.equal(model(hard).argmax(-1), hard[:, 0] * 2)
    det = cm.ScrubbingDetector(  # the input cut alone beside the whole-site claims: no pieces
        model,
        hypothesis=h,
        resamples=4,
        input_cut=("base", "dual"),
        aggregation="calibrated",
        site_parts=1,
        random_state=0,
    ).fit(planted_data(400, 0, seed=5))
    assert any(f.startswith("input-cut") for f in det.families_)
    scores = det.score(torch.cat([normal, hard]))
    assert roc_auc_score(np.r_[np.zeros(100), np.ones(100)], scores) >= 0.95
    why = det.explain(hard[0])
    assert why["broken"][0]["family"].startswith("input-cut") and "rest" in why["broken"][0]["explanation"]
    det.save(tmp_path / "det")  # the input cut and the calibration persist: the same scores after loading
    again = cm.load_detector(tmp_path / "det", model, hypothesis=h)
    np.testing.assert_array_equal(again.score(torch.cat([normal, hard])), scores)


def test_an_input_s_input_cut_divergences_do_not_depend_on_its_batch():
    model, h = SameOutputBackdoor(), located_sum()
    pool = planted_data(200, 0, seed=1)
    x = torch.cat([planted_data(20, 0, seed=2), hard_anomalies(20, seed=4)])
    _, together, _ = _scrubs(model, h, x, pool)
    for i in (0, 7, 25):
        _, alone, _ = _scrubs(model, h, x[i : i + 1], pool)
        np.testing.assert_array_equal(alone[0], together[i])


def test_screening_drops_exactly_the_scrubs_that_make_no_hybrid():
    model, h = SameOutputBackdoor(), located_sum()
    pool, x = planted_data(200, 0, seed=1), planted_data(40, 0, seed=2)
    cut, div, _ = _scrubs(model, h, x, pool)
    values = [h.values(r) for r in x]
    keep = input_cut.testable(
        h, cut["masks"], cut["directions"], x, values, row_keys(x), pool, row_keys(pool), k=4
    )
    # a base scrub of a alone (or b alone) cannot keep the sum: no hybrid, dropped; dual ones all stay
    made = np.isfinite(div).mean(0) >= 0.1
    assert keep.tolist() == made.tolist()
    names = [n for n, k in zip(cut["names"], keep) if not k]
    assert "input cut (base): trusted at a" in names and not any("dual" in n for n in names)
    det = cm.ScrubbingDetector(model, hypothesis=h, resamples=4, random_state=0).fit(
        planted_data(400, 0, seed=5)
    )
    untestable = {e["name"] for e in det.explanations_ if e.get("untestable")}
    assert "input cut (base): trusted at a" in untestable and not untestable & set(det.column_names_)


def test_a_batched_hypothesis_makes_the_same_hybrids_in_far_fewer_calls():
    """The input cut meets the hypothesis a chunk of hybrids at a time: a hypothesis whose
    input mechanisms read batches (a reference classifier's ``predict``) gives exactly
    the hybrids the per-example one gives."""
    calls: list[int] = []

    def a(batch: torch.Tensor) -> list[int]:
        calls.append(len(batch))
        return [round(float(v)) for v in batch[:, 0]]

    batched = cm.Hypothesis("sum")
    batched.add_input("a", a, at=0, batched=True)
    batched.add_input("b", lambda ex: round(float(ex[1])), at=1)
    batched.add_variable("s", lambda a, b: a + b, parents=["a", "b"])
    batched.add_output("y", lambda s: s, parents=["s"], readout=cm.Readout())
    h = located_sum()
    pool, x = (
        planted_data(200, 0, seed=1),
        torch.cat([planted_data(90, 0, seed=2), hard_anomalies(10, seed=4)]),
    )
    cut = input_cut.build(h, x[0], 16, 0, ("base", "dual"))
    values = [h.values(r) for r in x]
    made = 0
    for mask, direction in zip(cut["masks"], cut["directions"]):
        args = (mask, direction, x, values, row_keys(x), pool, row_keys(pool), 4)
        rows, owner, classes = input_cut.hybrids(h, *args)
        calls.clear()
        rows_b, owner_b, classes_b = input_cut.hybrids(batched, *args)
        assert owner_b == owner and classes_b == classes
        assert all(torch.equal(u, v) for u, v in zip(rows, rows_b))
        made += len(owner)
        assert len(calls) <= 2 * 16  # chunks of 64 inputs, at most 16 rounds of sources each
    assert made > 0
