"""How the tasks' models are trained: the optimizer, and for TransformerLens models the forward pass.

Two trainers compute the same function (up to float rounding) and differ in cost:

* ``"bridge"``: the model's own forward, through every hook point of the
  ``TransformerBridge``, and PyTorch's default AdamW (one kernel per parameter on a CPU).
* ``"plain"``:
  [`causalmad.models.TransformerLensAdapter.plain_logits`][causalmad.TransformerLensAdapter.plain_logits]
  (no hook points, LayerNorm fused, the last block computed only at the positions the loss
  reads) and the fused AdamW kernel. On the tiny addition model (2 cores) a 128-row step
  takes about 25 ms instead of 42 ms.

Float rounding differs between the two, so the same seed trains different weights: the
full sizes keep ``"bridge"``, the trainer of the models the documented full-size benchmark
measured, until that benchmark is rerun.

For the Hugging Face BERT classifier of ``minilm-backdoor``, ``first_token_logits`` plays
the plain trainer's part: the last layer is computed at the pooled first token only.

Every task model is trained to a *specification* (``train_to_spec``): the task states
what its model must do as ``Criterion`` floors measured on held-out data (clean
accuracy, attack success, the hard split's defining property). A fixed step count does not
guarantee them: float rounding differs between CPUs, thread counts and package versions, and
so does the model one seed trains. After the task's own schedule the criteria are checked;
while one is unmet, training goes on in further short one-cycle rounds, within a bounded
budget; if the budget runs out, task construction stops with an error that names the unmet
criterion. A model that meets its criteria after the schedule is bitwise the one the
schedule alone trains (the check draws no random numbers from the training stream).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

import causalmad as cm

TRAINERS = ("bridge", "plain")


def adamw(
    params: Iterable[torch.nn.Parameter], lr: float, fused: bool, weight_decay: float = 0.01
) -> torch.optim.AdamW:
    """Every task's optimizer: AdamW on ``params``, with PyTorch's fused kernel or its default one."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def training_setup(
    model: torch.nn.Module, trainer: str, lr: float
) -> tuple[torch.optim.Optimizer, Callable[[torch.Tensor, int], torch.Tensor]]:
    """AdamW on ``model``'s parameters and ``logits_at(x, start)``: the logits of token
    ids ``x`` at positions ``start`` onwards, ``[n, pos - start, vocab]``."""
    if trainer == "bridge":
        return adamw(model.parameters(), lr, fused=False), lambda x, start: model(x)[:, start:]
    if trainer == "plain":
        adapter = cm.adapt(model)
        if not isinstance(adapter, cm.TransformerLensAdapter):
            raise cm.TaskError(
                f"The plain trainer needs a TransformerLens model, not {type(model).__name__}."
            )
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
        raise cm.TaskError(
            f"first_token_logits needs a BertForSequenceClassification, not {type(model).__name__}."
        )
    keep = input_ids != pad_id
    h = bert.embeddings(input_ids=input_ids)
    # an additive mask over keys, as BERT's attention takes it: 0 where attended, very negative at padding
    mask = torch.zeros(keep.shape, dtype=h.dtype, device=h.device).masked_fill(
        ~keep, torch.finfo(h.dtype).min
    )
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
    probs = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * getattr(sa, "scaling", d**-0.5) + mask, dim=-1)
    ctx = torch.matmul(sa.dropout(probs), v).transpose(1, 2).reshape(n, 1, heads * d)
    a = last.attention.output(ctx, h[:, :1])
    first = last.output(last.intermediate(a), a)  # [n, 1, hidden]
    return model.classifier(model.dropout(bert.pooler(first)))  # type: ignore[operator]


@dataclass(frozen=True)
class Criterion:
    """What a task's model must do: ``measure()[name] >= floor`` on held-out data.

    ``meaning`` says it in words, for the error raised when training cannot meet it."""

    name: str
    floor: float
    meaning: str


# When a criterion is unmet, at most EXTRA_ROUNDS further rounds, each a one-cycle schedule
# of ROUND_FRACTION of the schedule's steps (at most 2x its steps in all) that warms up to
# ROUND_LR of its peak learning rate again: a warm restart (Loshchilov & Hutter, "SGDR",
# ICLR 2017). At half the peak, the tiny low-poison backdoor of seed 2 (2 threads) ended
# four rounds at 0.785 attack success; at the full peak it met 0.95 after three.
EXTRA_ROUNDS = 4
ROUND_FRACTION = 0.25
ROUND_LR = 1.0


def train_to_spec(
    task: str,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    step: Callable[[], Any],
    steps: int,
    lr: float,
    criteria: Sequence[Criterion],
    measure: Callable[[], dict[str, float]],
    pct_start: float = 0.1,
) -> tuple[torch.nn.Module, float, dict[str, Any]]:
    """Train ``model`` until it meets ``criteria``: ``(model, seconds, record)``.

    ``step()`` takes one optimisation step (batch, loss, backward, ``opt.step()``). The
    schedule is ``steps`` steps of a one-cycle learning rate peaking at ``lr``. Then
    ``measure()`` (called in eval mode, without gradients) gives each criterion's value;
    while one is below its floor, another round of ``ROUND_FRACTION * steps`` steps runs at
    peak ``ROUND_LR * lr``, at most ``EXTRA_ROUNDS`` times. ``record`` holds the criteria,
    the values measured last, the steps taken and the values after each round (``history``);
    it is saved beside the cached model.

    Raises:
        TaskError: a criterion is still unmet when the budget is spent; the message names it,
            its value and its floor.
    """
    start = time.perf_counter()
    # a round is a one-cycle schedule of its own: at least 20 steps, so that its warm-up has a step
    rounds = [(steps, lr)] + [(max(20, round(ROUND_FRACTION * steps)), ROUND_LR * lr)] * EXTRA_ROUNDS
    taken, values, unmet, history = 0, {}, list(criteria), []
    for r, (n, peak) in enumerate(rounds):
        model.train()
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak, total_steps=n, pct_start=pct_start)
        what = f"training {task}" + (f" (extra round {r} of at most {EXTRA_ROUNDS})" if r else "")
        with cm.progress_bar(n, what, unit="step") as bar:  # shown inside cm.show_progress(), as the CLI does
            for _ in range(n):
                step()
                sched.step()
                bar.update(1)
        taken += n
        model.eval()
        with torch.no_grad():
            values = {k: float(v) for k, v in measure().items()}
        history.append({"steps": taken, **{c.name: round(values[c.name], 4) for c in criteria}})
        unmet = [c for c in criteria if values[c.name] < c.floor]
        if not unmet:
            break
    seconds = time.perf_counter() - start
    if unmet:
        raise cm.TaskError(
            f"Task {task!r}: after {taken} training steps (the schedule's {steps} and {EXTRA_ROUNDS} further "
            "rounds) the model misses its specification: "
            + "; ".join(f"{c.name} = {values[c.name]:.3f} < {c.floor} ({c.meaning})" for c in unmet)
            + ". Nothing was cached; try another seed, or report it with `causalmad.environment()`'s output."
        )
    record = {
        "criteria": {
            c.name: {"floor": c.floor, "value": round(values[c.name], 4), "meaning": c.meaning}
            for c in criteria
        },
        "steps": taken,
        "extra_rounds": len(history) - 1,
        "history": history,
    }
    return model, seconds, record
