"""The Hugging Face adapter on a tiny random BERT classifier built offline from a config:
hook names, input checks before any forward pass, patching, resumed passes and pyvene."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import causalmad as cm
from causalmad.interventions import Patch, capture, interchange_pyvene, run_patched
from causalmad.scrubbing import _capture_raw

transformers = pytest.importorskip("transformers")

PAD = 0
SEQ = 10


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=2,
        pad_token_id=PAD,
        initializer_range=0.3,
    )  # wide init: patches visibly move logits
    return transformers.BertForSequenceClassification(cfg).eval()


def tokens(n: int, seed: int, pad_from: int | None = None) -> torch.Tensor:
    x = torch.randint(1, 40, (n, SEQ), generator=torch.Generator().manual_seed(seed))
    if pad_from is not None:
        x[: n // 2, pad_from:] = PAD  # half the rows padded
    return x


def test_adapt_picks_the_hugging_face_adapter_and_lists_bert_hooks(bert):
    adapter = cm.adapt(bert)
    assert isinstance(adapter, cm.HuggingFaceAdapter) and adapter.has_positions
    hooks = [h.name for h in adapter.candidate_hooks()]
    assert hooks[0] == "bert.embeddings"
    assert {
        "bert.encoder.layer.0.output",
        "bert.encoder.layer.2.attention.output.dense",
        "bert.encoder.layer.1.output.dense",
    } <= set(hooks)
    assert adapter.final_hook() == "bert.encoder.layer.2.output" == hooks[-1]
    assert "bert.encoder.layer.1.attention.self" in adapter.hook_names()
    assert adapter.head_width("bert.encoder.layer.1.attention.self") == 8
    assert adapter.head_width("bert.encoder.layer.1.output") == 0
    with pytest.raises(cm.SiteError, match="Did you mean"):
        adapter.module("bert.encoder.layer.1.outptu")


def test_forward_returns_classification_logits_and_ignores_padding(bert):
    adapter = cm.adapt(bert)
    x = tokens(4, 0, pad_from=6)
    out = adapter.forward(x)
    assert out.shape == (4, 2)
    # what sits at a padded position never changes the output: the mask comes from the pad id
    y = x.clone()
    y[:2, 6:] = PAD
    with torch.no_grad():
        short = bert(input_ids=x[:2, :6]).logits
        torch.testing.assert_close(adapter.forward(y)[:2], short, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(3, SEQ, 2, dtype=torch.long), "shape"),
        (torch.full((2, 20), 3), "max_position_embeddings"),
        (torch.full((2, SEQ), 40), "vocabulary"),
        (torch.full((2, SEQ), -1), "vocabulary"),
        (torch.full((2, SEQ), 2.5), "integer token ids"),
        (torch.tensor([[5, 6, 0], [0, 0, 0]]), "pad id"),
        (torch.empty(0, SEQ, dtype=torch.long), "empty"),
    ],
)
def test_bad_inputs_are_rejected_before_any_forward_pass(bert, bad, match):
    adapter = cm.adapt(bert)
    calls = []
    handle = bert.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(cm.InputError, match=match):
            adapter.check_inputs(bad)
        with pytest.raises(cm.InputError, match=match):
            cm.MahalanobisDetector(bert).fit(bad)
    finally:
        handle.remove()
    assert not calls


def test_a_model_without_a_pad_id_or_bert_layers_is_refused():
    cfg = transformers.BertConfig(
        vocab_size=20,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        pad_token_id=None,
    )
    with pytest.raises(cm.InputError, match="pad_token_id"):
        cm.HuggingFaceAdapter(transformers.BertForSequenceClassification(cfg))
    assert (
        cm.HuggingFaceAdapter(transformers.BertForSequenceClassification(cfg), pad_token_id=0).pad_token_id
        == 0
    )
    gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=20))
    with pytest.raises(cm.InputError, match="BERT-family"):
        cm.HuggingFaceAdapter(gpt)
    assert isinstance(cm.adapt(gpt), cm.HuggingFaceCausalLMAdapter)  # a decoder: tests/test_hf_causal_lm.py


class Classifier(torch.nn.Module):
    """A BERT-style classifier of one's own: the encoder under ``encoder``, not ``bert``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        cfg = transformers.BertConfig(
            vocab_size=40,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=16,
            pad_token_id=PAD,
            initializer_range=0.3,
        )
        self.encoder = transformers.BertModel(cfg, add_pooling_layer=False)
        self.head = torch.nn.Linear(16, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(
            self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        )


def test_a_bert_encoder_under_another_name_is_found_by_its_structure():
    model = Classifier().eval()
    adapter = cm.adapt(model)
    assert isinstance(adapter, cm.HuggingFaceAdapter) and adapter.base == "encoder"
    assert (
        adapter.pad_token_id == PAD and adapter.n_layers == 2 and adapter.d_head == 8
    )  # the encoder's config
    hooks = [h.name for h in adapter.candidate_hooks()]
    assert (
        hooks[0] == "encoder.embeddings"
        and adapter.final_hook() == "encoder.encoder.layer.1.output" == hooks[-1]
    )
    x = tokens(8, 9, pad_from=6)
    torch.testing.assert_close(adapter.forward(x), model(x, (x != PAD).long()))
    det = cm.MahalanobisDetector(model, random_state=0).fit(tokens(40, 10, pad_from=7))
    assert np.isfinite(det.score(x)).all()


def test_a_model_without_a_bert_encoder_is_refused_naming_what_was_looked_for():
    class Almost(torch.nn.Module):  # embeddings, and a module list, but not where an encoder keeps them
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = torch.nn.Embedding(10, 4)
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4)])

    with pytest.raises(
        cm.InputError,
        match=r"'embeddings' submodule and a module list 'encoder.layer'.*Almost has "
        r"none in any of its modules \(modules named 'embeddings': 'embeddings'; module lists: "
        r"'blocks'\)",
    ):
        cm.HuggingFaceAdapter(Almost())
    with pytest.raises(cm.InputError, match="encoder='head'"):
        cm.HuggingFaceAdapter(Classifier(), encoder="head")


def test_patching_a_layer_output_with_the_source_run_gives_the_source_logits(bert):
    adapter = cm.adapt(bert)
    base, source = tokens(6, 1), tokens(6, 2)
    last = adapter.final_hook()
    with torch.no_grad():
        # the whole last residual stream from the source: the classifier then sees the source
        whole = cm.Site(last)
        out = run_patched(adapter, base, [Patch(whole, capture(adapter, source, [whole])[0])])
        torch.testing.assert_close(out, adapter.forward(source), rtol=1e-4, atol=1e-4)
        # the classifier reads the first token only: patching position 0 alone does the same,
        # patching every other position changes nothing
        first = cm.Site(last, positions=(0,))
        out = run_patched(adapter, base, [Patch(first, capture(adapter, source, [first])[0])])
        torch.testing.assert_close(out, adapter.forward(source), rtol=1e-4, atol=1e-4)
        rest = cm.Site(last, positions=tuple(range(1, SEQ)))
        out = run_patched(adapter, base, [Patch(rest, capture(adapter, source, [rest])[0])])
        torch.testing.assert_close(out, adapter.forward(base), rtol=1e-5, atol=1e-5)
        # earlier, a patch at one position moves the logits
        mid = cm.Site("bert.encoder.layer.0.output", positions=(3,))
        out = run_patched(adapter, base, [Patch(mid, capture(adapter, source, [mid])[0])])
        assert (out - adapter.forward(base)).abs().max() > 1e-3


def test_per_example_positions_and_heads_patch_through_pyvene_as_through_hooks(bert):
    adapter = cm.adapt(bert)
    base, source = tokens(6, 3, pad_from=7), tokens(6, 4, pad_from=5)

    def last_real(ex: torch.Tensor) -> list[int]:
        return [int((ex != PAD).sum()) - 1]

    for site in [
        cm.Site("bert.encoder.layer.1.output", positions=last_real),
        cm.Site("bert.encoder.layer.1.attention.self", positions=(2, 4), head=1),
        cm.Site("bert.encoder.layer.0.output.dense", positions=(1,)),
    ]:
        with torch.no_grad():
            via_pyvene = interchange_pyvene(adapter, base, source, site)
            via_hooks = run_patched(adapter, base, [Patch(site, capture(adapter, source, [site])[0])])
        torch.testing.assert_close(via_pyvene, via_hooks, rtol=1e-5, atol=1e-5)
        assert (via_hooks - adapter.run(base)).abs().max() > 1e-2


@pytest.mark.parametrize("layer", [0, 1])
def test_run_from_a_layer_output_equals_the_full_forward_with_padding(bert, layer):
    adapter = cm.adapt(bert)
    x = tokens(6, 5, pad_from=4)
    point = f"bert.encoder.layer.{layer}.output"
    assert (
        adapter.resume_point(
            [f"bert.encoder.layer.{layer + 1}.output", "bert.encoder.layer.2.attention.self"]
        )
        == point
    )
    assert adapter.resume_point(["bert.encoder.layer.0.output"]) is None
    assert adapter.resume_point(["bert.embeddings"]) is None
    with torch.no_grad():
        resumed = adapter.run_from(point, _capture_raw(adapter, x, [point])[0], x)
        torch.testing.assert_close(resumed, adapter.forward(x), rtol=1e-5, atol=1e-5)


def test_batched_scrubbing_with_resumed_passes_matches_the_straightforward_engine(bert):
    from causalmad.explanations import hypothesis_free_explanations
    from causalmad.scrubbing import SourcePool, clean_log_probs, scrub, scrub_many

    adapter = cm.adapt(bert)
    pool_x, x = tokens(60, 6, pad_from=8), tokens(20, 7, pad_from=6)
    pool = SourcePool(adapter, pool_x, None)
    family = hypothesis_free_explanations(adapter, pool, SEQ, positions=[0, 5])
    assert {adapter.resume_point([s.hook for s in e.sites]) for e in family} >= {
        None,
        "bert.encoder.layer.0.output",
        "bert.encoder.layer.1.output",
    }
    readouts, values = [cm.Readout()], [{} for _ in range(len(x))]
    clean = clean_log_probs(adapter, x, readouts)
    ref = np.stack(
        [scrub(adapter, e, x, values, clean, pool, readouts, 3, seed=0, batch_size=17)[0] for e in family], 1
    )
    div, _ = scrub_many(adapter, family, x, values, clean, pool, readouts, 3, seed=0, batch_size=50)
    np.testing.assert_allclose(div, ref, rtol=1e-4, atol=1e-6)
    assert (div > 0).any()


def test_scrubbing_on_a_simulated_accelerator_matches_the_cpu(bert):
    """The adapter's resumed passes (attention masks, positions) build nothing on the host
    that meets device tensors: checked on the accelerator simulated on the CPU."""
    import copy

    from causalmad.explanations import hypothesis_free_explanations
    from causalmad.scrubbing import SourcePool, clean_log_probs, scrub_many
    from causalmad.simulated_device import DEVICE, simulated_device

    pool_x, x = tokens(60, 6, pad_from=8), tokens(20, 7, pad_from=6)
    readouts, values = [cm.Readout()], [{} for _ in range(len(x))]
    out = []
    for device in ("cpu", DEVICE):
        with simulated_device():
            adapter = cm.adapt(copy.deepcopy(bert).to(device))
            pool = SourcePool(adapter, pool_x, None)
            family = hypothesis_free_explanations(adapter, pool, SEQ, positions=[0, 5])
            clean = clean_log_probs(adapter, x, readouts)
            out.append(
                scrub_many(adapter, family, x, values, clean, pool, readouts, 3, seed=0, batch_size=50)[0]
            )
    np.testing.assert_allclose(out[1], out[0], rtol=1e-4, atol=1e-6)
