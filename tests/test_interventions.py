"""Sites, adapters and the two intervention engines (pyvene and hooks) agree."""

from __future__ import annotations

import pytest
import torch

import causalmad as cm
from causalmad.interventions import Patch, capture, interchange_pyvene, run_patched


@pytest.mark.parametrize(
    "site",
    [
        cm.Site("blocks.0.hook_resid_post", (7, 8)),
        cm.Site("blocks.1.attn.hook_z", (9,), head=2),
        cm.Site(
            "blocks.1.hook_resid_pre",
            (-1,),
            basis=torch.linalg.qr(torch.randn(32, 3, generator=torch.Generator().manual_seed(0)))[0],
        ),
        cm.Site("blocks.0.hook_mlp_out", (3, 10)),
    ],
    ids=lambda s: s.key,
)
def test_pyvene_and_hook_engines_agree(tiny_bridge, site):
    ad = cm.adapt(tiny_bridge)
    g = torch.Generator().manual_seed(1)
    base, source = torch.randint(0, 12, (6, 11), generator=g), torch.randint(0, 12, (6, 11), generator=g)
    via_pyvene = interchange_pyvene(ad, base, source, site)
    via_hooks = run_patched(ad, base, [Patch(site, capture(ad, source, [site])[0])])
    assert torch.allclose(via_pyvene, via_hooks, atol=1e-5)
    assert not torch.allclose(via_hooks, ad.run(base), atol=1e-4)  # the patch did something


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_a_pyvene_call_leaves_the_models_mode_and_gradients_as_they_were(tiny_bridge, training):
    """pyvene puts the model in eval mode with gradients off, in place: the call undoes
    that, and skips the (slow, on a bridge) mode switch when nothing needs switching."""
    ad = cm.adapt(tiny_bridge)
    before = {n: p.requires_grad for n, p in tiny_bridge.named_parameters()}
    tiny_bridge.train(training)
    try:
        x = torch.randint(0, 12, (3, 11), generator=torch.Generator().manual_seed(3))
        interchange_pyvene(ad, x, x.flip(0), cm.Site("blocks.0.hook_resid_post", (7,)))
        modules = [*tiny_bridge.modules(), *tiny_bridge.original_model.modules()]
        assert all(m.training == training for m in modules)
        assert {n: p.requires_grad for n, p in tiny_bridge.named_parameters()} == before
    finally:
        tiny_bridge.eval()


def test_patching_a_source_with_itself_changes_nothing(tiny_bridge):
    ad = cm.adapt(tiny_bridge)
    x = torch.randint(0, 12, (4, 11), generator=torch.Generator().manual_seed(2))
    site = cm.Site("blocks.1.hook_resid_pre", (4, 5))
    assert torch.allclose(run_patched(ad, x, [Patch(site, capture(ad, x, [site])[0])]), ad.run(x), atol=1e-5)


def test_unknown_hook_suggests_close_names(tiny_bridge):
    ad = cm.adapt(tiny_bridge)
    with pytest.raises(cm.SiteError, match="blocks.0.hook_resid_post"):
        ad.module("blocks.0.hook_resid_pots")
    with pytest.raises(cm.SiteError, match="not on the residual"):
        ad.module("blocks.0.hook_resid_mid")


def test_head_out_of_range_is_a_site_error(tiny_bridge):
    ad = cm.adapt(tiny_bridge)
    site = cm.Site("blocks.0.attn.hook_z", (1,), head=7)
    x = torch.zeros(2, 11, dtype=torch.long)
    with pytest.raises(cm.SiteError, match="head 7"):
        run_patched(ad, x, [Patch(site, capture(ad, x, [site])[0])])


def test_bad_token_inputs_are_rejected_before_running(tiny_bridge):
    ad = cm.adapt(tiny_bridge)
    with pytest.raises(cm.InputError, match="vocabulary"):
        ad.check_inputs(torch.full((2, 11), 12))
    with pytest.raises(cm.InputError, match=r"\[batch, pos\]"):
        ad.check_inputs(torch.zeros(11, dtype=torch.long))
    with pytest.raises(cm.InputError, match="n_ctx"):
        ad.check_inputs(torch.zeros(2, 20, dtype=torch.long))
    with pytest.raises(cm.InputError, match="NaN"):
        ad.check_inputs(torch.tensor([[0.0, float("nan")]]))


def test_engines_agree_on_a_group_of_sites(tiny_bridge):
    ad = cm.adapt(tiny_bridge)
    g = torch.Generator().manual_seed(3)
    base, source = torch.randint(0, 12, (5, 11), generator=g), torch.randint(0, 12, (5, 11), generator=g)
    group = [
        cm.Site("blocks.0.attn.hook_z", (8,), head=1),
        cm.Site("blocks.0.attn.hook_z", (8,), head=3),
        cm.Site("blocks.1.hook_resid_pre", (9,)),
    ]
    via_pyvene = interchange_pyvene(ad, base, source, group)
    via_hooks = run_patched(ad, base, [Patch(s, v) for s, v in zip(group, capture(ad, source, group))])
    assert torch.allclose(via_pyvene, via_hooks, atol=1e-5)
