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
measured, until that benchmark is rerun (and so does the tiny token addition backdoor; see
``tasks/addition_backdoor.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import causalmad as cm

TRAINERS = ("bridge", "plain")


def adamw(model: torch.nn.Module, lr: float, fused: bool, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """Every task's optimizer: AdamW, with PyTorch's fused kernel or its default one."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused or None)


def training_setup(model: torch.nn.Module, trainer: str, lr: float
                   ) -> tuple[torch.optim.Optimizer, Callable[[torch.Tensor, int], torch.Tensor]]:
    """AdamW on ``model``'s parameters and ``logits_at(x, start)``: the logits of token
    ids ``x`` at positions ``start`` onwards, ``[n, pos - start, vocab]``."""
    if trainer == "bridge":
        return adamw(model, lr, fused=False), lambda x, start: model(x)[:, start:]
    if trainer == "plain":
        adapter = cm.adapt(model)
        if not isinstance(adapter, cm.TransformerLensAdapter):
            raise cm.TaskError(f"The plain trainer needs a TransformerLens model, not {type(model).__name__}.")
        adapter.check_plain_logits()  # once, not every step
        return adamw(model, lr, fused=True), adapter.unchecked_plain_logits
    raise cm.TaskError(f"Unknown trainer {trainer!r}; use one of {TRAINERS}.")
