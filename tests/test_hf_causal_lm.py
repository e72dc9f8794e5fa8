"""Decoder-only causal language models through the Hugging Face adapter: tiny random GPT-2,
Llama and GPT-NeoX models built offline from configs, found by structure, left padding
read at the last token, and detectors fitted on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import causalmad as cm

transformers = pytest.importorskip("transformers")

PAD, VOCAB, SEQ = 0, 24, 8


def gpt2() -> torch.nn.Module:
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=16,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=1,
        initializer_range=0.2,
    )
    return transformers.GPT2LMHeadModel(cfg)


def llama() -> torch.nn.Module:
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=1,
    )
    return transformers.LlamaForCausalLM(cfg)


def neox() -> torch.nn.Module:
    cfg = transformers.GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=1,
    )
    return transformers.GPTNeoXForCausalLM(cfg)


ARCHITECTURES = {
    "gpt2": (gpt2, "transformer.h", "transformer.wte", "attn"),
    "llama": (llama, "model.layers", "model.embed_tokens", "self_attn"),
    "gpt-neox": (neox, "gpt_neox.layers", "gpt_neox.embed_in", "attention"),
}


def tokens(n: int, seed: int, high: int = 12) -> torch.Tensor:
    return torch.randint(2, high, (n, SEQ), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_each_architecture_is_found_by_structure_and_left_padding_reads_the_last_token(arch):
    build, layers, embed, attn = ARCHITECTURES[arch]
    torch.manual_seed(0)
    model = build().eval()
    adapter = cm.adapt(model)
    assert isinstance(adapter, cm.HuggingFaceCausalLMAdapter) and adapter.n_layers == 2
    hooks = [(h.name, h.component) for h in adapter.candidate_hooks()]
    assert hooks[0] == (embed, "resid_pre") and hooks[-1] == (f"{layers}.1", "resid_post") == (
        adapter.final_hook(),
        "resid_post",
    )
    assert (f"{layers}.0.{attn}", "attn_out") in hooks and (f"{layers}.1.mlp", "mlp_out") in hooks
    x = tokens(3, 1)
    logits = adapter.forward(x)
    assert logits.shape == (3, SEQ, VOCAB)
    padded = torch.cat([torch.full((3, 3), PAD), x], 1)  # left padding: the last token stays at -1
    torch.testing.assert_close(adapter.forward(padded)[:, -1], logits[:, -1], rtol=1e-4, atol=1e-4)
    site = cm.Site(adapter.final_hook(), positions=(-1,))
    from causalmad.interventions import capture

    assert capture(adapter, x, [site])[0].shape == (3, 1, 32)
    with pytest.raises(cm.InputError, match="vocabulary"):
        adapter.check_inputs(torch.full((2, SEQ), VOCAB))


def test_detectors_fit_on_a_tiny_gpt2_and_find_a_planted_token():
    torch.manual_seed(0)
    model = gpt2().eval()
    trusted = tokens(400, 2)
    normal, odd = tokens(40, 3), tokens(40, 4)
    odd[:, -1] = 20  # a last token trusted inputs never end with
    x, labels = torch.cat([normal, odd]), np.r_[np.zeros(40), np.ones(40)]
    maha = cm.MahalanobisDetector(model, random_state=0).fit(trusted)
    assert roc_auc_score(labels, maha.score(x)) > 0.9
    scrub = cm.ScrubbingDetector(
        model, hypothesis=None, resamples=1, input_cut=(), das_rank=None, random_state=0
    ).fit(trusted)
    scores = scrub.score(x)
    assert scores.shape == (80,) and np.isfinite(scores).all()
    assert roc_auc_score(labels, scores) > 0.8


def tiny_gpt2() -> torch.nn.Module:
    """``--model`` for the command line: the tiny GPT-2, seeded."""
    torch.manual_seed(0)
    return gpt2().eval()


def test_the_command_line_fits_and_scores_a_causal_lm_on_token_ids(tmp_path):
    import json
    from pathlib import Path

    from causalmad.cli import main

    model = ["--model", f"{Path(__file__)}:tiny_gpt2"]
    (tmp_path / "trusted.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tokens(400, 2).tolist()))
    x = tokens(20, 3)
    x[10:, -1] = 20
    (tmp_path / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in x.tolist()))
    fit = ["fit", *model, "--detector", "mahalanobis", "--trusted", str(tmp_path / "trusted.jsonl")]
    assert main([*fit, "--out", str(tmp_path / "det"), "--quiet"]) == 0
    assert json.loads((tmp_path / "det" / "config.json").read_text())["input_dtype"] == "int64"
    out = tmp_path / "s.jsonl"
    assert (
        main(
            ["score", str(tmp_path / "det"), str(tmp_path / "x.jsonl"), *model, "--out", str(out), "--quiet"]
        )
        == 0
    )
    flags = [json.loads(line)["flagged"] for line in out.read_text().splitlines()]
    assert all(flags[10:]) and not any(flags[:10])
