"""The hypothesis graph: declaration, evaluation, counterfactuals, validation errors."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import causalmad as cm
from causalmad_hypotheses.addition import addition_hypothesis


def test_values_and_counterfactual_follow_the_graph():
    h = addition_hypothesis(3)
    ex = [9, 5, 8, 10, 0, 4, 7, 11, 11, 11, 11]  # 958 + 047 = 1005
    v = h.values(ex)
    assert (v["s3"], v["s2"], v["s1"], v["s0"]) == (1, 0, 0, 5)
    cf = h.counterfactual(v, {"c0": 0})
    assert cf["s1"] == 9 and cf["s0"] == 5 and cf["c0"] == 0


def test_a_variable_declared_after_an_evaluation_is_evaluated():
    """The evaluation plan is cached per graph shape; declaring more must renew it."""
    h = cm.Hypothesis("grow")
    h.add_input("x", lambda ex: ex[0])
    h.add_output("y", lambda x: x + 1, parents=["x"], readout=cm.Readout())
    assert h.values([2]) == {"x": 2, "y": 3}
    h.add_variable("z", lambda x: 2 * x, parents=["x"])
    h.add_output("w", lambda x, z: x + z, parents=["x", "z"], readout=cm.Readout())
    assert h.values([2]) == {"x": 2, "y": 3, "z": 4, "w": 6}
    assert h.counterfactual(h.values([2]), {"z": 0})["w"] == 2


@given(st.lists(st.integers(0, 9), min_size=6, max_size=6))
def test_counterfactual_without_intervention_is_identity(d):
    h = addition_hypothesis(3)
    ex = d[:3] + [10] + d[3:] + [11] * 4
    v = h.values(ex)
    assert h.counterfactual(v, {}) == v
    a, b = int("".join(map(str, d[:3]))), int("".join(map(str, d[3:])))
    assert v["s3"] * 1000 + v["s2"] * 100 + v["s1"] * 10 + v["s0"] == a + b


def test_cyclic_graph_is_rejected():
    g = nx.DiGraph()
    g.add_node("x", kind="input", mechanism=lambda ex: ex)
    g.add_node("p", kind="inner", mechanism=lambda x, q: x)
    g.add_node("q", kind="inner", mechanism=lambda p: p)
    g.add_edges_from([("x", "p"), ("p", "q"), ("q", "p")])
    with pytest.raises(cm.HypothesisError, match="cycle"):
        cm.Hypothesis.from_graph(g)


def test_unknown_parent_suggests_close_name():
    h = cm.Hypothesis()
    h.add_input("digit0", lambda ex: ex[0])
    with pytest.raises(cm.HypothesisError, match="unknown parent 'digt0'.*'digit0'"):
        h.add_variable("c", lambda d: d, parents=["digt0"])


def test_mechanism_arity_must_match_parents():
    h = cm.Hypothesis()
    h.add_input("a", lambda ex: ex[0])
    h.add_input("b", lambda ex: ex[1])
    with pytest.raises(cm.HypothesisError, match="exactly 2 positional"):
        h.add_variable("s", lambda a: a, parents=["a", "b"])
    with pytest.raises(cm.HypothesisError, match="one example"):
        h.add_input("c", lambda: 0)


def test_unhashable_values_and_missing_output_are_reported():
    h = cm.Hypothesis()
    h.add_input("a", lambda ex: [ex[0]])
    with pytest.raises(cm.HypothesisError, match="unhashable"):
        h.values([1])
    with pytest.raises(cm.HypothesisError, match="no output variable"):
        h.validate()


def test_hypothesis_errors_are_value_errors():
    assert issubclass(cm.HypothesisError, ValueError)
    assert issubclass(cm.HypothesisError, cm.CausalMADError)


def test_readout_position_of_any_integer_type_is_stored_as_an_int():
    r = cm.Readout(position=np.int64(-1))
    assert (
        type(r.position) is int and r == cm.Readout(position=-1) and hash(r) == hash(cm.Readout(position=-1))
    )
    with pytest.raises(cm.HypothesisError, match="must be an int or None"):
        cm.Readout(position=1.0)


def test_readout_is_none_for_inputs_and_inner_variables_and_readouts_maps_the_outputs():
    h = cm.Hypothesis()
    h.add_input("a", lambda ex: int(ex))
    h.add_variable("b", lambda a: a, parents=["a"])
    h.add_output("y", lambda b: b % 2, parents=["b"], readout=cm.Readout(position=-1))
    assert h.readout("a") is None and h.readout("b") is None
    assert h.readout("y") == cm.Readout(position=-1) and h.readouts == {"y": cm.Readout(position=-1)}


def _batched_sum(calls: list[int], reject_negative: bool = False) -> cm.Hypothesis:
    """``a`` read by a batched mechanism (its calls' batch sizes recorded in ``calls``),
    ``b`` per example; ``s = a + b``."""

    def a(batch: torch.Tensor) -> list[int]:
        calls.append(len(batch))
        if reject_negative and bool((batch[:, 0] < 0).any()):
            raise ValueError("a negative digit")
        return batch[:, 0].long().tolist()

    h = cm.Hypothesis("batched")
    h.add_input("a", a, at=0, batched=True)
    h.add_input("b", lambda ex: int(ex[1]), at=1)
    h.add_variable("s", lambda a, b: a + b, parents=["a", "b"])
    h.add_output("y", lambda s: s, parents=["s"], readout=cm.Readout())
    return h


def test_a_batched_input_mechanism_reads_a_batch_once_and_gives_what_one_example_at_a_time_gives():
    calls: list[int] = []
    h = _batched_sum(calls)
    x = torch.tensor([[1, 2], [3, 4], [0, 9]])
    rows = h.values_rows(x)
    assert calls == [3] and [r["s"] for r in rows] == [3, 7, 9]  # type: ignore[index]
    assert [h.values(ex) for ex in x] == rows and calls[1:] == [1, 1, 1]  # a batch of one each
    assert h.values_batch(x)["y"] == [3, 7, 9] and h.values_batch(list(x))["y"] == [3, 7, 9]
    graph = h.graph  # the flag travels with the graph
    assert cm.Hypothesis.from_graph(graph).values_rows(x) == rows


def test_a_batched_mechanism_that_rejects_some_examples_leaves_only_their_rows_undefined():
    calls: list[int] = []
    h = _batched_sum(calls, reject_negative=True)
    x = torch.tensor([[1, 2], [-1, 4], [0, 9]])
    rows = h.values_rows(x, undefined="none")
    assert rows[1] is None and [rows[0]["s"], rows[2]["s"]] == [3, 9]  # type: ignore[index]
    with pytest.raises(cm.HypothesisError, match="batched mechanism of variable 'a' raised"):
        h.values_rows(x)
    wrong = cm.Hypothesis("wrong")
    wrong.add_input("a", lambda batch: [0], batched=True)
    wrong.add_output("y", lambda a: a, parents=["a"], readout=cm.Readout())
    with pytest.raises(
        cm.HypothesisError, match="returned 1 values for 3 examples; expected one per example"
    ):
        wrong.values_rows(x)
    with pytest.raises(cm.HypothesisError, match="batched must be True or False"):
        cm.Hypothesis("h").add_input("a", lambda ex: 0, batched="yes")  # type: ignore[arg-type]
