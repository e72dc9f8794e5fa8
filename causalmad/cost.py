"""What a scrubbing detector's fit and scoring will cost, before the work: forward rows
counted from the plan the detector executes, and seconds from a short timing pass of real
scrubbed rows on the user's model.

Rows per stage (``n_pairs`` ``P``, ``K`` = ``resamples``, ``Kc`` =
``counterfactual_resamples``, ``Kd`` = ``dual_resamples``):

- **alignment**: for each inner variable with a grid of ``G`` candidate sites, ``P`` pairs
  per site on the alignment split and again on the held-out split, and one round of the
  greedy site grouping (``min(24, G - 1)`` groups of ``P`` pairs). DAS training
  (``das_rank``) is not counted: whether ``"auto"`` learns a subspace is known only after
  the grid is scored.
- **validation**: every candidate explanation on the calibration inputs: ``K`` rows per
  input (``Kc`` for an interchange), twice for an explanation that matches sources on
  hypothesis values (it is compared with its sites resampled from any source). The
  hypothesis' family is counted as if every inner variable aligns (an upper bound: one
  that does not align builds fewer explanations); the hypothesis-free family exactly.
- **input cut**: the input-cut scrubs ``causalmad.input_cut.build`` plans, ``K`` hybrids
  per base scrub and ``Kd`` per dual scrub per calibration input (an upper bound: a
  hybrid that cannot keep the hypothesis' values is skipped). Each hybrid is a whole
  forward pass.
- **threshold** and **scoring**: every explanation and scrub on each threshold-split or
  untrusted input (an upper bound at fit: only the valid ones are scored).

A scrubbed row resumes from a cached activation and costs a fraction of a whole forward
pass, so the two are timed apart: ``scrubbed_rows_per_second`` from ``scrub_many`` on a
few trusted inputs under a sample of hypothesis-free explanations,
``forward_rows_per_second`` from whole forward passes.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from causalmad import input_cut
from causalmad.alignment import candidate_sites
from causalmad.detectors.base import split_indices
from causalmad.errors import InputError
from causalmad.explanations import INTERCHANGE_SITES, hypothesis_free_explanations
from causalmad.hypothesis import Readout
from causalmad.models import adapt
from causalmad.scrubbing import SourcePool, row_keys, scrub_many, seen_values

#: trusted inputs the timing pass uses as sources, and inputs it scrubs
TIMING_POOL = 64
#: positions the timing pass's explanations patch (spread over the input)
TIMING_POSITIONS = 4
TIMING_INPUTS = 24
#: times each timing pass runs (the least counts)
TIMING_REPEATS = 2
#: a timing run longer than this (seconds) is not repeated
REPEAT_BELOW = 1.0
#: explanations the timing pass scrubs (spread over the hypothesis-free family)
TIMING_EXPLANATIONS = 24
#: candidates each greedy grouping round of alignment tries (``alignment.search``'s ``group_from``)
GROUP_FROM = 24

#: what ``--budget`` may reduce, in the order it reduces them, each halved per step down to its floor
REDUCIBLE: tuple[tuple[str, int], ...] = (
    ("counterfactual_resamples", 8),
    ("input_cut_budget", 8),
    ("dual_resamples", 2),
    ("n_pairs", 64),
    ("resamples", 2),
)


@dataclass
class StageCost:
    """One stage's planned forward rows and estimated seconds.

    Attributes:
        name: ``alignment``, ``validation``, ``input cut``, ``threshold`` or ``scoring``.
        rows: forward rows (scrubbed rows, or whole passes for the input cut).
        seconds: the rows at the timed rate.
        note: what the count leaves out or bounds.
    """

    name: str
    rows: int
    seconds: float
    note: str = ""


@dataclass
class CostEstimate:
    """What [`estimate_fit_cost`][causalmad.estimate_fit_cost] or
    [`estimate_score_cost`][causalmad.estimate_score_cost] returns.

    Attributes:
        stages: each stage's rows and seconds, in the order they run.
        scrubbed_rows_per_second: the timed rate of scrubbed rows.
        forward_rows_per_second: the timed rate of whole forward passes.
        timing_seconds: what the timing pass itself took.
        params: the detector parameters the estimate is for.
    """

    stages: list[StageCost]
    scrubbed_rows_per_second: float
    forward_rows_per_second: float
    timing_seconds: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Forward rows of every stage together."""
        return sum(s.rows for s in self.stages)

    @property
    def seconds(self) -> float:
        """Estimated seconds of every stage together."""
        return sum(s.seconds for s in self.stages)

    def line(self) -> str:
        """The estimate in one line, for the command line."""
        parts = ", ".join(f"{s.name} {s.rows:,}" for s in self.stages if s.rows)
        return (
            f"estimate: {self.rows:,} forward rows ({parts}), about {duration(self.seconds)} at "
            f"{self.scrubbed_rows_per_second:,.0f} scrubbed rows/s (timed in {self.timing_seconds:.1f} s)"
        )

    def to_dict(self) -> dict[str, Any]:
        """The estimate as a JSON-ready dict.

        Returns:
            ``rows``, ``seconds``, the two rates, ``timing_seconds``, ``params`` and
            ``stages`` (each ``name``, ``rows``, ``seconds``, ``note``).
        """
        return {
            "rows": self.rows,
            "seconds": self.seconds,
            "scrubbed_rows_per_second": self.scrubbed_rows_per_second,
            "forward_rows_per_second": self.forward_rows_per_second,
            "timing_seconds": self.timing_seconds,
            "params": dict(self.params),
            "stages": [vars(s).copy() for s in self.stages],
        }


@dataclass(frozen=True)
class Budget:
    """A limit on a run: seconds or forward rows (one of them).

    Attributes:
        seconds: the most seconds, or ``None``.
        rows: the most forward rows, or ``None``.
    """

    seconds: float | None = None
    rows: float | None = None

    def fits(self, estimate: CostEstimate) -> bool:
        """Whether ``estimate`` stays within the budget."""
        if self.seconds is not None:
            return estimate.seconds <= self.seconds
        return estimate.rows <= (self.rows or 0)

    def __str__(self) -> str:
        return duration(self.seconds) if self.seconds is not None else f"{self.rows:,.0f} rows"


_BUDGET = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*(s|sec|min|m|h|rows?)\s*$", re.IGNORECASE)
_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_budget(text: str) -> Budget:
    """``"600s"``, ``"10min"``, ``"1.5h"`` or ``"2e6rows"`` as a [`Budget`][causalmad.cost.Budget].

    Args:
        text: a positive number with its unit: ``s``, ``min`` (or ``m``), ``h``, or ``rows``.

    Returns:
        The budget.

    Raises:
        InputError: if ``text`` is not a positive, finite number (a whole number of rows)
            followed by one of those units.
    """
    m = _BUDGET.match(text)
    value = float(m.group(1)) if m else 0.0
    rows = m is not None and m.group(2).lower().startswith("row")
    if not m or not 0 < value < math.inf or (rows and (value < 1 or value != int(value))):
        raise InputError(
            f"--budget {text!r}: give a positive, finite number of seconds or a whole number of "
            "forward rows, with its unit: e.g. 600s, 10min, 1.5h or 2e6rows."
        )
    unit = m.group(2).lower()
    return Budget(rows=value) if unit.startswith("row") else Budget(seconds=value * _UNITS[unit])


def duration(seconds: float) -> str:
    """``seconds`` for a person: ``45 s``, ``12 min``, ``3.1 h``."""
    s = round(seconds)
    return f"{s} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


# ---------------------------------------------------------------------- the plan
def _family_counts(detector: Any, adapter: Any, seq_len: int) -> dict[str, int]:
    """Explanations the fit builds: ``plain`` (``K`` rows each), ``matched`` (``K`` rows,
    plus as many for its any-source comparison at validation) and ``interchange`` (``Kc``)."""
    h = detector.hypothesis
    hooks = [
        k for k in adapter.candidate_hooks() if k.component in ("resid_pre", "resid_post", "module", "attn_z")
    ]
    n_pos = seq_len if adapter.has_positions else 1
    matched = interchange = pieces = 0
    if h is not None:
        n_var = len(h.inner)
        outputs = (
            [o for o in h.outputs if h.readouts[o].position is not None] if adapter.has_positions else []
        )
        matched = (1 + n_var if n_var else 0) + len(outputs) + (1 if len(outputs) > 1 else 0)
        interchange = INTERCHANGE_SITES * n_var
        # each variable's and each output's claim on pieces of its sites (no any-source run)
        pieces = (n_var + len(outputs)) * detector.site_parts if detector.site_parts > 1 else 0
    # the hypothesis-free claims: with "auto", only where the hypothesis has no claim of its own
    auto = detector.hypothesis_free == "auto"
    free = not (matched or interchange) if auto else bool(detector.hypothesis_free)
    # heads, or a PCA claim and the whole site
    plain = sum((k.n_heads or 2) * n_pos for k in hooks) if free else 0
    plain += pieces if h is not None else 0
    return {"plain": plain, "matched": matched, "interchange": interchange}


def _cut_counts(detector: Any, example: torch.Tensor) -> dict[str, int]:
    if detector.hypothesis is None or not detector.input_cut:
        return {"base": 0, "dual": 0}
    cut = input_cut.build(
        detector.hypothesis,
        example,
        detector.input_cut_budget,
        detector.random_state,
        tuple(detector.input_cut),
    )
    return {d: cut["directions"].count(d) for d in ("base", "dual")}


def _alignment_rows(detector: Any, adapter: Any, seq_len: int) -> int:
    h = detector.hypothesis
    if h is None:
        return 0
    rows = 0
    for var in h.inner:
        g = len((detector.sites or {}).get(var) or candidate_sites(adapter, h, var, seq_len))
        rows += detector.n_pairs * (2 * g + min(GROUP_FROM, max(g - 1, 0)))
    return rows


@dataclass
class _Plan:
    """Row counts of one fit, and the rates to turn them into seconds."""

    n_cal: int
    n_thr: int
    alignment: int
    family: dict[str, int]
    cut: dict[str, int]

    def per_input(self, d: Any) -> tuple[int, int]:
        """Scrubbed and whole-forward rows of scoring one input under everything."""
        f = self.family
        scrubbed = d.resamples * (f["plain"] + f["matched"]) + d.counterfactual_resamples * f["interchange"]
        n_groups = int(f["plain"] + f["matched"] > 0) + int(f["interchange"] > 0)
        forward = d.resamples * self.cut["base"] + d.dual_resamples * self.cut["dual"]
        return scrubbed + n_groups, forward + int(self.cut["base"] > 0)


def _timing(detector: Any, adapter: Any, trusted: torch.Tensor, seq_len: int) -> tuple[float, float, float]:
    """``(scrubbed rows/s, whole forward rows/s, seconds)`` from a short pass on the model.

    Each rate is marginal: the difference between a pass of a quarter of
    ``2 * TIMING_INPUTS`` inputs and one of all of them (each the least of
    ``TIMING_REPEATS`` runs when a run is shorter than ``REPEAT_BELOW``), so that a call's
    fixed cost (a clean pass, grouping, source draws), which the fit's large calls spread
    over many more rows, does not count."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(detector.random_state)
    n_x = min(2 * TIMING_INPUTS, len(trusted) // 2)  # few trusted inputs: half sources, half scrubbed
    take = rng.permutation(len(trusted))[: min(len(trusted), TIMING_POOL + n_x)]
    src, x = trusted[take[n_x:]], trusted[take[:n_x]]
    h = detector.hypothesis
    values = [h.values(r) for r in src] if h is not None else None
    pool = SourcePool(adapter, src, values, seen=seen_values(values) if values else None)
    # a few positions spread over the input: gathering every hook at every position (and a
    # principal basis at each) is most of the timing pass's cost on a long input
    positions = sorted({int(p) for p in np.linspace(0, seq_len - 1, min(TIMING_POSITIONS, seq_len))})
    family = hypothesis_free_explanations(adapter, pool, seq_len, detector.pca_variance, positions)
    pick = np.unique(np.linspace(0, len(family) - 1, min(TIMING_EXPLANATIONS, len(family))).astype(int))
    sample = [family[i] for i in pick]
    readouts = (
        list(h.readouts.values())
        if h is not None
        else detector.readouts or [Readout(position=-1 if adapter.has_positions else None)]
    )
    x_values = [h.values(r) for r in x] if h is not None else [{} for _ in range(len(x))]

    def scrub(n: int) -> float:
        t = time.perf_counter()
        scrub_many(
            adapter,
            sample,
            x[:n],
            x_values[:n],
            None,
            pool,
            readouts,
            detector.resamples,
            seed=detector.random_state,
            batch_size=detector.batch_size,
            keys=row_keys(x[:n]),
            memory_mb=detector.memory_mb,
        )
        return time.perf_counter() - t

    def forward(n: int) -> float:
        t = time.perf_counter()
        adapter.run_readouts(src[torch.arange(n) % len(src)], readouts, detector.batch_size)
        return time.perf_counter() - t

    n = len(x) // 4
    extra = max((len(x) - n) * len(sample) * detector.resamples, 1)

    def least(run: Any, m: int) -> float:
        # a shared machine only ever adds time: the least of TIMING_REPEATS runs, where a
        # run is short enough for the noise to matter
        first = run(m)
        return first if first > REPEAT_BELOW else min([first] + [run(m) for _ in range(TIMING_REPEATS - 1)])

    small, big = least(scrub, n), least(scrub, len(x))
    scrub_rate = extra / max(big - small, 1e-9)
    # whole passes: a quarter of the inputs, then four times them
    small, big = least(forward, len(x) // 4), least(forward, 4 * len(x))
    fwd_rate = (4 * len(x) - len(x) // 4) / max(big - small, 1e-9)
    return scrub_rate, fwd_rate, time.perf_counter() - t0


def _stages(
    detector: Any, plan: _Plan, n_untrusted: int, scrub_rate: float, fwd_rate: float
) -> list[StageCost]:
    d = detector
    f = plan.family
    validation = plan.n_cal * (
        d.resamples * (f["plain"] + 2 * f["matched"]) + d.counterfactual_resamples * f["interchange"] + 2
    )
    cut = plan.n_cal * (d.resamples * plan.cut["base"] + d.dual_resamples * plan.cut["dual"] + 1)
    if not plan.cut["base"] + plan.cut["dual"]:
        cut = 0
    scrubbed, forward = plan.per_input(d)
    stages = [
        StageCost("alignment", plan.alignment, plan.alignment / scrub_rate, "DAS training not counted"),
        StageCost("validation", validation, validation / scrub_rate, "as if every inner variable aligns"),
        StageCost("input cut", cut, cut / fwd_rate, "whole forward passes; an upper bound"),
        StageCost(
            "threshold",
            plan.n_thr * (scrubbed + forward),
            plan.n_thr * (scrubbed / scrub_rate + forward / fwd_rate),
            "every explanation, valid or not: an upper bound",
        ),
    ]
    if n_untrusted:
        stages.append(
            StageCost(
                "scoring",
                n_untrusted * (scrubbed + forward),
                n_untrusted * (scrubbed / scrub_rate + forward / fwd_rate),
                "every explanation, valid or not: an upper bound",
            )
        )
    return stages


def _params(detector: Any) -> dict[str, Any]:
    return {name: getattr(detector, name) for name, _ in REDUCIBLE}


class FitCost:
    """A fit's plan, timed once, re-estimated for other parameters at no further cost.

    Args:
        detector: an unfitted [`ScrubbingDetector`][causalmad.ScrubbingDetector] (its
            parameters are read, never changed).
        trusted: the trusted inputs ``fit`` will receive.
        n_untrusted: untrusted inputs to be scored after the fit (a ``scoring`` stage).

    Raises:
        InputError: if the trusted inputs do not fit the model or are too few.
    """

    def __init__(self, detector: Any, trusted: torch.Tensor, n_untrusted: int = 0) -> None:
        adapter = adapt(detector.model)
        x = adapter.check_inputs(trusted, "trusted inputs")
        if len(x) < detector.min_trusted:
            raise InputError(
                f"{type(detector).__name__} needs at least {detector.min_trusted} trusted inputs, "
                f"got {len(x)}."
            )
        if hasattr(adapter, "input_shape"):
            adapter.input_shape = tuple(x.shape[1:])
        self.detector, self.trusted, self.n_untrusted = detector, x, n_untrusted
        self.adapter = adapter
        self.seq_len = int(x.shape[1]) if adapter.has_positions else 1
        sizes = [len(i) for i in split_indices(len(x), detector.split, detector.random_state)]
        self.n_cal, self.n_thr = sizes[2], sizes[3]
        self.family = _family_counts(detector, adapter, self.seq_len)
        self.scrub_rate, self.fwd_rate, self.timing_seconds = _timing(detector, adapter, x, self.seq_len)

    def estimate(self, **params: Any) -> CostEstimate:
        """The estimate with ``params`` (names of ``REDUCIBLE``) in place of the detector's.

        Args:
            **params: detector parameters to estimate for instead (e.g. ``resamples=2``).

        Returns:
            The [`CostEstimate`][causalmad.CostEstimate].
        """
        d = _Params(self.detector, params)
        plan = _Plan(
            self.n_cal,
            self.n_thr,
            _alignment_rows(d, self.adapter, self.seq_len),
            self.family,
            _cut_counts(d, self.trusted[0]),
        )
        stages = _stages(d, plan, self.n_untrusted, self.scrub_rate, self.fwd_rate)
        return CostEstimate(stages, self.scrub_rate, self.fwd_rate, self.timing_seconds, _params(d))

    def within(self, budget: Budget) -> tuple[dict[str, Any], CostEstimate, bool]:
        """Parameters that fit ``budget``: ``REDUCIBLE``'s, each halved in turn (never
        raised, never below its floor) until the estimate fits.

        Args:
            budget: the [`Budget`][causalmad.cost.Budget].

        Returns:
            ``(changed parameters -> new value, the estimate with them, whether it fits)``;
            at every floor and still over the budget, the floors and ``False``.
        """
        current = _params(self.detector)
        est = self.estimate()
        while not budget.fits(est):
            stepped = False
            for name, floor in REDUCIBLE:
                if current[name] > floor:
                    current[name] = max(floor, current[name] // 2)
                    stepped = True
                    est = self.estimate(**current)
                    if budget.fits(est):
                        break
            if not stepped:
                break
        changed = {k: v for k, v in current.items() if v != getattr(self.detector, k)}
        return changed, est, budget.fits(est)


class _Params:
    """A detector's attributes with some replaced (the detector itself untouched)."""

    def __init__(self, detector: Any, params: dict[str, Any]) -> None:
        unknown = set(params) - {n for n, _ in REDUCIBLE}
        if unknown:
            raise InputError(f"estimate() takes {[n for n, _ in REDUCIBLE]}, got {sorted(unknown)}.")
        self._detector, self._params = detector, params

    def __getattr__(self, name: str) -> Any:
        if name in self.__dict__.get("_params", {}):
            return self._params[name]
        return getattr(self._detector, name)


def estimate_fit_cost(detector: Any, trusted: torch.Tensor, n_untrusted: int = 0) -> CostEstimate:
    """Forward rows and seconds per stage of ``detector.fit(trusted)`` (and of scoring
    ``n_untrusted`` inputs after it), before any of it runs.

    Rows are counted from the plan the fit executes (see the module docstring for what is
    exact and what is an upper bound); seconds come from a short timing pass of real
    scrubbed rows on the model (a few percent of a fit).

    Args:
        detector: an unfitted [`ScrubbingDetector`][causalmad.ScrubbingDetector].
        trusted: the trusted inputs ``fit`` will receive.
        n_untrusted: untrusted inputs to be scored after the fit.

    Returns:
        The [`CostEstimate`][causalmad.CostEstimate].

    Raises:
        InputError: if the trusted inputs do not fit the model or are too few.

    Example:
        >>> est = cm.estimate_fit_cost(cm.ScrubbingDetector(model, hypothesis=h), trusted)  # doctest: +SKIP
        >>> est.rows, est.seconds  # doctest: +SKIP
    """
    return FitCost(detector, trusted, n_untrusted).estimate()


def estimate_score_cost(
    detector: Any, inputs: torch.Tensor, n: int | None = None, chunk: int = 4096
) -> CostEstimate:
    """Forward rows and seconds of scoring ``n`` inputs with a fitted scrubbing detector.

    Rows are exact for the fitted plan (its valid explanations and input-cut scrubs, an
    input-cut hybrid counted whether or not it keeps the input's values). Seconds come
    from scoring the first half of ``inputs`` and then all of them: the difference is the
    cost of an input, the rest a fixed cost paid once per chunk of ``chunk`` inputs.

    Args:
        detector: a fitted [`ScrubbingDetector`][causalmad.ScrubbingDetector].
        inputs: a few of the inputs to score (two or more time the per-input cost apart
            from the fixed one), e.g. 16.
        n: inputs the run scores (default ``len(inputs)``).
        chunk: inputs per ``score`` call in the run.

    Returns:
        The [`CostEstimate`][causalmad.CostEstimate], one ``scoring`` stage.

    Raises:
        NotFittedError: if the detector is not fitted.

    Example:
        >>> cm.estimate_score_cost(det, untrusted[:16], n=len(untrusted)).seconds  # doctest: +SKIP
    """
    detector._require_fitted()
    n = len(inputs) if n is None else n
    valid = detector.valid_
    kc = sum(detector.counterfactual_resamples for e in valid if e.target is not None)
    k = sum(detector.resamples for e in valid if e.target is None)
    groups = int(kc > 0) + int(k > 0)
    dirs = list(detector.input_cut_["directions"])
    fwd = detector.resamples * dirs.count("base") + detector.dual_resamples * dirs.count("dual")
    fwd += int("base" in dirs)
    per_input = k + kc + groups + fwd
    t0 = time.perf_counter()
    half = len(inputs) // 2
    detector.score(inputs[:half]) if half else None
    t1 = time.perf_counter()
    detector.score(inputs)
    t2 = time.perf_counter()
    if half:
        each = max((t2 - t1) - (t1 - t0), 0.0) / (len(inputs) - half)
        fixed = max((t2 - t1) - each * len(inputs), 0.0)
    else:
        each, fixed = (t2 - t1) / max(len(inputs), 1), 0.0
    seconds = n * each + fixed * -(-n // max(chunk, 1))
    rate = per_input / each if each > 0 else float("inf")
    stage = StageCost("scoring", n * per_input, seconds, "timed on the model")
    params = {name: getattr(detector, name) for name, _ in REDUCIBLE}
    return CostEstimate([stage], rate, rate, t2 - t0, params)


__all__ = [
    "Budget",
    "CostEstimate",
    "FitCost",
    "StageCost",
    "duration",
    "estimate_fit_cost",
    "estimate_score_cost",
    "parse_budget",
]
