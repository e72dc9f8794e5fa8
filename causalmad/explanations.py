"""The family of candidate explanations that the robust search validates and scores.

One explanation can miss what another catches, so the scrubbing detector tests many
(the "robust classification" view of mechanistic anomaly detection: an input is
anomalous if *some* explanation that holds on all trusted data fails on it). The family:

* **hypothesis** — the declared hypothesis at each usable cut: every aligned inner
  variable's site (its subspace) resampled from a source agreeing on that variable; and
  the hypothesis' output mechanisms: the last residual stream at each output's readout
  position resampled from a source agreeing on that output's parents.
* **hypothesis-subset** — each variable's claim alone, each output mechanism alone.
* **hypothesis-interchange** — each aligned variable's site (up to
  ``INTERCHANGE_SITES`` of those reaching the IIA bar, earliest first) taken from a
  trusted source that *differs* on the variable, scored against the output the hypothesis
  predicts for that counterfactual (per-input interchange accuracy). Resampling from agreeing sources
  cannot see an input on which the model ignores a variable whose value happens to give
  the normal answer (a backdoor that overrides part of the computation with the same
  output); changing the variable can.
* **hypothesis-pieces** — each claim of ``hypothesis-subset`` (a variable at its site, an
  output mechanism) tested on pieces of its sites: the site's coordinates (or its
  subspace's basis vectors) in ``parts`` seeded random groups, one group resampled from
  an agreeing source while the rest keeps ``x``'s values. The claim implies each such
  hybrid gives the output too (every piece of a site that is a function of the variable
  is one), so these are valid exactly where their claim is. A whole site resampled
  replaces all of ``x``'s activation there, so the scrubbed output is a trusted source's
  and an anomaly whose cause sits at the site too (a trigger that overdetermines the
  answer) is gone from it; a piece leaves the rest of the cause in place, and a model
  that still depends on it shows it (an output that barely moves where trusted inputs'
  moves, or one that moves far more).
* **hypothesis-free** — per hook and token position: "only the top-k trusted principal
  subspace matters" (the orthogonal complement resampled from a random trusted input),
  "this position does not matter" (all of it resampled); per attention head and
  position: "this head does not matter". These are *partial* scrubs: each resamples one
  piece of what a claim calls irrelevant, so the anomaly's own cause stays in place and
  a model that depends on it on ``x`` breaks.

Explanations that do not hold on held-out trusted data are dropped (and reported) by the
detector; see ``causalmad.detectors.scrubbing``.
"""

from __future__ import annotations

import torch

from causalmad.alignment import Alignment
from causalmad.hypothesis import Hypothesis
from causalmad.models import ModelAdapter
from causalmad.scrubbing import Explanation, Resample, SourcePool
from causalmad.sites import Site

#: an aligned variable is interchanged at this many of its sites that reach the IIA bar
#: (in alignment's order: earliest first): the same claim tested at several depths
INTERCHANGE_SITES = 3


def hypothesis_explanations(
    adapter: ModelAdapter, hypothesis: Hypothesis, alignment: Alignment | None, min_iia: float, seq_len: int
) -> list[Explanation]:
    """Explanations built from the declared hypothesis and its alignment."""
    family: list[Explanation] = []
    usable = {}
    if alignment is not None:
        for var, cands in alignment.candidates.items():
            good = [c for c in cands if c.iia >= min_iia]
            if good:
                usable[var] = good
    # the declared hypothesis with each variable at its best site, then at each cut
    if usable:
        best = [Resample(s, (var,)) for var, cands in usable.items() for s in cands[0].sites]
        family.append(
            Explanation("hypothesis: all variables (best sites)", "hypothesis", best, tuple(usable))
        )
        hooks = {c.hook for cands in usable.values() for c in cands if c.hook is not None}
        for hook in sorted(hooks):
            at_cut = {v: next((c for c in cs if c.hook == hook), None) for v, cs in usable.items()}
            if all(at_cut.values()) and len(usable) > 1:
                rules = [Resample(s, (v,)) for v, c in at_cut.items() if c is not None for s in c.sites]
                family.append(
                    Explanation(f"hypothesis: all variables at {hook}", "hypothesis", rules, tuple(usable))
                )
        if usable:  # each variable alone (also what explain() reports per variable)
            for var, cands in usable.items():
                family.append(
                    Explanation(
                        f"variable {var} at {cands[0].key}",
                        "hypothesis-subset",
                        [Resample(s, (var,)) for s in cands[0].sites],
                        (var,),
                    )
                )
            # ... and interchanged with a differing source, except where the readout reads:
            # the whole stream at ``final_hook`` copies the source's answer, which any
            # mechanism does, so an interchange there tests nothing
            final = adapter.final_hook()
            for var, cands in usable.items():
                inner = [c for c in cands if any(s.hook != final or s.basis is not None for s in c.sites)]
                for c in inner[:INTERCHANGE_SITES]:
                    family.append(
                        Explanation(
                            f"interchange {var} at {c.key}",
                            "hypothesis-interchange",
                            [Resample(s, (var,)) for s in c.sites],
                            (var,),
                            target=var,
                        )
                    )
    # output mechanisms: each output computed from its parents only
    if adapter.has_positions:
        final = adapter.final_hook()
        rules = []
        for out in hypothesis.outputs:
            pos = hypothesis.readouts[out].position
            if pos is None:
                continue
            parents = tuple(hypothesis.parents(out))
            rule = Resample(Site(final, (pos % seq_len,)), parents)
            rules.append(rule)
            family.append(
                Explanation(
                    f"output {out} <- {', '.join(parents)}", "hypothesis-subset", [rule], (out, *parents)
                )
            )
        if len(rules) > 1:
            family.append(
                Explanation(
                    "hypothesis: all output mechanisms", "hypothesis", rules, tuple(hypothesis.outputs)
                )
            )
    return family


def piece_explanations(
    adapter: ModelAdapter, pool: SourcePool, family: list[Explanation], parts: int, seed: int
) -> list[tuple[Explanation, int]]:
    """Each ``hypothesis-subset`` claim of ``family`` on ``parts`` pieces of its sites.

    Args:
        adapter: the model's adapter (head widths).
        pool: the trusted source pool; gathers the claims' sites (a site's width).
        family: the explanations built so far.
        parts: pieces per site (``< 2``: none); a site (or subspace) narrower than
            ``parts`` is not split.
        seed: seeds each site's random grouping of coordinates.

    Returns:
        ``(piece explanation, index of its claim in family)`` pairs, claim by claim.
    """
    if parts < 2:
        return []
    claims = [(i, e) for i, e in enumerate(family) if e.family == "hypothesis-subset"]
    pool.gather([s for _, e in claims for s in e.sites])
    out: list[tuple[Explanation, int]] = []
    for i, e in claims:
        # the coordinates a piece groups: the subspace's basis vectors, or the site's axes
        bases = [
            r.site.basis
            if r.site.basis is not None
            else torch.eye(
                adapter.head_width(r.site.hook) if r.site.head is not None else pool.acts(r.site).shape[-1]
            )
            for r in e.resamples
        ]
        if min(b.shape[1] for b in bases) < parts:
            continue
        gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
        orders = [torch.randperm(b.shape[1], generator=gen) for b in bases]
        for j in range(parts):
            rules = [
                Resample(r.site.with_basis(b[:, o[j::parts]].contiguous(), f"piece {j + 1}/{parts}"), r.match)
                for r, b, o in zip(e.resamples, bases, orders)
            ]
            out.append(
                (Explanation(f"{e.name}, piece {j + 1}/{parts}", "hypothesis-pieces", rules, e.variables), i)
            )
    return out


def principal_basis(acts: torch.Tensor, variance: float) -> tuple[torch.Tensor, int]:
    """Orthonormal basis of the complement of the top-k principal subspace of ``acts``
    (``[n, d]``), with k the fewest components explaining ``variance`` of the variance."""
    x = acts.double() - acts.double().mean(0)
    _, s, vt = torch.linalg.svd(x, full_matrices=True)
    share = (s**2).cumsum(0) / (s**2).sum().clamp_min(1e-12)
    k = int((share < variance).sum().item()) + 1
    return vt[k:].T.float().contiguous(), k


def hypothesis_free_explanations(
    adapter: ModelAdapter,
    pool: SourcePool,
    seq_len: int,
    pca_variance: float = 0.99,
    positions: list[int] | None = None,
) -> list[Explanation]:
    """Principal-subspace and component claims per hook, position and head."""
    family: list[Explanation] = []
    hooks = [
        h for h in adapter.candidate_hooks() if h.component in ("resid_pre", "resid_post", "module", "attn_z")
    ]
    pos_list: list[tuple[int, ...] | None] = (
        [(p,) for p in (positions or range(seq_len))] if adapter.has_positions else [None]
    )
    pool.gather([Site(h.name, pos) for h in hooks for pos in pos_list])  # one pass over the pool
    for hook in hooks:
        for pos in pos_list:
            where = f"{hook.name}" + (f"[pos {pos[0]}]" if pos else "")
            if hook.n_heads:
                for head in range(hook.n_heads):
                    site = Site(hook.name, pos, head=head)
                    family.append(
                        Explanation(f"head {head} irrelevant at {where}", "hypothesis-free", [Resample(site)])
                    )
                continue
            whole = Site(hook.name, pos)
            acts = pool.acts(whole)
            acts = acts.reshape(len(acts), -1)
            complement, k = principal_basis(acts, pca_variance)
            if complement.shape[1] > 0:
                site = whole.with_basis(complement, f"outside pca top-{k}")
                family.append(
                    Explanation(f"only pca top-{k} matters at {where}", "hypothesis-free", [Resample(site)])
                )
            family.append(Explanation(f"irrelevant: {where}", "hypothesis-free", [Resample(whole)]))
    return family
