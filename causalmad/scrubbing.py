"""Causal scrubbing: resample activations as an explanation allows and measure the damage.

An explanation claims that, at each of its sites, the model only uses what the input's
values of some hypothesis variables determine. Scrubbing tests the claim on an input ``x``
(Chan et al., "Causal Scrubbing", 2022): every site's activation (its subspace) is taken
from a trusted *source* input that agrees with ``x`` on those variables — any trusted input
when the claim is that the site does not matter — and the model's readout is compared with
its output on ``x``. The divergence is the KL divergence ``KL(f(x) || f_scrubbed(x))`` on
the readout, summed over readouts and averaged over ``K`` resampled sources.

Sources come from a pool of trusted inputs whose activations are gathered once
(``SourcePool``); an input is never its own source: pooled rows identical to it are
excluded unless they are the only trusted inputs that agree with it. When no pooled input
shares ``x``'s values, two cases differ. If some variable's value on ``x`` never occurs in
trusted data, that novelty is itself a signal: the site is scrubbed from a random trusted
input (usually a large divergence). If every value occurs but their combination is
missing from the pool (sparse coverage, not novelty), the explanation cannot be tested on
``x`` and its divergence is NaN there. Either way the miss is recorded and reported.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from causalmad.hypothesis import Readout
from causalmad.interventions import Patch, capture, coordinates, run_patched, to_device
from causalmad.models import CleanWindow, ModelAdapter
from causalmad.progress import progress_bar
from causalmad.sites import Site

Values = list[dict[str, Hashable]]


@dataclass(frozen=True, eq=False)
class Resample:
    """Scrub ``site`` from a trusted source agreeing with the input on ``match``
    (``()``: any trusted source — the claim that the site does not matter)."""

    site: Site
    match: tuple[str, ...] = ()


@dataclass(eq=False)
class Explanation:
    """A claim about what the model uses, as a list of resampling rules.

    Attributes:
        name: readable, unique within a family.
        family: ``"hypothesis"`` (the declared graph at a cut), ``"hypothesis-subset"``
            (some of its variables), ``"hypothesis-interchange"``, ``"hypothesis-pieces"``
            (a claim of ``"hypothesis-subset"`` on a piece of its sites) or
            ``"hypothesis-free"`` (principal-subspace and component claims that need no
            hypothesis); ``causalmad.explanations`` describes each.
        resamples: the rules, all applied together.
        variables: hypothesis variables the explanation speaks about.
        target: set for an interchange explanation (see below).
    """

    name: str
    family: str
    resamples: list[Resample]
    variables: tuple[str, ...] = ()
    target: str | None = None

    # ``target``: an *interchange* explanation for that variable. Its sources *differ*
    # from the input on ``target`` (one source per row, shared by every rule), and the
    # divergence is the scrubbed model's negative log-likelihood of the output the
    # hypothesis predicts with ``target`` set to the source's value: the claim "the
    # model's output on x depends on this variable as the hypothesis says" (per-input IIA).

    @property
    def sites(self) -> list[Site]:
        return [r.site for r in self.resamples]


def row_keys(inputs: torch.Tensor) -> np.ndarray:
    """A stable 64-bit key per input row (BLAKE2b of its bytes): recognises an input
    inside the source pool, and seeds that input's own source draws."""
    flat = inputs.reshape(len(inputs), -1).cpu().contiguous().numpy()
    return np.array(
        [int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little") for r in flat],
        dtype=np.uint64,
    )


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def draws(keys: np.ndarray, salt: str, k: int) -> np.ndarray:
    """``[n, k]`` pseudo-random uint64 per input, a function of the input's key and
    ``salt`` only: an input gets the same trusted sources whatever batch it is scored in,
    alone or among thousands, in this process or another."""
    s = np.uint64(zlib.crc32(salt.encode()))
    with np.errstate(over="ignore"):
        x = (
            keys[:, None] * np.uint64(0xD1B54A32D192ED03)
            + s * np.uint64(0x8CB92BA72F3D8DD7)
            + np.arange(k, dtype=np.uint64)[None]
        )
        return _splitmix64(_splitmix64(x))


class SourcePool:
    """Trusted source inputs, their hypothesis values and their activations at sites."""

    def __init__(
        self,
        adapter: ModelAdapter,
        inputs: torch.Tensor,
        values: Values | None,
        seen: dict[str, set[Hashable]] | None = None,
    ) -> None:
        self.adapter = adapter
        self.inputs = inputs
        self.values = values or [{} for _ in range(len(inputs))]
        # values each variable takes anywhere in trusted data (default: in the pool)
        self.seen = seen if seen is not None else seen_values(self.values)
        self.keys = row_keys(inputs)
        self._acts: dict[tuple[object, ...], torch.Tensor] = {}
        self._ids: dict[tuple[object, ...], np.ndarray] = {}
        self._groups: dict[tuple[str, ...], dict[tuple[Hashable, ...], np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.inputs)

    @staticmethod
    def _place(site: Site) -> tuple[object, ...]:
        # whole vectors are stored, so sites differing only in head or subspace share them
        return (site.hook, site.positions)

    def gather(self, sites: Sequence[Site]) -> None:
        """Capture activations at every place not gathered yet, in one pass over the pool."""
        todo = list({self._place(s): s for s in sites if self._place(s) not in self._acts}.values())
        if todo:
            for s, a in zip(todo, capture(self.adapter, self.inputs, todo)):
                self._acts[self._place(s)] = a

    def acts(self, site: Site) -> torch.Tensor:
        """``[pool, p, d]`` whole activations at the site's hook and positions."""
        if self._place(site) not in self._acts:
            self.gather([site])
        return self._acts[self._place(site)]

    def ids(self, site: Site) -> np.ndarray:
        """``[pool]`` integer ids of the activations at the site's place, equal exactly where
        the activations are byte-identical (the engine runs rows that repeat once)."""
        place = self._place(site)
        if place not in self._ids:
            a = self.acts(site)
            raw = a.reshape(len(a), -1).contiguous().cpu().view(torch.uint8).numpy()
            self._ids[place] = np.unique(
                raw.view(np.dtype((np.void, raw.shape[1])))[:, 0], return_inverse=True
            )[1].reshape(-1)
        return self._ids[place]

    def state(self) -> dict[str, object]:
        """The pool as plain values and tensors, for saving (see ``causalmad.persistence``)."""
        return {
            "inputs": self.inputs,
            "values": self.values,
            "acts": [[hook, pos, a] for (hook, pos), a in self._acts.items()],
        }

    @classmethod
    def from_state(
        cls, adapter: ModelAdapter, state: dict[str, object], seen: dict[str, set[Hashable]] | None = None
    ) -> SourcePool:
        """A pool rebuilt from ``state`` without running the model."""
        pool = cls(adapter, state["inputs"], state["values"], seen)  # type: ignore[arg-type]
        for hook, pos, a in state["acts"]:  # type: ignore[attr-defined]
            pool._acts[(hook, pos)] = a
        return pool

    def _group(self, match: tuple[str, ...]) -> dict[tuple[Hashable, ...], np.ndarray]:
        if match not in self._groups:
            groups: dict[tuple[Hashable, ...], list[int]] = {}
            for i, v in enumerate(self.values):
                groups.setdefault(tuple(v[m] for m in match), []).append(i)
            self._groups[match] = {k: np.array(ix) for k, ix in groups.items()}
        return self._groups[match]

    def sample(
        self,
        match: tuple[str, ...],
        values: Values,
        keys: np.ndarray,
        k: int,
        salt: str,
        differ: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``[n, k]`` source indices agreeing with each input on ``match``, drawn with
        replacement by ``draws`` from the input's ``keys`` and ``salt``; an ``[n]``
        mask of inputs no pooled source agreed with (scrubbed from random sources); and an
        ``[n]`` mask of those whose values all occur in trusted data (a coverage gap).
        ``differ``: sources whose values on ``match`` *differ* from the input's instead."""
        if differ:
            return self._sample_differing(match, values, keys, k, salt)
        n = len(values)
        idx = np.empty((n, k), dtype=np.int64)
        unmatched = np.zeros(n, dtype=bool)
        gap = np.zeros(n, dtype=bool)
        everyone = np.arange(len(self))
        u = draws(keys, salt, k)
        # inputs grouped by their values on `match`; each group drawn in one vectorised step
        by_label: dict[tuple[Hashable, ...], list[int]] = {}
        for i, row in enumerate(values):
            by_label.setdefault(tuple(row[m] for m in match), []).append(i)
        groups: dict[tuple[Hashable, ...], np.ndarray] = self._group(match) if match else {(): everyone}
        in_pool = np.isin(keys, self.keys)  # inputs with an identical copy among the sources
        for label, members in by_label.items():
            rows = np.asarray(members)
            cands = groups.get(label, everyone[:0])
            plain = rows[~in_pool[rows]] if len(cands) else rows[:0]
            if len(plain):
                idx[plain] = cands[u[plain] % np.uint64(len(cands))]
            for i in rows[in_pool[rows]] if len(cands) else rows:  # rare: self-copies, no agreeing source
                others = cands[self.keys[cands] != keys[i]]
                # an identical copy of x is used only when it is the one trusted input that agrees
                pick = others if len(others) else cands
                if len(pick) == 0:
                    unmatched[i] = True
                    gap[i] = all(values[i][m] in self.seen.get(m, ()) for m in match)
                    pick = everyone[self.keys != keys[i]]
                idx[i] = pick[u[i] % np.uint64(len(pick))]
        return idx, unmatched, gap

    def _sample_differing(
        self, match: tuple[str, ...], values: Values, keys: np.ndarray, k: int, salt: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(values)
        idx = np.zeros((n, k), dtype=np.int64)
        unmatched = np.zeros(n, dtype=bool)
        u = draws(keys, salt, k)
        groups = self._group(match)
        by_label: dict[tuple[Hashable, ...], list[int]] = {}
        for i, row in enumerate(values):
            by_label.setdefault(tuple(row[m] for m in match), []).append(i)
        for label, members in by_label.items():
            rows = np.asarray(members)
            cands = np.concatenate(
                [ix for lab, ix in groups.items() if lab != label] or [np.zeros(0, np.int64)]
            )
            if len(cands) == 0:  # the variable takes one value in the pool: nothing to interchange
                unmatched[rows] = True
                continue
            idx[rows] = np.sort(cands)[u[rows] % np.uint64(len(cands))]
        return idx, unmatched, unmatched.copy()


def explanation_sources(
    pool: SourcePool, explanation: Explanation, values: Values, keys: np.ndarray, k: int, seed: int
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """``[n, k]`` source indices per rule of ``explanation``, the ``[n]`` mask of inputs
    some rule found no agreeing source for, and the ``[n]`` coverage-gap mask (see
    ``SourcePool.sample``). An interchange explanation draws one source per row,
    differing on its target, shared by all its rules."""
    n = len(values)
    unmatched, gap = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    if explanation.target is not None:
        idx, miss, g = pool.sample(
            (explanation.target,), values, keys, k, f"{seed}|{explanation.name}", differ=True
        )
        return [idx] * len(explanation.resamples), miss, g
    sources = []
    for r, rule in enumerate(explanation.resamples):
        idx, miss, rule_gap = pool.sample(rule.match, values, keys, k, f"{seed}|{explanation.name}|{r}")
        sources.append(idx)
        unmatched |= miss
        gap |= rule_gap
    return sources, unmatched, gap


#: ``counterfactual(values, variable, value)``: the readout class of each output (in the
#: readouts' order) that the hypothesis predicts for an input with ``values`` once
#: ``variable`` is set to ``value``; what interchange explanations are measured against.
Counterfactual = Callable[[dict[str, Hashable], str, Hashable], Sequence[int]]


#: the counterfactual class of an output an interchange does not score (one its variable
#: cannot affect)
UNSCORED = -1


def counterfactual_classes(
    counterfactual: Counterfactual | None,
    explanation: Explanation,
    values: Values,
    pool: SourcePool,
    sources: np.ndarray,
) -> np.ndarray:
    """``[n, k, outputs]`` target classes of an interchange explanation's rows."""
    var = explanation.target
    if counterfactual is None or var is None:
        raise ValueError(
            f"Explanation {explanation.name!r}: only an interchange explanation with a counterfactual "
            "has counterfactual classes."
        )
    out = []
    for i, row in enumerate(sources):
        seen: dict[Hashable, Sequence[int]] = {}  # a variable takes few values: one call per value
        for s in row:
            value = pool.values[s][var]
            if value not in seen:
                seen[value] = counterfactual(values[i], var, value)
        out.append([seen[pool.values[s][var]] for s in row])
    return np.asarray(out, dtype=np.int64)


def counterfactual_nll(scrubbed: Sequence[torch.Tensor], classes: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``sum_r -log q_r[class_r]`` per row (``classes``: ``[rows, outputs]``) over the
    outputs whose class is not ``UNSCORED``."""
    total = torch.zeros(len(scrubbed[0]), device=scrubbed[0].device)
    for r, q in enumerate(scrubbed):
        cls = torch.as_tensor(classes[:, r], device=q.device)
        scored = cls != UNSCORED
        total -= torch.where(scored, q.gather(1, cls.clamp_min(0)[:, None])[:, 0], 0.0)
    return total


def seen_values(values: Values) -> dict[str, set[Hashable]]:
    """Variable -> the set of values it takes in ``values``."""
    seen: dict[str, set[Hashable]] = {}
    for row in values:
        for var, v in row.items():
            seen.setdefault(var, set()).add(v)
    return seen


def readout_log_probs(readouts: Sequence[Readout], logits: torch.Tensor) -> list[torch.Tensor]:
    """Log-probabilities over each readout's classes."""
    return [torch.log_softmax(r.select(logits).float(), dim=-1) for r in readouts]


def kl_divergence(clean: Sequence[torch.Tensor], scrubbed: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_r KL(clean_r || scrubbed_r)`` per row."""
    total = torch.zeros(len(clean[0]), device=clean[0].device)
    for p, q in zip(clean, scrubbed):
        total += (p.exp() * (p - q)).sum(-1)
    return total.clamp_min(0)


def scrub(
    adapter: ModelAdapter,
    explanation: Explanation,
    inputs: torch.Tensor,
    values: Values,
    clean_logprobs: Sequence[torch.Tensor],
    pool: SourcePool,
    readouts: Sequence[Readout],
    resamples: int,
    seed: int = 0,
    batch_size: int = 1024,
    keys: np.ndarray | None = None,
    counterfactual: Counterfactual | None = None,
    statistic: str = "median",
) -> tuple[np.ndarray, np.ndarray]:
    """Divergence of each input under one explanation, every row through the whole model.

    The straightforward implementation: ``scrub_many`` (what detectors use) must
    agree with it, and ``tests/test_engine.py`` checks that it does.

    Returns:
        ``[n]`` divergences (the ``statistic`` over ``resamples`` sources,
        ``reduce_resamples``; NaN where a rule found no agreeing source although every
        value occurs in trusted data) and an ``[n]`` mask of inputs on which some rule
        found no agreeing trusted source.
    """
    n, k = len(inputs), resamples
    keys = row_keys(inputs) if keys is None else keys
    drawn, unmatched, gap = explanation_sources(pool, explanation, values, keys, k, seed)
    sources = [idx.reshape(-1) for idx in drawn]  # row i*k + j: input i, resample j
    classes = None
    if explanation.target is not None:
        classes = counterfactual_classes(counterfactual, explanation, values, pool, drawn[0]).reshape(
            n * k, -1
        )
    rows = np.repeat(np.arange(n), k)
    div = torch.empty(n * k)
    for start in range(0, n * k, batch_size):
        sl = slice(start, start + batch_size)
        patches = [
            Patch(rule.site, pool.acts(rule.site)[torch.as_tensor(src[sl])])
            for rule, src in zip(explanation.resamples, sources)
        ]
        logits = run_patched(adapter, inputs[torch.as_tensor(rows[sl])], patches)
        scrubbed = readout_log_probs(readouts, logits)
        if classes is not None:
            div[sl] = counterfactual_nll(scrubbed, classes[sl]).cpu()
        else:
            clean = [c[torch.as_tensor(rows[sl])].to(logits.device) for c in clean_logprobs]
            div[sl] = kl_divergence(clean, scrubbed).cpu()
    out = reduce_resamples(div.double().reshape(n, k).numpy(), statistic)
    out[gap] = np.nan
    return out, unmatched


#: how a cell's divergences under its resampled sources are reduced to one
#: (``reduce_resamples``)
STATISTICS = ("median", "mean", "trimmed")


def reduce_resamples(div: np.ndarray, statistic: str = "median") -> np.ndarray:
    """``[n]`` one divergence per input from ``[n, k]`` divergences under ``k`` resampled
    sources (or bases).

    ``"median"`` (the default): a few sources break any input's output (a source whose
    carry sits at the edge of its range, a base the trigger cannot fire in), on trusted
    and anomalous inputs alike, and their divergences are orders of magnitude above the
    rest; the mean of ``k`` then ranks inputs by how many such sources they happened to
    draw, while the median measures how the input's output moves under a typical
    source. ``"mean"``: the average (the estimate of the expected divergence).
    ``"trimmed"``: the mean without the largest of the ``k`` (the value itself when
    ``k = 1``): a divergence that several draws show still counts, while one draw that
    breaks the output by accident (a hybrid that completes a trigger by chance, a source
    at the edge of a variable's range) no longer decides the input's rank."""
    if statistic == "median":
        return np.median(div, axis=1)
    if statistic == "mean":
        return div.mean(1)
    if statistic == "trimmed":
        k = div.shape[1]
        return div.mean(1) if k < 2 else np.sort(div, axis=1)[:, : k - 1].mean(1)
    raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}.")


def clean_log_probs(
    adapter: ModelAdapter, inputs: torch.Tensor, readouts: Sequence[Readout], batch_size: int = 1024
) -> list[torch.Tensor]:
    """Readout log-probabilities of the unscrubbed model."""
    return adapter.run_readouts(inputs, readouts, batch_size)


# ---------------------------------------------------------------------- the batched engine
# Share of the memory budget planned for cached activations and one pass; the rest is
# headroom for what the plan does not count (per-input Python values, clean logits,
# allocator slack), measured in docs/performance.md.
PLANNED = 0.5


def pass_rows(
    adapter: ModelAdapter, example: torch.Tensor, memory_mb: float, batch_size: int, extra_per_row: int = 0
) -> int:
    """Rows per forward pass: at most ``batch_size``, and few enough that one pass's
    activations (plus ``extra_per_row`` bytes each) take at most a quarter of ``memory_mb``."""
    per_row = adapter.activation_bytes_per_row(example) + extra_per_row
    return int(max(1, min(batch_size, memory_mb * 2**20 * PLANNED // 2 // per_row)))


def _budget(
    adapter: ModelAdapter,
    example: torch.Tensor,
    explanations: Sequence[Explanation],
    pool: SourcePool,
    memory_mb: float,
    per_input: int,
    n: int,
    batch_size: int,
) -> tuple[int, int]:
    """``(inputs per chunk, rows per forward pass)`` keeping one chunk's cached
    activations and source indices (``per_input`` bytes each) plus one pass's activations
    and patch values under ``memory_mb``."""
    patch = max((sum(pool.acts(s).shape[1:].numel() * 4 for s in e.sites) for e in explanations), default=0)
    rows = pass_rows(adapter, example, memory_mb, batch_size, patch)
    per_row = adapter.activation_bytes_per_row(example) + patch
    chunk = int(max(1, min(n, (memory_mb * 2**20 * PLANNED - rows * per_row) // max(per_input, 1))))
    return chunk, rows


def scrub_many(
    adapter: ModelAdapter,
    explanations: Sequence[Explanation],
    inputs: torch.Tensor,
    values: Values,
    clean_logprobs: Sequence[torch.Tensor] | None,
    pool: SourcePool,
    readouts: Sequence[Readout],
    resamples: int,
    seed: int = 0,
    batch_size: int = 4096,
    keys: np.ndarray | None = None,
    memory_mb: float = 2048.0,
    progress: bool = False,
    counterfactual: Counterfactual | None = None,
    statistic: str | Sequence[str] = "median",
) -> tuple[np.ndarray, np.ndarray]:
    """Divergence of every input under every explanation, in large batched passes.

    The same numbers as calling ``scrub`` once per explanation (the same sources, the
    same divergences up to float rounding; ``tests/test_engine.py``), computed faster:

    * explanations are grouped by the point the model can resume from before all their sites
      ([`ModelAdapter.resume_point`][causalmad.ModelAdapter.resume_point]); that point's
      activation is computed once per input, and each scrubbed variant runs only the rest of
      the network;
    * on a causal model ([`ModelAdapter.run_window`][causalmad.ModelAdapter.run_window]) a
      row computes only the positions its patches can have changed, the clean pass giving
      the rest (``CleanWindow``); explanations that patch the same places share passes, and
      small groups of one resume point are packed into full passes;
    * the ``n × k`` rows of many explanations share one forward pass: each hook patches
      each explanation's contiguous block of rows with its own sources and subspace;
    * rows of one explanation with the same input and byte-identical source activations
      run once and count for all of them (rows compared by input and the pool's
      activation ids, ``SourcePool.ids``);
    * trusted source activations come from the pool, gathered once at fit time (on a
      GPU they are copied to it once per call, outside ``memory_mb``'s plan);
    * inputs are processed in chunks, and rows per pass are capped, so that a chunk's
      cached activations and source indices plus one pass stay under ``memory_mb``
      whatever ``n``, ``E`` and ``k`` are;
    * ``clean_logprobs=None``: the unscrubbed readouts (``clean_log_probs``) come from
      the same clean pass that caches the resume activations, not from a pass of their own.

    Returns:
        ``[n, E]`` divergences (the ``statistic`` of the ``resamples`` rows' divergences,
        ``reduce_resamples``, one for all explanations or one per explanation; NaN
        where a rule found no agreeing source although every value occurs in trusted data)
        and the ``[n, E]`` mask of inputs on which some rule found no agreeing trusted
        source.
    """
    n, k, n_expl = len(inputs), resamples, len(explanations)
    statistics = [statistic] * n_expl if isinstance(statistic, str) else list(statistic)
    if len(statistics) != n_expl or not set(statistics) <= set(STATISTICS):
        raise ValueError(
            f"statistic must be one of {STATISTICS} or one per explanation ({n_expl}), got {statistic!r}."
        )
    keys = row_keys(inputs) if keys is None else keys
    unmatched = np.zeros((n, n_expl), dtype=bool)
    if n == 0 or n_expl == 0:
        return np.zeros((n, n_expl)), unmatched
    # explanations grouped by where their rows resume: (resume point, window start, the
    # places they patch) (start None: the adapter runs these rows whole, see _window_start)
    groups: dict[tuple[str | None, int | None, object], list[int]] = {}
    for j, e in enumerate(explanations):
        point = adapter.resume_point([s.hook for s in e.sites])
        start = _window_start(adapter, e.sites, readouts, inputs.shape[1]) if point is not None else None
        places = (
            tuple(
                sorted(
                    {
                        (
                            adapter.window_point(s.hook),
                            s.positions if isinstance(s.positions, tuple) else None,
                        )
                        for s in e.sites
                    },
                    key=repr,
                )
            )
            if start is not None
            else None
        )
        groups.setdefault((point, start, places), []).append(j)
    points = list(dict.fromkeys(p for p, _, _ in groups if p is not None))
    # windowed groups also need the clean run of the blocks they run: each block's input
    # (for keys and values, and the positions no patch reaches), then the last one's output
    kv_points = list(
        dict.fromkeys(
            h for p, st, _ in groups if p is not None and st is not None for h in adapter.window_inputs(p)
        )
    )
    windowed = any(st is not None for _, st, _ in groups)
    resid_points = [*kv_points, adapter.final_hook()] if windowed else []
    # the first position any readout reads (windowed runs compute their last block from there)
    readout_start = min(
        (r.position % inputs.shape[1] for r in readouts if r.position is not None), default=None
    )
    captured = list(dict.fromkeys(points + resid_points))  # one clean pass per chunk captures them all
    example = inputs[:1]
    per_input = 8 * k * sum(len(e.resamples) for e in explanations)  # source indices
    for hook, one in zip(captured, _capture_raw(adapter, example, captured) if captured else []):
        row_bytes = one[0].numel() * one.element_size()
        per_input += row_bytes * (hook in points or hook in resid_points)  # cached clean activations
        per_input += row_bytes * 2 * (hook in kv_points)  # clean keys and values
    chunk, rows_per_pass = _budget(adapter, example, explanations, pool, memory_mb, per_input, n, batch_size)
    groups = _merge_small_windows(groups, min(n, chunk) * k, rows_per_pass)
    bar = progress_bar(
        n * k * n_expl,
        f"scrubbing {n} inputs x {n_expl} explanations",
        unit="row",
        enabled=progress,
        leave=False,
    )
    device = adapter.device
    div = np.full((n, n_expl), np.nan)
    gaps = np.zeros((n, n_expl), dtype=bool)
    # what the passes read goes to the model's device once per call (nothing is copied on
    # the CPU): the pool's activations at the call's places and every rule's subspace, one
    # copy each, and the clean log-probabilities
    at_places = {SourcePool._place(s): s for e in explanations for s in e.sites}
    pool_acts = dict(
        zip(at_places, to_device([pool.acts(s).numpy() for s in at_places.values()], device, np.float32))
    )
    sites = list({id(s): s for e in explanations for s in e.sites}.items())
    # a piece's basis becomes its coordinates here, on the host (a test on the device waits)
    bases = [
        (i, coordinates(s.projection(pool.acts(s).shape[-1], adapter.head_width(s.hook)))) for i, s in sites
    ]
    projections: dict[int, torch.Tensor | None] = {i: None for i, b in bases if b is None}
    for dtype, selects in ((np.float32, False), (np.int64, True)):
        kind = [(i, b) for i, b in bases if b is not None and (b.dtype == torch.long) == selects]
        projections.update(zip([i for i, _ in kind], to_device([b.numpy() for _, b in kind], device, dtype)))
    clean_all = None if clean_logprobs is None else [c.to(device) for c in clean_logprobs]
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        # each distinct row's divergence stays where the model runs: no copy to the host (a
        # synchronisation on a GPU) per pass, one per chunk
        row_divs: list[torch.Tensor] = []
        layout: list[tuple[int, int, np.ndarray]] = []  # explanation, offset, inverse
        stored = 0
        m, x = b - a, inputs[a:b]
        # each input's sources depend on its key only, so chunking does not change them
        sources: dict[int, list[np.ndarray]] = {}
        classes: dict[int, np.ndarray] = {}
        for j, e in enumerate(explanations):
            sources[j], unmatched[a:b, j], gaps[a:b, j] = explanation_sources(
                pool, e, values[a:b], keys[a:b], k, seed
            )
            if e.target is not None:
                classes[j] = counterfactual_classes(counterfactual, e, values[a:b], pool, sources[j][0])
        # one clean pass: resume activations and (unless given) the unscrubbed readouts
        own = readouts if clean_all is None else ()
        got = _capture_raw(adapter, x, captured, rows_per_pass, own) if captured or own else []
        acts = dict(zip(captured, got))
        clean = got[len(captured) :] if clean_all is None else [c[a:b] for c in clean_all]
        kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        with torch.no_grad():
            for hook in kv_points:
                kv[hook] = adapter.prefix_kv(hook, acts[hook])
        # an explanation's rows with the same input, byte-identical source activations at
        # every site and the same counterfactual classes give the same output: each such
        # set runs once, as its first row, and counts for all
        i_all, k_all = np.repeat(np.arange(m), k), np.tile(np.arange(k), m)
        distinct: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for j, e in enumerate(explanations):
            cls = [classes[j].reshape(m * k, -1)] if j in classes else []
            distinct[j] = _distinct_rows(
                [i_all, *cls, *(pool.ids(r.site)[src.reshape(-1)] for r, src in zip(e.resamples, sources[j]))]
            )
        for (point, start, _), columns in groups.items():
            # the group's rows, explanation-major: (columns[p], input i, resample r), standing
            # for `count` rows
            parts = [
                (
                    np.full(len(distinct[j][0]), p),
                    i_all[distinct[j][0]],
                    k_all[distinct[j][0]],
                    distinct[j][1],
                )
                for p, j in enumerate(columns)
            ]
            table = [np.concatenate(t) for t in zip(*parts)]
            row_div = torch.empty(len(table[0]), dtype=torch.float64, device=device)
            for j in columns:
                layout.append((j, stored, distinct[j][2]))
                stored += len(distinct[j][0])
            row_divs.append(row_div)
            for s in range(0, len(table[0]), rows_per_pass):
                p_rows, i_rows, k_rows, count = (t[s : s + rows_per_pass] for t in table)
                tokens = x[torch.as_tensor(i_rows)]
                starts = np.flatnonzero(np.r_[True, p_rows[1:] != p_rows[:-1]])
                segments = [
                    (slice(int(st), int(en)), columns[p_rows[st]])
                    for st, en in zip(starts, np.r_[starts[1:], len(p_rows)])
                ]
                # the pass's indices reach the device in one copy: the rows' inputs and
                # cells, then per segment each rule's sources and any counterfactual classes
                host = [i_rows]
                for seg, j in segments:
                    ii, kk = i_rows[seg], k_rows[seg]
                    host += [src[ii, kk] for src in sources[j]] + (
                        [classes[j][ii, kk]] if j in classes else []
                    )
                moved = iter(to_device(host, device))
                at_rows = next(moved)
                by_hook: dict[str, list[tuple[slice, Site, torch.Tensor, torch.Tensor | None]]] = {}
                seg_classes: list[tuple[slice, torch.Tensor]] = []
                for seg, j in segments:
                    for rule in explanations[j].resamples:
                        vals = pool_acts[SourcePool._place(rule.site)][next(moved)]
                        pos = rule.site.position_index(tokens[seg])
                        by_hook.setdefault(rule.site.hook, []).append(
                            (seg, rule.site, vals, pos - start if pos is not None and start else pos)
                        )
                    if j in classes:
                        seg_classes.append((seg, next(moved)))
                logits = _run_segments(
                    adapter, point, tokens, acts, at_rows, by_hook, projections, start, kv, readout_start
                )
                scrubbed = readout_log_probs(readouts, logits)
                kl = kl_divergence([c[at_rows] for c in clean], scrubbed)
                for seg, seg_cls in seg_classes:  # interchange segments
                    kl[seg] = counterfactual_nll([q[seg] for q in scrubbed], seg_cls)
                row_div[s : s + len(p_rows)] = kl.double()
                bar.update(int(count.sum()))
        # every row of each explanation from the distinct row standing for it, reduced over
        # the resamples
        host_div = torch.cat(row_divs).cpu().numpy() if row_divs else np.zeros(0)
        for j, offset, inverse in layout:
            div[a:b, j] = reduce_resamples(host_div[offset:][inverse].reshape(m, k), statistics[j])
    bar.close()
    div[gaps] = np.nan
    return div, unmatched


def _distinct_rows(columns: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first row of each set of equal rows of the integer ``columns`` (``[rows]`` or
    ``[rows, c]`` each), in row order, how many rows each stands for, and for every row
    the index of the distinct row that stands for it."""
    key = np.ascontiguousarray(
        np.concatenate([np.asarray(c, dtype=np.int64).reshape(len(c), -1) for c in columns], 1)
    )
    # each row's bytes as one opaque value (np.unique's axis=0 is ~50x slower)
    _, first, inverse, count = np.unique(
        key.view(np.dtype((np.void, key.shape[1] * 8)))[:, 0],
        return_index=True,
        return_inverse=True,
        return_counts=True,
    )
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return first[order], count[order], rank[inverse.reshape(-1)]


class Interchanges:
    """Interchange interventions of one batch of ``base`` inputs with one batch of
    ``source`` inputs (row i from row i) at many sites, through the engine's windowed run
    ([`ModelAdapter.run_window`][causalmad.ModelAdapter.run_window]): what alignment
    measures IIA with. The base's clean run and the sources' activations are captured once
    per hook and reused for every site. The same interchange as ``interchange_pyvene`` up to
    float rounding (``tests/test_engine.py``), several times cheaper per site."""

    def __init__(
        self,
        adapter: ModelAdapter,
        base: torch.Tensor,
        source: torch.Tensor,
        readouts: Sequence[Readout],
        batch_size: int = 1024,
    ) -> None:
        self.adapter, self.base, self.source, self.readouts = adapter, base, source, list(readouts)
        self.batch_size = batch_size
        self._clean: dict[str, torch.Tensor] = {}  # the base's clean activations, per hook
        self._kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # its keys and values, per block input
        self._sources: dict[str, torch.Tensor] = {}  # the sources' activations, per hook
        self._projections: dict[int, torch.Tensor | None] = {}

    def _fill(self, cache: dict[str, torch.Tensor], x: torch.Tensor, hooks: Sequence[str]) -> None:
        """Capture ``x``'s activations at the ``hooks`` not in ``cache`` yet, in one pass."""
        need = [h for h in dict.fromkeys(hooks) if h not in cache]
        if need:
            cache.update(zip(need, _capture_raw(self.adapter, x, need, self.batch_size)))

    def prepare(self, sites: Sequence[Site]) -> None:
        """Capture the sources' activations at every hook of ``sites`` the windowed run can
        patch, in one pass."""
        self._fill(self._sources, self.source, [s.hook for s in sites if self.adapter.can_window([s.hook])])

    def logits(self, sites: Sequence[Site]) -> torch.Tensor | None:
        """Logits of the base with every one of ``sites`` taken from the sources, at the
        positions the readouts read (zeros elsewhere); ``None`` where the adapter cannot
        run these sites windowed (a site without fixed positions counts as all of them)."""
        from causalmad.interventions import _flat, _gather

        adapter, base = self.adapter, self.base
        point = adapter.resume_point([s.hook for s in sites])
        seq = int(base.shape[1]) if base.ndim > 1 else 1
        start = _window_start(adapter, sites, self.readouts, seq) if point is not None else None
        if point is None or start is None:
            return None
        inputs = adapter.window_inputs(point)
        clean_hooks = [point, *inputs, adapter.final_hook()]
        self._fill(self._clean, base, clean_hooks)
        self._fill(self._sources, self.source, [s.hook for s in sites])
        with torch.no_grad():
            for h in inputs:
                if h not in self._kv:
                    self._kv[h] = adapter.prefix_kv(h, self._clean[h])
        values = [
            _gather(_flat(adapter, self._sources[s.hook]), s.position_index(self.source)).float()
            for s in sites
        ]
        readout_start = min(r.position % seq for r in self.readouts if r.position is not None)
        out = []
        for a in range(0, len(base), self.batch_size):
            b = min(len(base), a + self.batch_size)
            x = base[a:b]
            acts = {h: self._clean[h][a:b] for h in clean_hooks}
            kv = {h: (self._kv[h][0][a:b], self._kv[h][1][a:b]) for h in inputs}
            by_hook: dict[str, list[tuple[slice, Site, torch.Tensor, torch.Tensor | None]]] = {}
            for site, vals in zip(sites, values):
                pos = site.position_index(x)
                by_hook.setdefault(site.hook, []).append(
                    (
                        slice(0, b - a),
                        site,
                        vals[a:b].to(adapter.device),
                        None if pos is None else pos - start,
                    )
                )
            rows = torch.arange(b - a, device=adapter.device)
            out.append(
                _run_segments(
                    adapter, point, x, acts, rows, by_hook, self._projections, start, kv, readout_start
                )
            )
        return torch.cat(out)


def _capture_raw(
    adapter: ModelAdapter,
    x: torch.Tensor,
    hooks: Sequence[str],
    batch_size: int = 1024,
    readouts: Sequence[Readout] = (),
) -> list[torch.Tensor]:
    """Outputs of ``hooks`` exactly as the model produced them (shape, dtype, device),
    followed by the unscrubbed log-probabilities of each of ``readouts`` from the same
    passes (as ``clean_log_probs`` computes them, on the model's device)."""
    from causalmad.interventions import _as_tensor, _hooks

    out: list[list[torch.Tensor]] = [[] for _ in range(len(hooks) + len(readouts))]
    for start in range(0, len(x), batch_size):
        got: dict[str, torch.Tensor] = {}

        def grab(output: object, name: str) -> object:
            got[name] = _as_tensor(output).detach()
            return output

        with torch.no_grad(), _hooks(adapter, [(h, lambda o, h=h: grab(o, h)) for h in hooks]):
            y = adapter.forward(x[start : start + batch_size].to(adapter.device))
        for i, h in enumerate(hooks):
            out[i].append(got[h])
        if readouts:
            for i, q in enumerate(readout_log_probs(readouts, y.float())):
                out[len(hooks) + i].append(q)
    return [torch.cat(o) for o in out]


def _merge_small_windows(
    groups: dict[tuple[str | None, int | None, object], list[int]],
    rows_per_explanation: int,
    rows_per_pass: int,
) -> dict[tuple[str | None, int | None, object], list[int]]:
    """Windowed groups of one resume point that fit in one pass together run as one, from
    their earliest start and patching what each patches: a few inputs then take a few
    passes, not one per window and place. Groups are packed in order of their start."""
    merged: dict[tuple[str | None, int | None, object], list[int]] = {}
    by_point: dict[str | None, list[tuple[int, object, list[int]]]] = {}
    for (point, start, places), columns in groups.items():
        if start is None:
            merged[(point, start, places)] = columns
        else:
            by_point.setdefault(point, []).append((start, places, columns))
    for point, items in by_point.items():
        items.sort(key=lambda it: (it[0], repr(it[1])))
        packs: list[list[tuple[int, object, list[int]]]] = []
        for item in items:
            rows = sum(len(c) for _, _, c in [*packs[-1], item]) * rows_per_explanation if packs else None
            if rows is not None and rows <= rows_per_pass:
                packs[-1].append(item)
            else:
                packs.append([item])
        for pack in packs:
            key = pack[0][:2] if len(pack) == 1 else (pack[0][0], tuple(places for _, places, _ in pack))
            merged[(point, *key)] = [j for _, _, c in pack for j in c]
    return merged


def _window_start(
    adapter: ModelAdapter, sites: Sequence[Site], readouts: Sequence[Readout], seq: int
) -> int | None:
    """The first position rows patching ``sites`` must recompute when the adapter can run a
    window ([`ModelAdapter.run_window`][causalmad.ModelAdapter.run_window]): the earliest
    patched position (or the earliest readout, if before); 0 when a site has no fixed
    positions. ``None``: the adapter cannot (the rows run whole,
    [`ModelAdapter.run_from`][causalmad.ModelAdapter.run_from])."""
    if (
        not adapter.can_window([s.hook for s in sites])
        or not readouts
        or any(r.position is None for r in readouts)
    ):
        return None
    firsts = [r.position % seq for r in readouts if r.position is not None]
    for site in sites:
        if not isinstance(site.positions, tuple):
            return 0
        firsts.append(min(p % seq for p in site.positions))
    return max(0, min(firsts))


def _run_segments(
    adapter: ModelAdapter,
    point: str | None,
    tokens: torch.Tensor,
    cache: dict[str, torch.Tensor],
    rows: torch.Tensor,
    by_hook: dict[str, list[tuple[slice, Site, torch.Tensor, torch.Tensor | None]]],
    projections: dict[int, torch.Tensor | None],
    start: int | None = None,
    kv: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    readout_start: int | None = None,
) -> torch.Tensor:
    """One forward pass in which each hook patches each segment of rows its own way
    (``start`` set: positions ``start`` onwards only, positions in ``by_hook`` counted from
    ``start``; see [`ModelAdapter.run_window`][causalmad.ModelAdapter.run_window]).
    ``rows``: the input each row is (an index into ``cache``), on the model's device."""
    from causalmad.interventions import _apply, _as_tensor, _flat, _hooks, _replace

    # every patch's positions reach the model's device in one copy; which window positions
    # a patch writes is worked out from the host's copy
    host_pos = [
        (h, i, pos)
        for h, patches in by_hook.items()
        for i, (_, _, _, pos) in enumerate(patches)
        if pos is not None
    ]
    moved = to_device([pos.numpy() for _, _, pos in host_pos], rows.device)
    on_device = {(h, i): pos for (h, i, _), pos in zip(host_pos, moved)}
    patches_at = {
        h: [(seg, site, vals, on_device.get((h, i))) for i, (seg, site, vals, _) in enumerate(patches)]
        for h, patches in by_hook.items()
    }

    def make(hook: str):  # noqa: ANN202 - closure factory
        def fn(output: object) -> object:
            act = _as_tensor(output)
            flat = _flat(adapter, act).clone()
            for seg, site, vals, pos in patches_at[hook]:
                if id(site) not in projections:
                    proj = coordinates(site.projection(flat.shape[-1], adapter.head_width(hook)))
                    if proj is not None:  # coordinates keep their integer dtype
                        proj = proj.to(flat.device, flat.dtype if proj.is_floating_point() else proj.dtype)
                    projections[id(site)] = proj
                flat[seg] = _apply(flat[seg], pos, vals, projections[id(site)])
            return _replace(output, flat.reshape(act.shape))

        return fn

    if start is not None and point is not None and kv is not None:
        fns: dict[str, list[Callable[[torch.Tensor], torch.Tensor]]] = {}
        touched: dict[str, torch.Tensor | None] = {}
        for h, patches in by_hook.items():
            name = adapter.window_point(h)
            fns.setdefault(name, []).append(make(h))
            where = [touched.get(name, torch.empty(0, dtype=torch.long)), *(pos for _, _, _, pos in patches)]
            known = [p for p in where if p is not None]
            touched[name] = (
                None if len(known) < len(where) else torch.cat([p.flatten() for p in known]).unique()
            )
        clean = CleanWindow(
            [kv[h] for h in adapter.window_inputs(point)],
            [cache[h] for h in [*adapter.window_inputs(point), adapter.final_hook()]],
            rows,
            touched,
        )
        with torch.no_grad():
            return adapter.run_window(point, start, cache[point][rows, start:], [], fns, readout_start, clean)
    with torch.no_grad(), _hooks(adapter, [(h, make(h)) for h in by_hook]):
        if point is None:
            return adapter.forward(tokens.to(adapter.device))
        return adapter.run_from(point, cache[point][rows], tokens.to(adapter.device))
