"""How the tasks' models are trained: the optimizer, and for TransformerLens models the forward pass.

Two trainers compute the same function (up to float rounding) and differ in cost:

* ``"bridge"``: the model's own forward, through every hook point of the
  ``TransformerBridge``, and PyTorch's default AdamW (one kernel per parameter on a CPU).
* ``"plain"``: :meth:`causalmad.models.TransformerLensAdapter.plain_logits` (no hook points,
  LayerNorm fused, the last block computed only at the positions the loss reads) and the
  fused AdamW kernel. On the tiny addition model (2 cores) a 128-row step takes about 25 ms
  instead of 42 ms.

Float rounding differs between the two, so the same seed trains different weights: the
full sizes keep ``"bridge"``, the trainer of the models the documented full-size benchmark
measured, until that benchmark is rerun.

For the Hugging Face BERT classifier of ``minilm-backdoor``, :func:`first_token_logits` plays
the plain trainer's part: the last layer is computed at the pooled first token only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

import causalmad as cm

TRAINERS = ("bridge", "plain")


def adamw(params: Iterable[torch.nn.Parameter], lr: float, fused: bool, weight_decay: float = 0.01
          ) -> torch.optim.AdamW:
    """Every task's optimizer: AdamW on ``params``, with PyTorch's fused kernel or its default one."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def training_setup(model: torch.nn.Module, trainer: str, lr: float
                   ) -> tuple[torch.optim.Optimizer, Callable[[torch.Tensor, int], torch.Tensor]]:
    """AdamW on ``model``'s parameters and ``logits_at(x, start)``: the logits of token
    ids ``x`` at positions ``start`` onwards, ``[n, pos - start, vocab]``."""
    if trainer == "bridge":
        return adamw(model.parameters(), lr, fused=False), lambda x, start: model(x)[:, start:]
    if trainer == "plain":
        adapter = cm.adapt(model)
        if not isinstance(adapter, cm.TransformerLensAdapter):
            raise cm.TaskError(f"The plain trainer needs a TransformerLens model, not {type(model).__name__}.")
        adapter.check_plain_logits()  # once, not every step
        return adamw(model.parameters(), lr, fused=True), adapter.unchecked_plain_logits
    raise cm.TaskError(f"Unknown trainer {trainer!r}; use one of {TRAINERS}.")


def first_token_logits(model: torch.nn.Module, input_ids: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """The logits ``[n, labels]`` of a Hugging Face BERT sequence classifier on token ids
    ``input_ids`` (padded with ``pad_id``), with its last encoder layer computed at the first
    token only.

    The classifier reads the pooled first token and nothing else, so the last layer needs
    that position's query, attention output and MLP alone (its keys and values still cover
    every position). The same function as ``model(input_ids, attention_mask).logits`` up to
    float rounding in eval mode, with the same gradients (``tests/test_minilm_backdoor.py``);
    in training mode it applies the model's dropouts to what it computes. A 32-row
    training step of the tiny MiniLM model is about 1.4x faster through it.
    """
    bert: Any = getattr(model, "bert", None)
    if bert is None or not hasattr(model, "classifier") or bert.pooler is None:
        raise cm.TaskError(f"first_token_logits needs a BertForSequenceClassification, not {type(model).__name__}.")
    keep = input_ids != pad_id
    h = bert.embeddings(input_ids=input_ids)
    # an additive mask over keys, as BERT's attention takes it: 0 where attended, very negative at padding
    mask = torch.zeros(keep.shape, dtype=h.dtype, device=h.device).masked_fill(~keep, torch.finfo(h.dtype).min)
    mask = mask[:, None, None, :]
    layers = bert.encoder.layer
    for layer in layers[:-1]:
        out = layer(h, attention_mask=mask)
        h = out[0] if isinstance(out, tuple) else out
    last = layers[-1]
    sa = last.attention.self
    n, p, heads, d = h.shape[0], h.shape[1], sa.num_attention_heads, sa.attention_head_size
    q = sa.query(h[:, :1]).view(n, 1, heads, d).transpose(1, 2)
    k = sa.key(h).view(n, p, heads, d).transpose(1, 2)
    v = sa.value(h).view(n, p, heads, d).transpose(1, 2)
    probs = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * getattr(sa, "scaling", d ** -0.5) + mask, dim=-1)
    ctx = torch.matmul(sa.dropout(probs), v).transpose(1, 2).reshape(n, 1, heads * d)
    a = last.attention.output(ctx, h[:, :1])
    first = last.output(last.intermediate(a), a)  # [n, 1, hidden]
    return model.classifier(model.dropout(bert.pooler(first)))  # type: ignore[operator]
