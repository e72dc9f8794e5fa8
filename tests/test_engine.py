"""The batched scrubbing engine gives the straightforward implementation's numbers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from conftest import planted_data, sum_hypothesis
from torch import nn

import causalmad as cm
from causalmad.explanations import hypothesis_free_explanations
from causalmad.models import CleanWindow
from causalmad.scrubbing import SourcePool, clean_log_probs, scrub, scrub_many
from causalmad.simulated_device import DEVICE, simulated_device


def straightforward(adapter, family, x, values, clean, pool, readouts, k, counterfactual=None):
    cols = [
        scrub(
            adapter,
            e,
            x,
            values,
            clean,
            pool,
            readouts,
            k,
            seed=0,
            batch_size=97,
            counterfactual=counterfactual,
        )
        for e in family
    ]
    return np.stack([c[0] for c in cols], 1), np.stack([c[1] for c in cols], 1)


def check_same(adapter, family, x, values, pool, readouts, k=3, **kw):
    clean = clean_log_probs(adapter, x, readouts)
    ref_div, ref_unmatched = straightforward(
        adapter, family, x, values, clean, pool, readouts, k, kw.get("counterfactual")
    )
    div, unmatched = scrub_many(adapter, family, x, values, clean, pool, readouts, k, seed=0, **kw)
    np.testing.assert_array_equal(unmatched, ref_unmatched)
    np.testing.assert_allclose(div, ref_div, rtol=1e-4, atol=1e-5)
    # clean_logprobs=None: the unscrubbed readouts from the engine's own clean pass
    own, _ = scrub_many(adapter, family, x, values, None, pool, readouts, k, seed=0, **kw)
    np.testing.assert_allclose(own, div, rtol=1e-5, atol=1e-6)
    return div


def test_engine_matches_on_a_transformer_with_resumed_passes(tiny_bridge):
    adapter = cm.adapt(tiny_bridge)
    g = torch.Generator().manual_seed(0)
    pool_x, x = torch.randint(0, 12, (80, 11), generator=g), torch.randint(0, 12, (25, 11), generator=g)
    pool = SourcePool(adapter, pool_x, None)
    family = hypothesis_free_explanations(adapter, pool, 11, positions=[3, 10])
    assert {adapter.resume_point([s.hook for s in e.sites]) for e in family} >= {
        "blocks.0.hook_resid_pre",
        "blocks.1.hook_resid_pre",
    }
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
    x = torch.cat(
        [planted_data(20, 0, 1, 0.05), planted_data(20, 1, 2, 0.05), torch.tensor([[9.0, 9.0, 0.0]])]
    )
    pool = SourcePool(adapter, pool_x, [h.values(r) for r in pool_x])
    s_site = cm.Site("enc", basis=torch.tensor([[1.0], [0.0], [0.0]]) / 1.0)
    rule = cm.scrubbing.Resample(s_site, ("s",))
    family = [
        cm.scrubbing.Explanation("s", "hypothesis", [rule]),
        cm.scrubbing.Explanation("s interchanged", "hypothesis-interchange", [rule], ("s",), target="s"),
        *hypothesis_free_explanations(adapter, pool, 1),
    ]

    def counterfactual(values, var, value):
        return [int(h.counterfactual(values, {var: value})["y"])]

    div = check_same(
        adapter, family, x, [h.values(r) for r in x], pool, [cm.Readout()], counterfactual=counterfactual
    )
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
    sources, unmatched, _ = cm.scrubbing.explanation_sources(
        pool, e, values, cm.scrubbing.row_keys(x), 4, seed=0
    )
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


@pytest.mark.parametrize(
    ("hook", "point"),
    [
        ("blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"),
        ("blocks.1.hook_resid_post", "blocks.1.hook_resid_post"),
    ],
)
def test_a_patch_on_a_block_output_resumes_after_the_block(tiny_bridge, hook, point):
    """A block's output is the next block's input: scrubbing there reruns only what follows
    (after the last block, the final norm and unembedding), and the patch still applies."""
    from causalmad.scrubbing import _capture_raw

    adapter = cm.adapt(tiny_bridge)
    assert adapter.resume_point([hook]) == point
    assert adapter.resume_point([hook, "blocks.0.hook_mlp_out"]) == "blocks.0.hook_resid_pre"
    x = torch.randint(0, 12, (5, 11), generator=torch.Generator().manual_seed(4))

    def bump(o):
        o = o.clone()
        o[:, 6, :4] += 1.0  # not uniform: a final LayerNorm would remove a constant shift
        return o

    with torch.no_grad():
        with cm.interventions._hooks(adapter, [(hook, bump)]):
            full = adapter.forward(x)
        clean = _capture_raw(adapter, x, [point])[0]
        with cm.interventions._hooks(adapter, [(hook, bump)]):
            resumed = adapter.run_from(point, clean)
    torch.testing.assert_close(resumed, full, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full, adapter.forward(x))


@pytest.mark.parametrize(("layer", "start"), [(0, 4), (1, 7), (1, 10)])
def test_windowed_run_equals_the_full_forward_with_the_same_patch(tiny_bridge, layer, start):
    """Positions before ``start`` come from the clean run's keys and values; a patch at
    ``start`` (z of head 1, then the MLP output after it) gives the full forward's logits."""
    from causalmad.scrubbing import _capture_raw

    adapter = cm.adapt(tiny_bridge)
    x = torch.randint(0, 12, (6, 11), generator=torch.Generator().manual_seed(2))
    z, mlp = f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_mlp_out"
    assert adapter.can_window([z, mlp]) and not adapter.can_window([f"blocks.{layer}.hook_resid_mid"])

    def bump(act, at):  # head 1's coordinates at one position, plus 1
        act = act.clone()
        act[:, at, 8:16] += 1.0
        return act

    with (
        torch.no_grad(),
        cm.interventions._hooks(
            adapter,
            [(z, lambda o: bump(o, start)), (mlp, lambda o: bump(o, start + 1 if start < 10 else start))],
        ),
    ):
        full = adapter.forward(x)
    point = f"blocks.{layer}.hook_resid_pre"
    points = adapter.window_inputs(point)
    with torch.no_grad():
        acts = _capture_raw(adapter, x, points)
        prefix = [adapter.prefix_kv(h, a[:, :start]) for h, a in zip(points, acts)]
        fns = {
            adapter.window_point(z): [lambda a: bump(a, 0)],
            adapter.window_point(mlp): [lambda a: bump(a, 1 if start < 10 else 0)],
        }
        window = adapter.run_window(point, start, acts[0][:, start:], prefix, fns)
        read = min(start + 2, 10)  # logits read from there on: the last block computes only those
        trimmed = adapter.run_window(point, start, acts[0][:, start:], prefix, fns, readout_start=read)
    torch.testing.assert_close(window[:, start:], full[:, start:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(trimmed[:, read:], full[:, read:], rtol=1e-5, atol=1e-5)
    # with the clean run given, the patched block computes only the positions patched
    # (start, start + 1); every block after it, every position from there on
    final = _capture_raw(adapter, x, [adapter.final_hook()])[0]
    with torch.no_grad():
        kv = [adapter.prefix_kv(h, a) for h, a in zip(points, acts)]
        touched = {
            adapter.window_point(z): torch.tensor([0]),
            adapter.window_point(mlp): torch.tensor([1 if start < 10 else 0]),
        }
        clean = CleanWindow(kv, [*acts, final], torch.arange(len(x)), touched)
        queried = []
        q_proj = tiny_bridge.blocks[layer].attn._original_component.q
        handle = q_proj.register_forward_hook(lambda m, args, out: queried.append(args[0].shape[1]))
        try:
            sparse = adapter.run_window(point, start, acts[0][:, start:], [], fns, clean=clean)
        finally:
            handle.remove()
    torch.testing.assert_close(sparse[:, start:], full[:, start:], rtol=1e-5, atol=1e-5)
    assert queried == [2 if start < 10 else 1]


def test_plain_logits_equal_the_bridge_forward_and_train_the_same_parameters(tiny_bridge):
    """The hook-free forward the tasks train through (tasks/_training.py): same logits at the
    positions read, and gradients for every parameter the bridge's forward reaches there."""
    adapter = cm.adapt(tiny_bridge)
    x = torch.randint(0, 12, (5, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = tiny_bridge(x)
        torch.testing.assert_close(adapter.plain_logits(x), full, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(adapter.plain_logits(x, 7), full[:, 7:], rtol=1e-5, atol=1e-5)
    grads = []
    for logits in (lambda: tiny_bridge(x)[:, 7:], lambda: adapter.plain_logits(x, 7)):
        tiny_bridge.zero_grad()
        logits().logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in tiny_bridge.named_parameters() if p.grad is not None})
        tiny_bridge.zero_grad(set_to_none=True)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(tiny_bridge.parameters()))
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-5, msg=name)
    handle = adapter.module("blocks.0.hook_resid_post").register_forward_hook(lambda m, i, o: o)
    with pytest.raises(cm.InputError, match="without hooks"):  # a hook the plain run would skip
        adapter.plain_logits(x)
    handle.remove()


def test_run_readouts_computes_only_the_positions_read_and_equals_the_bridge(tiny_bridge):
    """The input cut's forward of hybrids (``run_readouts``): the hook-free run from the
    first position read gives the bridge's readout log-probabilities, in any batch size,
    and falls back to the bridge's forward when a hook is installed."""
    adapter = cm.adapt(tiny_bridge)
    x = torch.randint(0, 12, (9, 11), generator=torch.Generator().manual_seed(4))
    readouts = [
        cm.Readout(position=8, logits=tuple(range(10))),
        cm.Readout(position=-1),
        cm.Readout(position=10),
    ]
    with torch.no_grad():
        full = tiny_bridge(x)
    want = [torch.log_softmax(r.select(full).float(), -1) for r in readouts]
    for batch in (1, 4, 1024):
        got = adapter.run_readouts(x, readouts, batch)
        assert [g.shape for g in got] == [w.shape for w in want]
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    calls = []
    handle = adapter.module("blocks.0.hook_resid_post").register_forward_hook(lambda m, i, o: calls.append(1))
    got = adapter.run_readouts(x, readouts)
    handle.remove()
    assert calls, "a hook someone installed must run: the bridge's forward then"
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_engine_runs_windows_from_the_earliest_patched_position(tiny_bridge, monkeypatch):
    adapter = cm.adapt(tiny_bridge)
    starts = []
    run_window = adapter.run_window
    monkeypatch.setattr(
        adapter,
        "run_window",
        lambda point, start, *a, **kw: starts.append(start) or run_window(point, start, *a, **kw),
    )
    g = torch.Generator().manual_seed(3)
    pool_x, x = torch.randint(0, 12, (60, 11), generator=g), torch.randint(0, 12, (12, 11), generator=g)
    pool = SourcePool(adapter, pool_x, None)
    family = hypothesis_free_explanations(adapter, pool, 11, positions=[2, 6, 9])
    everywhere = cm.scrubbing.Resample(cm.Site("blocks.1.hook_mlp_out"))  # every position: the whole sequence
    family.append(cm.scrubbing.Explanation("mlp 1 irrelevant", "hypothesis-free", [everywhere]))
    readouts = [cm.Readout(position=8), cm.Readout(position=-1)]
    check_same(adapter, family, x, [{} for _ in range(len(x))], pool, readouts, batch_size=64)
    # patches at 2 and 6 start there; at 9 the earliest readout (8) bounds the window
    assert set(starts) == {0, 2, 6, 8}
    # one input: each resume point's windows fit in one pass and run as one, from the earliest start
    starts.clear()
    check_same(adapter, family, x[:1], [{}], pool, readouts, batch_size=4096)
    points = {adapter.resume_point([s.hook for s in e.sites]) for e in family}
    # (check_same runs the engine twice: with the clean readouts given, and with its own;
    # the clean readouts it gives come from the hook-free run, one more window from 0)
    assert len(starts) == 2 * len(points) + 1 and set(starts) <= {0, 2}
    # a hook someone installed on the model must run: no windows then
    starts.clear()
    handle = tiny_bridge.blocks[0].hook_out.register_forward_hook(lambda m, a, o: None)
    try:
        check_same(adapter, family[:6], x, [{} for _ in range(len(x))], pool, readouts)
    finally:
        handle.remove()
    assert starts == []


@contextlib.contextmanager
def on(device: str) -> Iterator[torch.device]:
    """A CUDA device, or the accelerator simulated on the CPU (which raises where CUDA
    would: :mod:`causalmad.simulated_device`), so that CI without a GPU checks the
    device code too."""
    if device == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device here")
        yield torch.device("cuda")
    else:
        with simulated_device():
            yield DEVICE


DEVICES = ["cuda", "simulated"]


@pytest.mark.parametrize("device", DEVICES)
def test_engine_on_a_device_matches_cpu(device, tiny_bridge):
    import copy

    adapter = cm.adapt(tiny_bridge)
    g = torch.Generator().manual_seed(0)
    pool_x, x = torch.randint(0, 12, (60, 11), generator=g), torch.randint(0, 12, (10, 11), generator=g)
    pool = SourcePool(adapter, pool_x, None)
    family = hypothesis_free_explanations(adapter, pool, 11, positions=[10])
    readouts, values = [cm.Readout(position=-1)], [{} for _ in range(len(x))]
    cpu = scrub_many(adapter, family, x, values, clean_log_probs(adapter, x, readouts), pool, readouts, 2)[0]
    with on(device) as dev:
        gpu_adapter = cm.adapt(copy.deepcopy(tiny_bridge).to(dev))
        gpu_pool = SourcePool(gpu_adapter, pool_x, None)
        gpu_family = hypothesis_free_explanations(gpu_adapter, gpu_pool, 11, positions=[10])
        gpu = scrub_many(
            gpu_adapter,
            gpu_family,
            x,
            values,
            clean_log_probs(gpu_adapter, x, readouts),
            gpu_pool,
            readouts,
            2,
        )[0]
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)


def test_a_scrubbed_pass_waits_for_the_device_at_most_twice(tiny_bridge):
    """Each blocking copy between host and device makes the host wait for the device: a
    pass copies its indices over in one copy, its patches' positions in another, however
    many explanations and rules share it (counted on the simulated accelerator)."""
    import copy

    g = torch.Generator().manual_seed(0)
    pool_x, x = torch.randint(0, 12, (60, 11), generator=g), torch.randint(0, 12, (12, 11), generator=g)
    readouts, values = [cm.Readout(position=-1)], [{} for _ in range(len(x))]
    with simulated_device() as traffic:
        adapter = cm.adapt(copy.deepcopy(tiny_bridge).to(DEVICE))
        pool = SourcePool(adapter, pool_x, None)
        family = hypothesis_free_explanations(adapter, pool, 11, positions=[7, 10])
        clean = clean_log_probs(adapter, x, readouts)
        places = {SourcePool._place(s) for e in family for s in e.sites}
        passes = []
        for name in ("forward", "run_from", "run_window"):
            run = getattr(adapter, name)
            setattr(adapter, name, lambda *a, run=run, **kw: passes.append(1) or run(*a, **kw))
        traffic.clear()
        scrub_many(adapter, family, x, values, clean, pool, readouts, 3, batch_size=128)
    assert len(family) > 20 and len(passes) > 3  # passes shared by several explanations
    # two copies per pass; once per call the pool's activations (one copy for every place),
    # the subspaces, the clean readouts and the results back
    assert len(places) > 4 and traffic.syncs <= 2 * len(passes) + 3 + len(readouts)


def _fitted_scores(
    model: nn.Module, hypothesis, trusted: torch.Tensor, x: torch.Tensor, device: torch.device | str
):
    import copy

    det = cm.ScrubbingDetector(
        copy.deepcopy(model).to(device), hypothesis=hypothesis, resamples=2, n_pairs=64, random_state=0
    ).fit(trusted)
    return [e["name"] for e in det.explanations_ if e["valid"]], det.score(x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("which", ["planted", "bridge"])
def test_detector_fitted_on_a_device_matches_cpu(which, device, planted, tiny_bridge):
    """The whole detector (alignment, validity, calibration, scoring) on a device copy of
    a model: the same valid explanations and the same scores as on the CPU."""
    if which == "planted":
        model, h = planted
        trusted, x = planted_data(400, 0, 0), torch.cat([planted_data(30, 0, 5), planted_data(30, 1, 6)])
    else:
        g = torch.Generator().manual_seed(0)
        model, h = tiny_bridge, None
        trusted, x = torch.randint(0, 12, (200, 11), generator=g), torch.randint(0, 12, (40, 11), generator=g)
    cpu_valid, cpu = _fitted_scores(model, h, trusted, x, "cpu")
    with on(device) as dev:
        gpu_valid, gpu = _fitted_scores(model, h, trusted, x, dev)
    assert gpu_valid == cpu_valid
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-3)


def test_small_window_groups_are_packed_into_full_passes():
    from causalmad.scrubbing import _merge_small_windows

    groups = {
        ("p", 5, "c"): [2],
        ("p", 0, "a"): [0],
        ("p", 2, "b"): [1, 4],
        ("p", None, None): [3],
        ("q", 1, "d"): [5],
    }
    # 40 rows per explanation, 120 per pass: a and b (3 explanations) fill one pass, c runs alone
    merged = _merge_small_windows(groups, 40, 120)
    assert merged == {
        ("p", None, None): [3],
        ("p", 0, ("a", "b")): [0, 1, 4],
        ("p", 5, "c"): [2],
        ("q", 1, "d"): [5],
    }
    # every explanation stays in exactly one group
    assert sorted(j for cols in merged.values() for j in cols) == list(range(6))
    # passes too small for two explanations: nothing merges
    assert _merge_small_windows(groups, 40, 60) == groups


def test_rows_with_the_same_input_and_source_activations_run_once(tiny_bridge, monkeypatch):
    adapter = cm.adapt(tiny_bridge)
    computed = []
    run_window = adapter.run_window
    monkeypatch.setattr(
        adapter,
        "run_window",
        lambda point, start, act, *a, **kw: (
            computed.append(len(act)) or run_window(point, start, act, *a, **kw)
        ),
    )
    g = torch.Generator().manual_seed(5)
    pool_x, x = torch.randint(0, 12, (60, 11), generator=g), torch.randint(0, 12, (12, 11), generator=g)
    pool_x[:, 3], x[:, 3] = 7, 7  # a fixed token: every source's embedding there is the input's own
    pool = SourcePool(adapter, pool_x, None)
    fixed = cm.scrubbing.Resample(cm.Site("blocks.0.hook_resid_pre", positions=(3,)))
    varied = cm.scrubbing.Resample(cm.Site("blocks.0.hook_resid_pre", positions=(4,)))
    family = [
        cm.scrubbing.Explanation("fixed token", "hypothesis-free", [fixed]),
        cm.scrubbing.Explanation("varied token", "hypothesis-free", [varied]),
    ]
    readouts = [cm.Readout(position=-1)]
    div = check_same(adapter, family, x, [{} for _ in range(len(x))], pool, readouts, k=4, batch_size=4096)
    # (computed[0]: the clean readouts check_same gives, from the hook-free run)
    # the fixed token's 12 x 4 rows are 12 distinct ones (each its clean run); the varied
    # token's draw 4 different sources for most inputs
    assert computed[0] == 12 and computed[1] < 12 + 12 * 4 and computed[1] >= 12 + 12 * 3
    np.testing.assert_allclose(div[:, 0], 0.0, atol=1e-5)


def test_interchanges_equal_the_pyvene_interchange(tiny_bridge):
    from causalmad.interventions import interchange_pyvene
    from causalmad.scrubbing import Interchanges

    adapter = cm.adapt(tiny_bridge)
    g = torch.Generator().manual_seed(7)
    base, source = torch.randint(0, 12, (20, 11), generator=g), torch.randint(0, 12, (20, 11), generator=g)
    runner = Interchanges(
        adapter, base, source, [cm.Readout(position=8), cm.Readout(position=-1)], batch_size=8
    )
    groups = [
        [cm.Site("blocks.0.hook_resid_pre", positions=(2,))],
        [cm.Site("blocks.0.attn.hook_z", positions=(9,), head=1)],
        [cm.Site("blocks.1.attn.hook_z", positions=(10,), head=2)],
        [
            cm.Site("blocks.0.hook_resid_post", positions=(4, 9)),
            cm.Site("blocks.1.hook_mlp_out", positions=(10,)),
        ],
        [cm.Site("blocks.1.hook_attn_out")],
    ]  # every position
    runner.prepare([s for group in groups for s in group])
    for sites in groups:
        fast = runner.logits(sites)
        slow = interchange_pyvene(adapter, base, source, sites)
        assert not torch.allclose(
            slow[:, [8, 10]], adapter.run(base)[:, [8, 10]]
        )  # the interchange changes the readouts
        torch.testing.assert_close(fast[:, [8, 10]], slow[:, [8, 10]], rtol=1e-4, atol=1e-5)
    # a readout without a position: no windowed run (alignment then goes through pyvene)
    assert Interchanges(adapter, base, source, [cm.Readout()]).logits(groups[0]) is None


def test_the_statistic_over_sources_is_chosen_per_explanation(tiny_bridge):
    """``scrub_many`` reduces each explanation's rows with its own statistic, the same as
    ``scrub`` with that statistic; the median and the mean differ on the same rows."""
    adapter = cm.adapt(tiny_bridge)
    g = torch.Generator().manual_seed(11)
    pool_x, x = torch.randint(0, 12, (60, 11), generator=g), torch.randint(0, 12, (10, 11), generator=g)
    pool = SourcePool(adapter, pool_x, None)
    family = hypothesis_free_explanations(adapter, pool, 11, positions=[4])[:6]
    readouts, values = [cm.Readout(position=-1)], [{} for _ in range(len(x))]
    clean = clean_log_probs(adapter, x, readouts)
    stats = ["median", "mean", "trimmed"] * 2
    got, _ = scrub_many(adapter, family, x, values, clean, pool, readouts, 5, seed=0, statistic=stats)
    for j, (e, st) in enumerate(zip(family, stats)):
        ref, _ = scrub(adapter, e, x, values, clean, pool, readouts, 5, seed=0, statistic=st)
        np.testing.assert_allclose(got[:, j], ref, rtol=1e-4, atol=1e-6)
    means, _ = scrub_many(adapter, family, x, values, clean, pool, readouts, 5, seed=0, statistic="mean")
    assert not np.allclose(means[:, 0], got[:, 0])
    with pytest.raises(ValueError, match="statistic must be one of"):
        cm.scrubbing.reduce_resamples(np.zeros((2, 3)), "max")


def test_the_trimmed_statistic_drops_one_accident_and_keeps_a_repeated_divergence():
    """``"trimmed"``: one draw that breaks the output (a hybrid that completes a trigger by
    chance) no longer decides the input's divergence; two draws that show it still do."""
    from causalmad.scrubbing import reduce_resamples

    div = np.array([[0.1, 0.2, 0.1, 50.0], [0.1, 0.2, 50.0, 50.0], [0.4, 0.4, 0.4, 0.4]])
    np.testing.assert_allclose(reduce_resamples(div, "trimmed"), [0.4 / 3, 50.3 / 3, 0.4])
    assert reduce_resamples(div, "mean")[0] > 12  # the mean is the accident's
    np.testing.assert_allclose(reduce_resamples(np.array([[3.0], [5.0]]), "trimmed"), [3.0, 5.0])


def test_an_interchange_scores_only_the_outputs_it_names():
    """Counterfactual classes of ``UNSCORED`` leave their output out of the NLL."""
    from causalmad.scrubbing import UNSCORED, counterfactual_nll

    q = [
        torch.log_softmax(torch.tensor([[2.0, 0.0], [0.0, 3.0]]), -1),
        torch.log_softmax(torch.randn(2, 3), -1),
    ]
    both = counterfactual_nll(q, np.array([[0, 1], [1, 2]]))
    first = counterfactual_nll(q, np.array([[0, UNSCORED], [1, UNSCORED]]))
    torch.testing.assert_close(first, -torch.stack([q[0][0, 0], q[0][1, 1]]))
    assert (both > first).all()


def test_engine_matches_on_pieces_of_sites_which_it_copies_coordinate_by_coordinate(tiny_bridge):
    from causalmad.explanations import piece_explanations
    from causalmad.interventions import _apply, coordinates
    from causalmad.scrubbing import Explanation, Resample

    adapter = cm.adapt(tiny_bridge)
    g = torch.Generator().manual_seed(1)
    pool_x, x = torch.randint(0, 12, (80, 11), generator=g), torch.randint(0, 12, (25, 11), generator=g)
    pool = SourcePool(adapter, pool_x, None)
    claims = [
        Explanation(f"{hook} irrelevant", "hypothesis-subset", [Resample(cm.Site(hook, (3,)))])
        for hook in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_pre")
    ]
    pieces = [e for e, _ in piece_explanations(adapter, pool, claims, 2, seed=0)]
    assert len(pieces) == 4
    # the straightforward path projects onto the piece's basis; the engine copies coordinates
    div = check_same(adapter, pieces, x, [{} for _ in range(len(x))], pool, [cm.Readout(position=-1)])
    assert (div > 0).all()
    basis = pieces[0].resamples[0].site.basis
    idx = coordinates(basis)
    assert idx.dtype == torch.long and sorted(idx.tolist()) == torch.nonzero(basis.sum(1))[:, 0].tolist()
    act, values = torch.randn(5, 2, basis.shape[0]), torch.randn(5, 1, basis.shape[0])
    pos = torch.full((5, 1), 1)
    torch.testing.assert_close(_apply(act, pos, values, idx), _apply(act, pos, values, basis))
    rotated = torch.linalg.qr(torch.randn(basis.shape[0], 3))[0]
    assert coordinates(rotated) is rotated  # any other basis is projected as before
