"""Alignment against ground truth: RASP programs compiled with tracr, whose residual stream
is labelled with the RASP variable each dimension holds (``tasks/tracr_programs.py``).

The tests check that the TransformerBridge conversion is exact, that causalmad's site
search recovers where tracr wrote each variable (and that every candidate's IIA is the one
tracr's labels predict), and that DAS recovers the labelled residual subspace where it
converges. Skipped when the optional ``tracr`` extra (tracr-pypi, jax) is absent.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("jax", reason="the optional extra 'tracr' (tracr-pypi, jax, jaxlib) is not installed")
pytest.importorskip("tracr", reason="the optional extra 'tracr' (tracr-pypi, jax, jaxlib) is not installed")

import causalmad as cm  # noqa: E402
from causalmad.alignment import interchange_accuracy, learn_rotation, sample_pairs, search  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def programs():
    from causalmad_tasks.tracr_programs import tracr_program

    return {
        name: tracr_program(name, "tiny", seed=0, n_trusted=1200)
        for name in ("detect-pattern", "count-less-freq")
    }


def _splits(program):
    h, x = program.hypothesis, program.trusted
    vals = [h.values(r) for r in x]
    return (x[:500], vals[:500]), (x[500:850], vals[500:850]), (x[850:], vals[850:])  # pool, align, held-out


def _grid(program) -> list[cm.Site]:
    """Every default candidate hook at every non-BOS position (the default grid tries only
    the readout position, but RASP variables live at other positions too)."""
    sites = []
    for hook in cm.adapt(program.model).candidate_hooks():
        for pos in range(1, program.max_seq_len + 1):
            heads = [None] if not hook.n_heads else list(range(hook.n_heads))
            sites += [cm.Site(hook.name, (pos,), head=k) for k in heads]
    return sites


def _held(program, site: cm.Site) -> set[str]:
    """Hypothesis variables a whole-vector interchange at ``site`` swaps, per tracr's labels."""
    (pos,) = site.positions
    return {f"{name}@{pos}" for name in program.ground_truth.contents(site)} & set(
        program.hypothesis.variables
    )


def _predicted_outputs(program, site: cm.Site, base: dict, source: dict) -> tuple:
    """The hypothesis' outputs on ``base`` after a whole-vector interchange at ``site``, as
    tracr's labels predict it: every hypothesis variable the site carries takes its source
    value."""
    h = program.hypothesis
    cf = h.counterfactual(base, {v: source[v] for v in _held(program, site)})
    return tuple(cf[o] for o in h.outputs)


def test_the_bridge_computes_exactly_what_tracr_compiled(programs):
    for p in programs.values():
        assert p.assembled is not None  # compiled in this session (fresh test cache)
        assert p.info["output_agreement"] == 1.0  # decoded outputs, 500 inputs x every position
        assert p.info["max_residual_gap"] < 1e-4  # residual stream after every layer
        assert p.info["hypothesis_accuracy"] == 1.0  # the hypothesis is the program


def test_ground_truth_reads_writes_off_the_compiled_weights(programs):
    gt = programs["count-less-freq"].ground_truth
    # hist: a selector width (layer-0 attention writes a hidden dim, layer-0 MLP the
    # categorical value); read by layer-1 attention (the second selector width)
    assert gt.writers("hist") == [0, 1] and max(gt.readers("hist")) == 2
    assert gt.writers("n_rare") == [2, 3] and max(gt.readers("n_rare")) == 4  # 4 = unembedding
    gt = programs["detect-pattern"].ground_truth
    assert gt.writers("is_a") == [1] and gt.readers("is_a") == [2]  # map (MLP 0), shifted by attention 1
    assert gt.writers("ab") == [3] and gt.readers("ab") == [5]


# detect-pattern variables that a whole-vector interchange cannot tell apart from others:
# the token at 2 acts on the output only through is_a@2, prev2_a@4 is its copy, the token at
# 4 acts only through is_c@4, and ab@4 is a function of (prev2_a@4, prev_b@4) alone
EQUIVALENT = {
    "is_a@2": {"tokens@2", "prev2_a@4"},
    "prev2_a@4": {"tokens@2", "is_a@2"},
    "is_c@4": {"tokens@4"},
    "ab@4": {"prev2_a@4", "prev_b@4"},
}

CASES = [("count-less-freq", "hist@1"), ("count-less-freq", "hist@3")] + [
    ("detect-pattern", v) for v in ("is_a@2", "is_c@4", "prev2_a@4", "ab@4")
]


@pytest.mark.parametrize(("name", "var"), CASES)
def test_site_search_recovers_where_tracr_wrote_the_variable(programs, name, var):
    p = programs[name]
    pool, align, held = _splits(p)
    ad = cm.adapt(p.model)
    grid = _grid(p)
    alignment = search(ad, p.hypothesis, [var], align, pool, held, n_pairs=64, sites={var: grid}, max_group=1)
    rasp_name, pos = p.rasp_name(var)
    gt = p.ground_truth

    # every candidate's held-out IIA is perfect exactly where tracr's labels predict it
    rng = np.random.default_rng(1)
    pairs = sample_pairs(var, held[1], pool[1], 64, rng)
    h = p.hypothesis
    targets = [
        tuple(h.counterfactual(held[1][b], {var: pool[1][s][var]})[o] for o in h.outputs) for b, s in pairs
    ]
    for c in alignment.candidates[var]:
        (site,) = c.sites
        predicted = np.mean(
            [_predicted_outputs(p, site, held[1][b], pool[1][s]) == t for (b, s), t in zip(pairs, targets)]
        )
        assert (predicted == 1.0) == (c.heldout_iia >= 0.98), (c.key, predicted, c.heldout_iia)

    best = alignment.best(var)
    assert best.heldout_iia >= 0.98
    perfect = [c.sites[0] for c in alignment.candidates[var] if c.heldout_iia >= 0.98]
    assert any(gt.holds(rasp_name, s, pos) for s in perfect)  # tracr's own location is among them
    if name == "count-less-freq":
        # hist@i is identifiable (each token also feeds hist at the other positions), so
        # the perfect sites are exactly tracr's: attention-0's hidden dim and head,
        # MLP-0's output, and the stream before layer 1, at position i
        assert {s.key for s in perfect} == {s.key for s in grid if gt.holds(rasp_name, s, pos)}
        assert gt.holds(rasp_name, best.sites[0], pos)
    else:
        # the best site (the first perfect one in grid order) holds the variable or only
        # variables interchange-equivalent to it (EQUIVALENT); the labels predict the tie
        held_best = _held(p, best.sites[0])
        assert held_best and held_best <= {var} | EQUIVALENT[var], (best.key, held_best)


def _visible_overlap(program, site: cm.Site, rasp_name: str) -> float:
    """Fraction of the learned basis, projected on the directions some later sublayer
    reads, that lies in ``rasp_name``'s labelled residual dimensions. Directions no later
    weight reads are causally inert: no interchange can identify them, so DAS leaves them
    where its random start put them."""
    gt, sd = program.ground_truth, program.model.state_dict()
    kind, s = gt.sublayer_of(site.hook)
    rows = []
    for t in range(s + (kind == "write"), 2 * gt.n_layers + 1):
        if t == 2 * gt.n_layers:
            rows.append(sd["unembed.weight"])
        elif t % 2 == 0:
            rows += [sd[f"blocks.{t // 2}.attn.{x}.weight"] for x in "qkv"]
        else:
            rows.append(sd[f"blocks.{t // 2}.mlp.in.weight"])
    _, sv, vh = torch.linalg.svd(torch.cat(rows), full_matrices=False)
    read = vh[sv > 1e-6 * sv.max()].T
    visible = read @ (read.T @ site.basis)
    return float((visible[gt.dims(rasp_name)] ** 2).sum() / (visible**2).sum())


@pytest.mark.parametrize(
    ("var", "hook"), [("ab@4", "blocks.2.hook_resid_pre"), ("is_a@2", "blocks.1.hook_resid_pre")]
)
def test_das_recovers_the_labelled_subspace(programs, var, hook):
    """At the stream before the layer that reads the variable (where other variables live
    too: a whole-vector swap of ``blocks.2.hook_resid_pre[pos 4]`` also swaps is_c@4, held-out
    IIA ~0.8 for ab@4), a rank-1 DAS subspace isolates the variable's labelled dimensions."""
    p = programs["detect-pattern"]
    pool, align, held = _splits(p)
    ad, h = cm.adapt(p.model), p.hypothesis
    rasp_name, pos = p.rasp_name(var)
    rng = np.random.default_rng(0)
    site = learn_rotation(
        ad,
        h,
        var,
        cm.Site(hook, (pos,)),
        align,
        pool,
        sample_pairs(var, align[1], pool[1], 512, rng),
        rank=1,
        steps=200,
        random_state=0,
    )
    pairs = sample_pairs(var, held[1], pool[1], 256, rng)
    assert (
        interchange_accuracy(ad, h, var, site, held[0], held[1], pool[0], pool[1], pairs) >= 0.98
    )  # measured 1.0
    assert _visible_overlap(p, site, rasp_name) >= 0.9  # measured 0.93 (ab), 0.92 (is_a); raw overlap 0.83
    random = cm.Site(hook, (pos,)).with_basis(
        torch.linalg.qr(torch.randn(site.basis.shape[0], 1, generator=torch.Generator().manual_seed(0)))[0],
        "random",
    )
    assert _visible_overlap(p, random, rasp_name) < 0.5


@pytest.mark.xfail(
    strict=True,
    reason="DAS (learn_rotation, 200-600 steps, lr 1e-2..3e-2) plateaus at held-out IIA "
    "~0.78 for hist: tracr's selector-width attention is saturated, so a partly rotated subspace "
    "gets no useful gradient",
)
def test_das_recovers_hist(programs):
    p = programs["count-less-freq"]
    pool, align, held = _splits(p)
    ad, h = cm.adapt(p.model), p.hypothesis
    rng = np.random.default_rng(0)
    site = learn_rotation(
        ad,
        h,
        "hist@2",
        cm.Site("blocks.1.hook_resid_pre", (2,)),
        align,
        pool,
        sample_pairs("hist@2", align[1], pool[1], 512, rng),
        rank=1,
        steps=100,
        random_state=0,
    )
    pairs = sample_pairs("hist@2", held[1], pool[1], 256, rng)
    assert interchange_accuracy(ad, h, "hist@2", site, held[0], held[1], pool[0], pool[1], pairs) >= 0.98
