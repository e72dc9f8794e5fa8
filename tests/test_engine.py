"""The batched scrubbing engine gives the straightforward implementation's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import planted_data, sum_hypothesis
from torch import nn

import causalmad as cm
from causalmad.explanations import hypothesis_free_explanations
from causalmad.scrubbing import SourcePool, clean_log_probs, scrub, scrub_many


def straightforward(adapter, family, x, values, clean, pool, readouts, k, counterfactual=None):
    cols = [scrub(adapter, e, x, values, clean, pool, readouts, k, seed=0, batch_size=97,
                  counterfactual=counterfactual) for e in family]
    return np.stack([c[0] for c in cols], 1), np.stack([c[1] for c in cols], 1)


def check_same(adapter, family, x, values, pool, readouts, k=3, **kw):
    clean = clean_log_probs(adapter, x, readouts)
    ref_div, ref_unmatched = straightforward(adapter, family, x, values, clean, pool, readouts, k,
                                             kw.get("counterfactual"))
    div, unmatched = scrub_many(adapter, family, x, values, clean, pool, readouts, k, seed=0, **kw)
    np.testing.assert_array_equal(unmatched, ref_unmatched)
    np.testing.assert_allclose(div, ref_div, rtol=1e-4, atol=1e-5)
    return div


def test_engine_matches_on_a_transformer_with_resumed_passes(tiny_bridge):
    adapter = cm.adapt(tiny_bridge)
    g = torch.Generator().manual_seed(0)
    pool_x, x = torch.randint(0, 12, (80, 11), generator=g), torch.randint(0, 12, (25, 11), generator=g)
    pool = SourcePool(adapter, pool_x, None)
    family = hypothesis_free_explanations(adapter, pool, 11, positions=[3, 10])
    assert {adapter.resume_point([s.hook for s in e.sites]) for e in family} >= {
        "blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"}
    readouts = [cm.Readout(position=-1)]
    values = [{} for _ in range(len(x))]
    div = check_same(adapter, family, x, values, pool, readouts, batch_size=64)
    assert (div > 0).any()
    # a tight memory budget only changes the chunking, not the numbers
    small = check_same(adapter, family, x, values, pool, readouts, memory_mb=0.05)
    np.testing.assert_allclose(small, div, rtol=1e-4, atol=1e-5)


def test_engine_matches_with_hypothesis_matching_and_unmatched_inputs(planted):
    model, h = planted
    adapter = cm.adapt(model)
    pool_x = planted_data(200, 0, 0, 0.05)
    x = torch.cat([planted_data(20, 0, 1, 0.05), planted_data(20, 1, 2, 0.05), torch.tensor([[9.0, 9.0, 0.0]])])
    pool = SourcePool(adapter, pool_x, [h.values(r) for r in pool_x])
    s_site = cm.Site("enc", basis=torch.tensor([[1.0], [0.0], [0.0]]) / 1.0)
    rule = cm.scrubbing.Resample(s_site, ("s",))
    family = [cm.scrubbing.Explanation("s", "hypothesis", [rule]),
              cm.scrubbing.Explanation("s interchanged", "hypothesis-interchange", [rule], ("s",), target="s"),
              *hypothesis_free_explanations(adapter, pool, 1)]

    def counterfactual(values, var, value):
        return [int(h.counterfactual(values, {var: value})["y"])]

    div = check_same(adapter, family, x, [h.values(r) for r in x], pool, [cm.Readout()],
                     counterfactual=counterfactual)
    # interchanging s with a differing source moves a clean input's answer to the source's
    # s, as the hypothesis says; on a flagged input the planted backdoor adds 5 on top
    clean_rows, flagged = div[:20, 1], div[20:40, 1]
    assert clean_rows.max() < 0.1 and flagged.min() > 10  # 0.037: the readout's own spread


def test_interchange_sources_differ_on_the_target_and_are_shared_by_every_rule(planted):
    model, h = planted
    adapter = cm.adapt(model)
    pool_x = planted_data(200, 0, 0)
    pool = SourcePool(adapter, pool_x, [h.values(r) for r in pool_x])
    x = planted_data(30, 0, 1)
    values = [h.values(r) for r in x]
    rules = [cm.scrubbing.Resample(cm.Site("enc"), ("s",)), cm.scrubbing.Resample(cm.Site("head"), ("s",))]
    e = cm.scrubbing.Explanation("both", "hypothesis-interchange", rules, ("s",), target="s")
    sources, unmatched, _ = cm.scrubbing.explanation_sources(pool, e, values, cm.scrubbing.row_keys(x), 4, seed=0)
    assert not unmatched.any() and sources[0] is sources[1]
    for i, row in enumerate(sources[0]):
        assert all(pool.values[s]["s"] != values[i]["s"] for s in row)


def test_sequential_models_resume_from_the_earliest_patched_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 23))
    adapter = cm.adapt(model)
    assert adapter.resume_point(["2", "4"]) == "1" and adapter.resume_point(["0"]) is None
    h = sum_hypothesis()
    pool_x, x = planted_data(150, 0, 0, 0.05), planted_data(30, 1, 1, 0.05)
    pool = SourcePool(adapter, pool_x, [h.values(r) for r in pool_x])
    family = hypothesis_free_explanations(adapter, pool, 1)
    check_same(adapter, family, x, [h.values(r) for r in x], pool, [cm.Readout()])


@pytest.mark.parametrize("layer", [0, 1])
def test_run_from_a_block_equals_the_full_forward(tiny_bridge, layer):
    from causalmad.scrubbing import _capture_raw

    adapter = cm.adapt(tiny_bridge)
    x = torch.randint(0, 12, (6, 11), generator=torch.Generator().manual_seed(1))
    point = f"blocks.{layer}.hook_resid_pre"
    with torch.no_grad():
        resumed = adapter.run_from(point, _capture_raw(adapter, x, [point])[0])
        torch.testing.assert_close(resumed, adapter.forward(x), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_engine_on_cuda_matches_cpu(tiny_bridge):
    import copy

    adapter = cm.adapt(tiny_bridge)
    g = torch.Generator().manual_seed(0)
    pool_x, x = torch.randint(0, 12, (60, 11), generator=g), torch.randint(0, 12, (10, 11), generator=g)
    pool = SourcePool(adapter, pool_x, None)
    family = hypothesis_free_explanations(adapter, pool, 11, positions=[10])
    readouts, values = [cm.Readout(position=-1)], [{} for _ in range(len(x))]
    cpu = scrub_many(adapter, family, x, values, clean_log_probs(adapter, x, readouts), pool, readouts, 2)[0]
    gpu_adapter = cm.adapt(copy.deepcopy(tiny_bridge).to("cuda"))
    gpu_pool = SourcePool(gpu_adapter, pool_x, None)
    gpu_family = hypothesis_free_explanations(gpu_adapter, gpu_pool, 11, positions=[10])
    gpu = scrub_many(gpu_adapter, gpu_family, x, values, clean_log_probs(gpu_adapter, x, readouts), gpu_pool,
                     readouts, 2)[0]
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)
