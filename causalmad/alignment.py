"""Alignment: find where in the model each hypothesis variable lives.

For an inner variable ``V`` and a candidate site ``S``, the interchange intervention
accuracy (IIA; Geiger et al., "Inducing Causal Structure for Interpretable Neural
Networks", ICML 2022) is the fraction of (base, source) pairs on which the model, run on
the base with ``S`` taken from the source, outputs what the hypothesis predicts for the
base with ``V`` set to its value on the source. causalmad only uses pairs whose source
*differs* from the base on ``V``, so a site that does nothing scores 0, not the share of
pairs where ``V`` happens to agree.

The search ranks every candidate site (hooks x token positions x heads) by IIA on an
alignment split, then reports held-out IIA of every candidate on a disjoint split.
Optionally, at the best whole-vector sites, it learns a low-rank rotated subspace with
distributed alignment search (DAS; Geiger et al., "Finding Alignments Between
Interpretable Causal Variables and Distributed Neural Representations", CLeaR 2024),
with the same rotated-subspace interchange as pyvene's ``LowRankRotatedSpaceIntervention``
(trained through forward hooks on the frozen model, resumed from the site).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from causalmad.errors import AlignmentError
from causalmad.hypothesis import Hypothesis
from causalmad.interventions import (
    _hooks,
    capture,
    interchange_pyvene,
    preserved_training_state,
)
from causalmad.models import ModelAdapter
from causalmad.scrubbing import Interchanges
from causalmad.sites import Site

logger = logging.getLogger(__name__)

Values = list[dict[str, Hashable]]


@dataclass
class Candidate:
    """One candidate for one variable — a site, or a group of sites patched together
    (a variable spread over several heads) — with its IIA on both splits."""

    variable: str
    sites: tuple[Site, ...]
    iia: float
    heldout_iia: float

    @property
    def key(self) -> str:
        return " + ".join(s.key for s in self.sites)

    @property
    def hook(self) -> str | None:
        """The hook shared by every site of the candidate, or ``None``."""
        hooks = {s.hook for s in self.sites}
        return hooks.pop() if len(hooks) == 1 else None

    def as_dict(self) -> dict[str, object]:
        return {
            "variable": self.variable,
            "site": self.key,
            "iia": round(self.iia, 4),
            "heldout_iia": round(self.heldout_iia, 4),
        }


@dataclass
class Alignment:
    """Variable -> candidates, the chosen one first (see ``search``'s ``prefer_earliest``)."""

    candidates: dict[str, list[Candidate]] = field(default_factory=dict)

    def best(self, variable: str) -> Candidate:
        if variable not in self.candidates or not self.candidates[variable]:
            raise AlignmentError(f"No aligned site for variable {variable!r}.")
        return self.candidates[variable][0]

    @property
    def variables(self) -> list[str]:
        return list(self.candidates)

    def heldout_iia(self) -> dict[str, float]:
        """Held-out IIA of each variable's best site."""
        return {v: self.best(v).heldout_iia for v in self.candidates}

    def table(self) -> list[dict[str, object]]:
        """Every candidate as a record, best first per variable."""
        return [c.as_dict() for cs in self.candidates.values() for c in cs]

    def __repr__(self) -> str:
        best = ", ".join(
            f"{v}->{self.best(v).key} (held-out IIA {self.best(v).heldout_iia:.3f})" for v in self.candidates
        )
        return f"Alignment({best})"


# ---------------------------------------------------------------------- readouts
def predicted_outputs(hypothesis: Hypothesis, logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's prediction for each output variable (class index in its readout)."""
    preds = {}
    for out in hypothesis.outputs:
        preds[out] = readout_logits(hypothesis, out, logits).argmax(-1).cpu()
    return preds


def readout_logits(hypothesis: Hypothesis, output: str, logits: torch.Tensor) -> torch.Tensor:
    """``[n, classes]`` logits an output variable reads."""
    return hypothesis.readouts[output].select(logits)


def counterfactual_targets(
    hypothesis: Hypothesis, variable: str, base_values: Values, source_values: Values, pairs: np.ndarray
) -> dict[str, torch.Tensor]:
    """Output classes the hypothesis predicts for each base with ``variable`` set to its
    value on the source, per output variable."""
    cf = [hypothesis.counterfactual(base_values[b], {variable: source_values[s][variable]}) for b, s in pairs]
    return {o: torch.tensor([int(v[o]) for v in cf]) for o in hypothesis.outputs}  # type: ignore[call-overload]


# ---------------------------------------------------------------------- pairs and IIA
def sample_pairs(
    variable: str, base_values: Values, source_values: Values, n: int, rng: np.random.Generator
) -> np.ndarray:
    """``[m, 2]`` (base, source) index pairs whose ``variable`` values differ."""
    src_vals = np.array([hash(v[variable]) for v in source_values])
    base_vals = np.array([hash(v[variable]) for v in base_values])
    pairs = []
    bases = rng.permutation(len(base_values))
    for b in bases:
        choices = np.flatnonzero(src_vals != base_vals[b])
        if len(choices):
            pairs.append((b, rng.choice(choices)))
        if len(pairs) >= n:
            break
    if not pairs:
        raise AlignmentError(
            f"Variable {variable!r} takes a single value on the trusted data, so no interchange "
            "can change it; it cannot be aligned. Add trusted inputs where it varies."
        )
    return np.array(pairs)


def interchange_accuracy(
    adapter: ModelAdapter,
    hypothesis: Hypothesis,
    variable: str,
    site: Site | Sequence[Site],
    base_x: torch.Tensor,
    base_values: Values,
    source_x: torch.Tensor,
    source_values: Values,
    pairs: np.ndarray,
    targets: dict[str, torch.Tensor] | None = None,
    runner: Interchanges | None = None,
) -> float:
    """IIA of ``variable`` at ``site`` (or a group of sites) on (base, source) ``pairs``
    (through the engine's windowed run on a model that has one, else through pyvene).
    ``targets`` (from ``counterfactual_targets``) may be passed to reuse them across
    many sites; ``runner`` (an ``Interchanges`` of these pairs'
    bases and sources) likewise reuses captured activations."""
    if targets is None:
        targets = counterfactual_targets(hypothesis, variable, base_values, source_values, pairs)
    base, source = base_x[pairs[:, 0]], source_x[pairs[:, 1]]
    sites = [site] if isinstance(site, Site) else list(site)
    # the engine's windowed run where the model has one, pyvene otherwise
    if runner is None:
        runner = Interchanges(adapter, base, source, list(hypothesis.readouts.values()))
    logits = runner.logits(sites)
    if logits is None:
        logits = interchange_pyvene(adapter, base, source, site)
    pred = predicted_outputs(hypothesis, logits)
    target = targets
    ok = torch.ones(len(pairs), dtype=torch.bool)
    for o in hypothesis.outputs:
        ok &= pred[o] == target[o]
    return float(ok.float().mean())


# ---------------------------------------------------------------------- search
def candidate_sites(adapter: ModelAdapter, hypothesis: Hypothesis, variable: str, seq_len: int) -> list[Site]:
    """Hooks x position sets x heads to try for ``variable``.

    Positions: the readout positions of the outputs downstream of ``variable``, each alone
    and all together (a variable may be computed where each output is read).
    """
    if not adapter.has_positions:
        return [Site(h.name) for h in adapter.candidate_hooks()]
    positions = []
    for out in hypothesis.outputs_affected_by(variable):
        p = hypothesis.readouts[out].position
        if p is not None:
            positions.append(p % seq_len)
    position_sets: list[tuple[int, ...]] = [(p,) for p in sorted(set(positions))]
    if len(position_sets) > 1:
        position_sets.append(tuple(sorted(set(positions))))
    if not position_sets:
        position_sets = [tuple(range(seq_len))]
    sites = []
    for hook in adapter.candidate_hooks():
        for pos in position_sets:
            if hook.n_heads:
                sites += [Site(hook.name, pos, head=h) for h in range(hook.n_heads)]
            else:
                sites.append(Site(hook.name, pos))
    return sites


def hook_depths(adapter: ModelAdapter) -> Callable[[str], float]:
    """A hook's depth in the model: its index among
    [`ModelAdapter.candidate_hooks`][causalmad.ModelAdapter.candidate_hooks] (model order);
    any other hook sits just after the last candidate hook registered before it
    ([`ModelAdapter.hook_names`][causalmad.ModelAdapter.hook_names] order)."""
    order = {h.name: float(i) for i, h in enumerate(adapter.candidate_hooks())}
    last = -1.0
    for name in adapter.hook_names():
        if name in order:
            last = order[name]
        else:
            order[name] = last + 0.5
    return lambda hook: order.get(hook, float("inf"))


def search(
    adapter: ModelAdapter,
    hypothesis: Hypothesis,
    variables: Sequence[str],
    align: tuple[torch.Tensor, Values],
    pool: tuple[torch.Tensor, Values],
    heldout: tuple[torch.Tensor, Values],
    n_pairs: int = 256,
    random_state: int = 0,
    das_rank: int | None = None,
    das_top: int = 6,
    das_steps: int = 400,
    das_if_below: float | None = None,
    sites: dict[str, list[Site]] | None = None,
    max_group: int = 3,
    group_from: int = 24,
    prefer_earliest: float | None = None,
) -> Alignment:
    """Rank candidate sites of each variable by IIA; report held-out IIA of each.

    Args:
        align, pool, heldout: (inputs, hypothesis values) of the alignment split (bases
            for ranking), the source pool, and the held-out split (bases for reporting).
        das_rank: if set, learn a rank-``das_rank`` rotated subspace at the ``das_top``
            best whole-vector sites of each variable and add those as candidates.
        das_if_below: if set, learn them only for variables whose best site's IIA is
            below this (a variable no whole site carries is distributed).
        sites: optional variable -> candidate sites, replacing the default grid.
        max_group, group_from: grow the best site greedily into a group of up to
            ``max_group`` sites patched together, adding one of the next ``group_from``
            candidates at a time while alignment-split IIA rises by at least 0.01 (a
            variable a model spreads over several heads or positions).
    """
    rng = np.random.default_rng(random_state)
    seq_len = int(align[0].shape[1]) if align[0].ndim > 1 else 1
    readouts = list(hypothesis.readouts.values())
    alignment = Alignment()
    for var in variables:
        grid = (sites or {}).get(var) or candidate_sites(adapter, hypothesis, var, seq_len)
        pairs_a = sample_pairs(var, align[1], pool[1], n_pairs, rng)
        pairs_h = sample_pairs(var, heldout[1], pool[1], n_pairs, rng)
        targets = {
            id(pairs_a): counterfactual_targets(hypothesis, var, align[1], pool[1], pairs_a),
            id(pairs_h): counterfactual_targets(hypothesis, var, heldout[1], pool[1], pairs_h),
        }
        # each pair set's base and source activations, captured once for every site
        runners = {
            id(p): Interchanges(adapter, b[0][p[:, 0]], pool[0][p[:, 1]], readouts)
            for p, b in ((pairs_a, align), (pairs_h, heldout))
        }
        runners[id(pairs_a)].prepare(grid)  # one pass over the sources for the whole grid

        def score(group: tuple[Site, ...], pairs: np.ndarray, base: tuple[torch.Tensor, Values]) -> float:
            return interchange_accuracy(
                adapter,
                hypothesis,
                var,
                group,
                base[0],
                base[1],
                pool[0],
                pool[1],
                pairs,
                targets[id(pairs)],
                runners[id(pairs)],
            )

        scored: list[tuple[float, tuple[Site, ...]]] = [(score((s,), pairs_a, align), (s,)) for s in grid]
        if das_rank and (das_if_below is None or max(iia for iia, _ in scored) < das_if_below):
            whole = [
                g[0]
                for _, g in sorted(scored, key=lambda t: -t[0])
                if g[0].head is None and g[0].basis is None and adapter.width(g[0].hook, align[0]) > das_rank
            ]  # narrower: the whole vector already
            # DAS trains on its own, larger sample of alignment pairs, so that the IIA that
            # ranks it (on ``pairs_a``) is not measured on the pairs it was fitted to
            pairs_das = sample_pairs(var, align[1], pool[1], 8 * n_pairs, rng)
            for s in whole[:das_top]:
                rotated = learn_rotation(
                    adapter, hypothesis, var, s, align, pool, pairs_das, das_rank, das_steps, random_state
                )
                scored.append((score((rotated,), pairs_a, align), (rotated,)))
        scored.sort(key=lambda t: -t[0])
        best_iia, group = scored[0]
        others = [g[0] for _, g in scored[1 : 1 + group_from]]
        while len(group) < max_group and best_iia < 1.0 and others:
            trials = [(score((*group, s), pairs_a, align), s) for s in others]
            iia, s = max(trials, key=lambda t: t[0])
            if iia < best_iia + 0.01:
                break
            best_iia, group = iia, (*group, s)
            others.remove(s)
            scored.insert(0, (iia, group))
        if prefer_earliest is not None:
            depth = hook_depths(adapter)
            bar = prefer_earliest
            scored.sort(
                key=lambda t: (t[0] < bar, max(depth(s.hook) for s in t[1]) if t[0] >= bar else 0, -t[0])
            )
        alignment.candidates[var] = [Candidate(var, g, iia, score(g, pairs_h, heldout)) for iia, g in scored]
        logger.info("aligned %s", alignment.candidates[var][0].as_dict())
    return alignment


# ---------------------------------------------------------------------- DAS
#: DAS stops early when, ``DAS_PATIENCE`` windows of ``DAS_WINDOW`` steps in a row, the mean
#: training loss of the window is not at least ``DAS_MIN_GAIN`` (relative) below the best
#: earlier window's (losses often sit on a plateau for a window before they drop again)
DAS_WINDOW = 50
DAS_MIN_GAIN = 0.02
DAS_PATIENCE = 2


def learn_rotation(
    adapter: ModelAdapter,
    hypothesis: Hypothesis,
    variable: str,
    site: Site,
    align: tuple[torch.Tensor, Values],
    pool: tuple[torch.Tensor, Values],
    pairs: np.ndarray,
    rank: int,
    steps: int = 200,
    random_state: int = 0,
    batch_size: int = 64,
    lr: float = 1e-2,
) -> Site:
    """Learn a rank-``rank`` subspace at ``site`` where ``variable`` lives (DAS).

    Trained on counterfactual labels of the given (alignment base, pool source) pairs;
    returns ``site`` restricted to the learned orthonormal basis ``Q`` (``[width, rank]``).

    The interchange is the one every engine applies (``interventions._apply``): at the
    site's positions the base's activation ``h`` becomes ``h + (s - h) Q Q^T``, with ``s``
    the source's (the same map as pyvene's ``LowRankRotatedSpaceIntervention``). ``Q`` is
    kept orthonormal by a QR of a free ``[width, rank]`` matrix; training runs ``steps``
    steps at most and stops early when the loss plateaus (``DAS_WINDOW``). The model is
    frozen, so source activations at the site are captured once; and each step runs only the
    part of the network from the site's resume point on
    ([`ModelAdapter.run_from`][causalmad.ModelAdapter.run_from]), from base activations also
    captured once.
    """
    from causalmad.interventions import _apply, _as_tensor, _flat, _replace

    base_x, base_vals = align
    src_x, src_vals = pool
    width = adapter.width(site.hook, base_x)
    if rank > width:
        raise AlignmentError(f"DAS rank {rank} exceeds the width {width} of {site.key}.")
    if adapter.has_positions and site.positions is None:
        raise AlignmentError(f"DAS at {site.key} needs token positions on a model with positions.")
    whole = Site(site.hook, site.positions)  # DAS rotates the whole vector at the site's positions
    # only the rows the pairs use, captured once; ``local`` indexes them
    used_b, local_b = np.unique(pairs[:, 0], return_inverse=True)
    used_s, local_s = np.unique(pairs[:, 1], return_inverse=True)
    bases = base_x[torch.as_tensor(used_b)]
    act_s = capture(adapter, src_x[torch.as_tensor(used_s)], [whole])[0]
    point = adapter.resume_point([site.hook])
    resume = capture(adapter, bases, [Site(point)])[0] if point is not None else None
    targets = counterfactual_targets(hypothesis, variable, base_vals, src_vals, pairs)
    gen = torch.Generator().manual_seed(random_state)
    # orthonormal start: unit columns, so that Adam's steps (``lr`` per entry) turn them by a
    # useful angle whatever the width
    free = torch.nn.Parameter(torch.linalg.qr(torch.randn(width, rank, generator=gen))[0])
    opt = torch.optim.Adam([free], lr=lr)
    rng = np.random.default_rng(random_state)
    device = adapter.device
    window: list[float] = []
    best, stalled = float("inf"), 0
    with preserved_training_state(adapter.model):
        adapter.model.eval()
        for p in adapter.model.parameters():
            p.requires_grad_(False)
        for _ in range(steps):
            idx = rng.choice(len(pairs), size=min(batch_size, len(pairs)), replace=False)
            rows = torch.as_tensor(local_b[idx])
            x = bases[rows].to(device)
            src = act_s[torch.as_tensor(local_s[idx])].to(device)
            pos = whole.position_index(bases[rows])  # on the host's copy
            q, _ = torch.linalg.qr(free.to(device))

            def swap(
                output: object, src: torch.Tensor = src, pos: torch.Tensor | None = pos, q: torch.Tensor = q
            ) -> object:
                act = _as_tensor(output)
                return _replace(output, _apply(_flat(adapter, act), pos, src, q).reshape(act.shape))

            with _hooks(adapter, [(site.hook, swap)]):
                if resume is None:
                    logits = adapter.forward(x)
                else:
                    logits = adapter.run_from(point, resume[rows].to(device), x)  # type: ignore[arg-type]
            loss = sum(
                torch.nn.functional.cross_entropy(
                    readout_logits(hypothesis, o, logits), targets[o][idx].to(device)
                )
                for o in hypothesis.outputs
            )
            opt.zero_grad()
            loss.backward()  # type: ignore[union-attr]
            opt.step()
            window.append(float(loss.detach()))  # type: ignore[union-attr]
            if len(window) == DAS_WINDOW:  # stop once the mean loss stops falling
                mean, window = sum(window) / DAS_WINDOW, []
                stalled = stalled + 1 if mean > (1 - DAS_MIN_GAIN) * best else 0
                if stalled == DAS_PATIENCE:
                    break
                best = min(best, mean)
    basis, _ = torch.linalg.qr(free.detach().float().cpu())
    return site.with_basis(basis, f"das k={rank}")
