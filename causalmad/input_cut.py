"""The hypothesis at the input cut: hybrids of an input and trusted inputs, checked with
the hypothesis itself before any forward pass.

The earliest place to test a hypothesis is the input. Its input variables say where they
live in the input (``Hypothesis.add_input(..., at=...)``: token positions, or an index
into a tensor example), or the hypothesis declares the input's parts
(``Hypothesis.set_input_parts``); for token inputs that say nothing, every position is a
part, and an image is cut into a grid of blocks (``part_masks``). A *subset* of parts
is tested in two directions (Chan et al., "Causal Scrubbing", 2022: resampling part of the
input with every downstream hypothesis value fixed is the sharpest test of a hypothesis):

* **base** (``x`` as the base): the parts in the subset are taken from a trusted source
  such that the hybrid's hypothesis values are all ``x``'s (a hybrid on which the
  hypothesis' mechanisms raise is no hybrid). The hypothesis says the
  model's output cannot change; the divergence is ``KL(f(x) || f(hybrid))`` on the
  readouts, averaged over the sources found (NaN if none of the candidates keeps every
  value; a source that shares ``x``'s parts there makes no hybrid). A model that, on
  ``x``, uses something in those parts that the hypothesis ignores (a trigger) changes its
  output.
* **dual** (``x`` as the source): ``x``'s parts in the subset are placed into trusted
  base inputs. The hypothesis predicts each hybrid's output; the divergence is the
  model's negative log-likelihood of that prediction, averaged over bases. A trigger
  carried into a trusted base fires there and the model departs from the prediction
  even when, on ``x`` itself, the trigger's answer happened to equal the clean one
  (input-level versions of this are how STRIP and SentiNet catch backdoored images).

Subsets: every singleton, every complement of one part, every pair, then seeded random
larger subsets, up to a budget (``subsets``). Every source or base is drawn from the
pool with a seed that depends only on the input's bytes, so a score does not depend on the
batch it is computed in.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch

from causalmad.errors import HypothesisError
from causalmad.hypothesis import Hypothesis, Readout
from causalmad.models import ModelAdapter
from causalmad.scrubbing import counterfactual_nll, draws, kl_divergence, reduce_resamples

Values = list[dict[str, Hashable]]
DIRECTIONS = ("base", "dual")


#: a float example of two or more axes (an image) is cut into a ``GRID x GRID`` grid of
#: blocks over its last two axes when nothing says where its parts are
GRID = 4


def _mask(shape: tuple[int, ...], name: str, at: Any, what: str) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    try:
        mask[at] = True
    except (IndexError, TypeError, ValueError) as exc:
        raise HypothesisError(
            f"{what} {name!r}: at={at!r} is not an index of an example of shape {shape} ({exc})."
        ) from None
    return mask


def part_masks(hypothesis: Hypothesis | None, example: torch.Tensor) -> tuple[list[str], np.ndarray]:
    """The input's parts: names and ``[P, *example.shape]`` boolean masks, from the first
    of these that applies:

    1. the parts the hypothesis declares
    ([`Hypothesis.set_input_parts`][causalmad.Hypothesis.set_input_parts]); 2. its input
    variables, when every one says where it lives (``at``), plus a part
       ``"rest"`` for what none of them reads;
    3. token ids (a 1-D integer example): one part per position;
    4. a float example of two or more axes (an image): a ``GRID`` x ``GRID``
       grid of blocks over its last two axes (all leading axes, such as channels, in
       every block);

    else none.

    Raises:
        HypothesisError: a part's or an input variable's ``at`` is not an index of the example.
    """
    shape = tuple(example.shape)
    declared = hypothesis.input_parts() if hypothesis is not None else {}
    if declared:
        return list(declared), np.stack([_mask(shape, n, at, "Input part") for n, at in declared.items()])
    located = hypothesis.locations() if hypothesis is not None else {}
    if hypothesis is not None and located and len(located) == len(hypothesis.inputs):
        names = list(located)
        masks = [_mask(shape, n, at, "Input variable") for n, at in located.items()]
        rest = ~np.any(masks, 0)
        if rest.any():  # what no input variable reads: the hypothesis claims it does not matter
            names.append("rest")
            masks.append(rest)
        return names, np.stack(masks)
    if len(shape) == 1 and not torch.is_floating_point(example):
        return [f"pos {p}" for p in range(shape[0])], np.eye(shape[0], dtype=bool)
    if len(shape) >= 2 and torch.is_floating_point(example):
        rows, cols = (np.array_split(np.arange(n), min(GRID, n)) for n in shape[-2:])
        names, masks = [], []
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                mask = np.zeros(shape, dtype=bool)
                mask[..., r[0] : r[-1] + 1, c[0] : c[-1] + 1] = True
                names.append(f"block {i},{j}")
                masks.append(mask)
        return names, np.stack(masks)
    return [], np.zeros((0, *shape), dtype=bool)


def subsets(n_parts: int, budget: int, seed: int) -> list[tuple[int, ...]]:
    """Subsets of ``range(n_parts)`` to test: singletons, complements of one, pairs, then
    seeded random subsets of 3 .. n-2 parts, at most ``budget`` in all (singletons and
    complements first; pairs and larger subsets sampled when they do not all fit)."""
    if n_parts == 0 or budget <= 0:
        return []
    everything = tuple(range(n_parts))
    out: list[tuple[int, ...]] = [(i,) for i in everything]
    if n_parts > 2:
        out += [tuple(j for j in everything if j != i) for i in everything]
    out = out[:budget]
    rng = np.random.default_rng(seed)
    pairs = list(itertools.combinations(everything, 2)) if n_parts > 3 else []
    room = budget - len(out)
    if room > 0 and pairs:
        pick = rng.permutation(len(pairs))[:room] if len(pairs) > room else range(len(pairs))
        out += [pairs[i] for i in sorted(pick)]
    seen, tries = set(out), 0
    while len(out) < budget and n_parts > 4 and tries < 20 * budget:
        tries += 1
        size = int(rng.integers(3, n_parts - 1))
        s = tuple(sorted(rng.choice(n_parts, size=size, replace=False).tolist()))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


#: inputs whose hybrids meet the hypothesis in one call (``hybrids``)
CHUNK = 64


def _classes(outputs: Sequence[str], values: dict[str, Hashable]) -> list[int]:
    return [int(values[o]) for o in outputs]  # type: ignore[call-overload]


def _forward(
    adapter: ModelAdapter, rows: torch.Tensor, readouts: Sequence[Readout], batch_size: int
) -> list[torch.Tensor]:
    return adapter.run_readouts(rows, readouts, batch_size)


def scrub_input_cut(
    adapter: ModelAdapter,
    hypothesis: Hypothesis,
    readouts: Sequence[Readout],
    masks: np.ndarray,
    directions: Sequence[str],
    inputs: torch.Tensor,
    values: Values,
    keys: np.ndarray,
    pool_inputs: torch.Tensor,
    pool_keys: np.ndarray,
    resamples: int,
    seed: int = 0,
    batch_size: int = 1024,
    candidates: int = 4,
    dual_resamples: int | None = None,
    statistic: str = "mean",
) -> tuple[np.ndarray, np.ndarray]:
    """Divergences of every input under every input-cut scrub.

    Args:
        masks: ``[S, *example shape]`` the parts each scrub takes from the other input.
        directions: ``"base"`` or ``"dual"`` per scrub (see the module docstring).
        values: each input's hypothesis values; ``keys``: ``causalmad.scrubbing.row_keys``.
        pool_inputs, pool_keys: the trusted inputs sources and bases are drawn from.
        resamples: ``K``, sources (base) or bases (dual) per input and scrub.
        candidates: a base scrub tries ``candidates * K`` sources for ``K`` that keep
            every hypothesis value of the input.
        dual_resamples: bases per input and dual scrub (default ``resamples``).
        statistic: how an input's hybrids' divergences are reduced to one
            (``causalmad.scrubbing.reduce_resamples``; default the mean).

    Returns:
        ``[n, S]`` divergences (NaN where a base scrub found no source keeping the values)
        and ``[n, S]`` the share of the hybrids on which the model's answer is the one the
        hypothesis predicts (dual; NaN for base scrubs).
    """
    n, n_scrubs = len(inputs), len(masks)
    div = np.full((n, n_scrubs), np.nan)
    agree = np.full((n, n_scrubs), np.nan)
    if n == 0 or n_scrubs == 0:
        return div, agree
    # f(x) at the readouts, which base scrubs compare with (dual scrubs compare with the hypothesis)
    clean = _forward(adapter, inputs, readouts, batch_size) if "base" in directions else []
    for s, direction in enumerate(directions):
        k = resamples if direction == "base" or dual_resamples is None else dual_resamples
        rows, owner, classes = hybrids(
            hypothesis, masks[s], direction, inputs, values, keys, pool_inputs, pool_keys, k, seed, candidates
        )
        if not owner:
            continue
        scrubbed = _forward(adapter, torch.cat(rows), readouts, batch_size)
        who = torch.as_tensor(owner)
        if direction == "dual":
            cls = np.asarray(classes, dtype=np.int64)
            cell = counterfactual_nll(scrubbed, cls)
            hit = torch.stack(
                [q.argmax(-1) == torch.as_tensor(cls[:, r]) for r, q in enumerate(scrubbed)]
            ).all(0)
            agree[:, s] = _reduce_by(hit.double(), owner, n, "mean")
        else:
            cell = kl_divergence([c[who] for c in clean], scrubbed)
        div[:, s] = _reduce_by(cell.double(), owner, n, statistic)
    return div, agree


def hybrids(
    hypothesis: Hypothesis,
    mask: np.ndarray,
    direction: str,
    inputs: torch.Tensor,
    values: Values,
    keys: np.ndarray,
    pool_inputs: torch.Tensor,
    pool_keys: np.ndarray,
    k: int,
    seed: int = 0,
    candidates: int = 4,
    stop_after: int | None = None,
) -> tuple[list[torch.Tensor], list[int], list[list[int]]]:
    """The hybrids of one input-cut scrub (parts ``mask``, in ``direction``): up to ``k``
    per input, as ``rows`` (``[1, ...]`` each), the input each belongs to, and (dual) the
    output classes the hypothesis predicts for each. A base hybrid takes
    ``mask``'s parts from one of ``candidates * k`` drawn trusted sources and is kept
    where every inner hypothesis value stays the input's; a dual hybrid puts the input's
    parts into a drawn trusted base and is kept where the hypothesis is defined on it.
    ``stop_after``: return once that many inputs have a hybrid."""
    m = torch.as_tensor(mask)
    inner = [v for v in hypothesis.variables if v not in set(hypothesis.inputs)]
    outputs = hypothesis.outputs  # once: it walks the graph
    want = k if direction == "dual" else candidates * k
    # seeded by what the scrub is, not by its place in a list (which screening changes)
    tag = hashlib.sha256(np.ascontiguousarray(mask).tobytes()).hexdigest()[:16]
    picks = draws(keys, f"{seed}|input-cut|{direction}|{tag}", want + 1) % np.uint64(len(pool_inputs))
    rows: list[torch.Tensor] = []
    owner: list[int] = []
    classes: list[list[int]] = []
    # inputs a chunk at a time, so that a batched input mechanism (a reference classifier's
    # predict) meets a chunk's hybrids in one call (``Hypothesis.values_rows``); a hybrid
    # the hypothesis is not defined on (a sentence with no sentiment word, two operators)
    # makes no hybrid
    chunk = CHUNK if stop_after is None else max(1, min(CHUNK, stop_after))
    for lo in range(0, len(inputs), chunk):
        if stop_after is not None and len(set(owner)) >= stop_after:
            break
        idx = range(lo, min(lo + chunk, len(inputs)))
        others = {i: [int(j) for j in picks[i] if pool_keys[j] != keys[i]][:want] for i in idx}
        if direction == "dual":
            made = torch.cat([torch.where(m, inputs[i], pool_inputs[others[i]]) for i in idx])
            who = [i for i in idx for _ in others[i]]
            for i, h, hv in zip(who, made, hypothesis.values_rows(made, undefined="none")):
                if hv is not None:
                    rows.append(h[None])
                    owner.append(i)
                    classes.append(_classes(outputs, hv))
            continue
        # base: an input's sources in their drawn order until ``k`` keep every inner value,
        # evaluated in rounds (the r-th source of every input still short of ``k``)
        found: dict[int, list[torch.Tensor]] = {i: [] for i in idx}
        for r in range(want):
            short = [i for i in idx if len(found[i]) < k and r < len(others[i])]
            if not short:
                break
            made = torch.stack([torch.where(m, pool_inputs[others[i][r]], inputs[i]) for i in short])
            # a source that shares these parts makes no intervention
            new = [j for j, i in enumerate(short) if not torch.equal(made[j], inputs[i])]
            if not new:
                continue
            for j, hv in zip(new, hypothesis.values_rows(made[new], undefined="none")):
                i = short[j]
                if hv is not None and all(hv[v] == values[i][v] for v in inner):
                    found[i].append(made[j][None])
        for i in idx:
            rows += found[i]
            owner += [i] * len(found[i])
    return rows, owner, classes


def testable(
    hypothesis: Hypothesis,
    masks: np.ndarray,
    directions: Sequence[str],
    inputs: torch.Tensor,
    values: Values,
    keys: np.ndarray,
    pool_inputs: torch.Tensor,
    pool_keys: np.ndarray,
    k: int,
    seed: int = 0,
    candidates: int = 4,
    share: float = 0.1,
) -> np.ndarray:
    """``[S]`` whether each scrub makes a hybrid for at least ``share`` of ``inputs``,
    found without a forward pass: a base scrub of parts that every inner value depends on
    (one operand digit, when the hypothesis computes the digit sums) keeps no hybrid on
    any input, and searching its sources for every calibration input would be most of the
    input cut's cost."""
    need = max(1, int(np.ceil(share * len(inputs))))
    return np.array(
        [
            len(
                set(
                    hybrids(
                        hypothesis,
                        masks[s],
                        d,
                        inputs,
                        values,
                        keys,
                        pool_inputs,
                        pool_keys,
                        k,
                        seed,
                        candidates,
                        stop_after=need,
                    )[1]
                )
            )
            >= need
            for s, d in enumerate(directions)
        ],
        dtype=bool,
    )


def _reduce_by(cells: torch.Tensor, owner: list[int], n: int, statistic: str) -> np.ndarray:
    """Per-input ``statistic`` of ``cells`` grouped by ``owner`` (ascending: hybrids are
    made input by input), NaN for inputs with no cell."""
    out = np.full(n, np.nan)
    values = cells.cpu().numpy()
    who = np.asarray(owner)
    starts = np.flatnonzero(np.r_[True, who[1:] != who[:-1]])
    for st, en in zip(starts, np.r_[starts[1:], len(who)]):
        out[who[st]] = reduce_resamples(values[None, st:en], statistic)[0]
    return out


def describe(part_names: Sequence[str], subset: Sequence[int], direction: str) -> str:
    """A scrub's readable name."""
    parts = ", ".join(part_names[i] for i in subset)
    return f"input cut ({direction}): {'x' if direction == 'dual' else 'trusted'} at {parts}"


def build(
    hypothesis: Hypothesis,
    example: torch.Tensor,
    budget: int,
    seed: int,
    directions_wanted: Sequence[str] = DIRECTIONS,
) -> dict[str, Any]:
    """The input-cut scrubs to search: ``{"names", "masks", "directions"}`` (each of
    ``directions_wanted`` for each subset of ``subsets``; empty when the input has no
    parts)."""
    part_names, parts = part_masks(hypothesis, example)
    chosen = subsets(len(part_names), budget, seed)
    names, masks, directions = [], [], []
    for direction in directions_wanted:
        for sub in chosen:
            names.append(describe(part_names, sub, direction))
            masks.append(parts[list(sub)].any(0))
            directions.append(direction)
    stacked = np.stack(masks) if masks else np.zeros((0, *example.shape), dtype=bool)
    return {"names": names, "masks": stacked, "directions": directions}
