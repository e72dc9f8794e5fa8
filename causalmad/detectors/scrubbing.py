"""The causal-scrubbing detector: robust search over many candidate explanations.

``fit`` splits the trusted inputs into four disjoint parts — a source pool (activations
to patch in), an alignment split, a calibration split and a threshold split — aligns the
hypothesis' inner variables (``causalmad.alignment``), builds the explanation family
(``causalmad.explanations``), keeps the explanations whose mean divergence on the
calibration split stays within ``tolerance`` and stores each valid one's trusted
divergence distribution. ``score`` scrubs each input under every valid explanation and
every valid input-cut scrub (``causalmad.input_cut``: hybrids of the input and trusted
inputs, in both directions) and combines their two-sided tail probabilities under the
trusted divergences (``causalmad.calibration``; ``aggregation="max-z"``: the largest
standardised divergence instead): an input is anomalous
if *some* explanation that holds on trusted data breaks on it (Christiano et al.,
"Formalizing the presumption of independence" / ARC's MAD agenda; causal scrubbing, Chan
et al. 2022).
"""

from __future__ import annotations

import logging
import numbers
import warnings
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from causalmad import calibration, input_cut
from causalmad.alignment import Alignment, search
from causalmad.detectors.base import (
    DEFAULT_FPR,
    Detector,
    ExplainResult,
    ScoreDetails,
    register,
    split_indices,
)
from causalmad.errors import HypothesisError, InputError, PersistenceError
from causalmad.explanations import hypothesis_explanations, hypothesis_free_explanations, piece_explanations
from causalmad.hypothesis import Hypothesis, Readout
from causalmad.scrubbing import (
    STATISTICS,
    UNSCORED,
    Explanation,
    Resample,
    SourcePool,
    row_keys,
    scrub_many,
    seen_values,
)
from causalmad.sites import Site

logger = logging.getLogger(__name__)

#: rank of the DAS subspace ``das_rank="auto"`` learns for a variable no whole site carries
AUTO_DAS_RANK = 4
AGGREGATIONS = ("calibrated", "max-z")
#: an interchange explanation is calibrated separately for each value of its variable that
#: at least this many calibration inputs take (see ``_conditions``)
MIN_GROUP = 30
#: input-cut scrubs are screened on this many calibration inputs (``input_cut.testable``)
SCREEN = 40
SITE_CHOICES = ("earliest", "highest-iia")
#: the families of explanations built from the hypothesis (``hypothesis_statistic``)
HYPOTHESIS_FAMILIES = ("hypothesis", "hypothesis-subset", "hypothesis-interchange")
#: which outputs an interchange is scored on (``interchange_outputs``)
INTERCHANGE_OUTPUTS = ("downstream", "all")


def _num(x: float) -> float | None:
    """A float for JSON (``None`` for NaN)."""
    return None if np.isnan(x) else float(x)


def _plain(v: Hashable) -> Any:
    """A hypothesis value as a JSON-ready value."""
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        return v.item()
    if isinstance(v, tuple):
        return [_plain(u) for u in v]
    return v if isinstance(v, (int, float, str, bool)) or v is None else repr(v)


def nan_max(z: np.ndarray) -> np.ndarray:
    """Row-wise max ignoring NaN cells (a row of only NaN scores ``-inf``)."""
    return np.where(np.isnan(z), -np.inf, z).max(1)


@dataclass
class ScrubbingExplainResult(ExplainResult):
    """What [`ScrubbingDetector.explain`][causalmad.ScrubbingDetector.explain] returns: the common fields of
    [`ExplainResult`][causalmad.ExplainResult] (``details`` stays empty) and which
    explanations broke on the input.

    Attributes:
        broken: the ``top`` valid explanations whose scrub moved the output most, each a
            dict with ``explanation``, ``family``, ``divergence`` (nats), ``trusted_mean``,
            ``trusted_std``, ``z`` (standardised against trusted), ``p`` (its tail
            probability under trusted divergences, what the score combines) and
            ``unmatched`` (no trusted source matched the input's value).
        variables: for each hypothesis variable with an aligned site (and each output
            mechanism), a dict with ``variable``, ``explanation``, ``divergence`` of
            scrubbing it alone, ``trusted_mean``, ``z``, ``valid``, ``unmatched`` and
            ``share`` (its part of the excess divergence over trusted, summed over
            variables).
        values: the input's hypothesis values, variable -> value.
        values_unseen_in_trusted: the variables whose value no trusted input has (scrubbed
            from random trusted sources), sorted.
    """

    broken: list[dict[str, Any]] = field(default_factory=list)
    variables: list[dict[str, Any]] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    values_unseen_in_trusted: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict.

        Returns:
            ``score``, ``threshold``, ``fpr``, ``flagged``, ``broken``, ``variables``,
            ``values`` and ``values_unseen_in_trusted``, in that order.
        """
        return {
            **super().to_dict(),
            "broken": self.broken,
            "variables": self.variables,
            "values": self.values,
            "values_unseen_in_trusted": self.values_unseen_in_trusted,
        }


@register("scrubbing")
class ScrubbingDetector(Detector):
    """Flag inputs on which some trusted-valid explanation of the model breaks.

    Args:
        model: the network (TransformerLens bridge, ``nn.Module``) or an adapter.
        hypothesis: the declared causal hypothesis, or ``None`` to use hypothesis-free
            explanations only (then ``readouts`` says which outputs to compare).
        resamples: ``K``, trusted sources drawn per input and explanation.
        counterfactual_resamples: sources per input for interchange explanations, scored
            against the hypothesis' prediction for the changed variable: each is a
            per-input interchange accuracy, whose trusted failures are rare and
            pair-specific, so it needs many more pairs than ``K`` to tell them from an
            input whose mechanism systematically does not follow (only the model's part
            after the site runs for each).
        dual_resamples: trusted bases per input for dual input-cut scrubs (each a whole
            forward pass of a hybrid), scored likewise against the hypothesis' prediction.
        hypothesis_statistic: how an input's divergences under the sources of an
            explanation built from the hypothesis (families ``hypothesis``,
            ``hypothesis-subset``, ``hypothesis-interchange``) become one: ``"median"``
            (default) or ``"mean"`` (``causalmad.scrubbing.reduce_resamples``). Such an
            explanation claims the output follows the hypothesis under *every* source that
            agrees (or, for an interchange, differs) on its variables; a few sources break
            any input's output, trusted or not, by orders of magnitude more than the rest
            (a carry at the edge of its range), and the mean ranks inputs by how many of
            them they drew, the median by how the output moves under a typical one. (The
            "any source" runs that ``min_recovered`` compares an explanation with use its
            statistic too.)
        part_statistic: the same for the other families (pieces of sites, the input
            cut), whose signal may show under only some draws (a trigger that fires in
            some of the dual's bases): ``"trimmed"`` (default): the mean without the
            largest draw, so that a divergence two or more draws show counts while one
            hybrid that breaks the output by accident does not (a dual hybrid that
            completes a conjunctive trigger by chance, on a normal input, moves the
            output by orders of magnitude more than any trusted input's draws);
            ``"mean"``; ``"median"``.
        interchange_outputs: which outputs an interchange is scored on: ``"downstream"``
            (default): those downstream of its variable, whose change the hypothesis
            predicts (the others cannot change and add only their noise); ``"all"``.
        tolerance: an explanation is valid when its mean divergence (nats; over the
            calibration inputs, each input's divergence its statistic over its sources) on the
            calibration split is at most this ...
        min_recovered: ... or, for an explanation that matches sources on hypothesis
            variables, when it recovers at least this share of the divergence that its
            sites resampled from *any* trusted source cause (causal scrubbing's "loss
            recovered": ``1 - D(explanation) / D(same sites, unmatched sources)``); a
            confident classifier's divergences are heavy-tailed, so a correct claim can
            exceed a fixed ``tolerance``. ``None``: ``tolerance`` alone.
        min_iia: alignment-split IIA a variable's site needs to enter explanations; among
            the sites that reach it, alignment chooses the earliest in the model (the
            last residual stream at an output's position reaches any bar trivially, and
            an interchange there only copies the source's answer).
        site_choice: ``"earliest"`` (default): each variable's chosen site is the
            earliest reaching ``min_iia``; ``"highest-iia"``: the one of highest IIA.
        sites: variable -> candidate sites alignment tries for it, in place of the
            default grid (every candidate hook at the readout positions of the outputs
            the variable affects); ``None`` (default): the grid for every variable.
        hypothesis_free: whether the hypothesis-free claims (``causalmad.explanations``:
            "this head, this position, this complement of a principal subspace does not
            matter", at every hook and position) join the explanations: ``"auto"``
            (default): only when the hypothesis gives no claim of its own (there is none,
            or none of its variables reaches ``min_iia`` and no output is read at a
            position), so that they are the only claims there are; ``True``;
            ``False``. With a hypothesis, its own claims (each variable, each output
            mechanism, the interchanges, the input cut) are the tests of the mechanism;
            the hypothesis-free ones are many (most of a transformer's explanations and
            forward rows) and test no stated mechanism; over the benchmark's tiny tasks
            leaving them out raises or keeps every hard split but one at chance either
            way (``CHANGELOG.md``, "Measurement history", "What each mechanism buys").
        pca_variance: variance share of the principal subspace in hypothesis-free claims.
        das_rank: rank of the DAS subspaces alignment learns: an int learns them for every
            variable; ``"auto"`` (default) learns rank-4 ones only for variables that no
            whole site carries (best IIA below ``min_iia``); ``None`` never.
        n_pairs: (base, source) pairs per IIA measurement.
        readouts: outputs to compare when there is no hypothesis (default: last position).
        split: fractions of trusted inputs for pool, alignment, calibration, threshold.
        counterfactual_resolution: the resolution of an interchange column's divergence in
            its tail probability (``min_scale`` for the other columns; ``None``:
            ``min_scale`` for all). An interchange's divergence is the model's negative
            log-likelihood of the counterfactual the hypothesis predicts, which it mostly
            gives a probability near 1: a mechanism that half-resists moves it from 1e-5
            to 1e-4 nats, far below the 1e-3 nats under which a piece's effect on the
            output counts as none, yet far above the precision of a float32
            log-probability (about 1e-6 for logits of order 10), the default.
        min_scale: floor on each explanation's trusted divergence spread when standardising,
            and the resolution (and least tail scale) of every column's tail probability
            but the interchanges' (``counterfactual_resolution``).
        aggregation: how the divergences become one score: ``"calibrated"`` (default):
            two-sided tail probabilities under each explanation's trusted divergences,
            combined by Simes' test (``combination``; ``causalmad.calibration``), score
            ``-log p``; ``"max-z"``: the largest
            standardised divergence (many noisy columns bury the few that carry signal).
        combination: how ``"calibrated"`` combines the tail probabilities:
            ``"both"`` (default): the better of Simes' test by family (within, then across
            families: a signal one small family carries) and over every column at once (a
            signal spread over many columns), at twice its p-value; ``"by-family"`` or
            ``"flat"``: that test alone. Folders saved before it existed load with
            ``"by-family"``, what they were fitted and thresholded with.
        upper_tail: the model of each column's upper tail past its trusted values
            (``causalmad.calibration``): ``"gpd"`` (default), a generalized Pareto tail
            whose shape each column's trusted values choose (exponential where they show
            no heavier tail; polynomial where they do, so that one scrub that breaks the
            output by accident is unlikely rather than near ``e^-1000``);
            ``"exponential"`` (the shape held at 0) or ``"pareto"`` (Hill's estimator,
            always polynomial: at the cost of power where anomalies sit far out).
            ``docs/benchmarks.md`` measures all three. Folders saved before it existed
            load with ``"exponential"``.
        lower_tail: the model of each two-sided column's lower tail below its trusted
            values: ``"log"`` (default), an exponential tail in ``log(divergence +
            resolution)``, a power law toward zero, so that a scrub that moves an input's
            output a hundred times less than trusted inputs' is that much less likely; or
            ``"exponential"``, in the divergence itself, which caps that evidence at a
            modest tail probability (``causalmad.calibration``). Folders saved before it
            existed load with ``"exponential"``.
        weight_by_batch: when ``fit`` (or [`adapt`][causalmad.ScrubbingDetector.adapt])
            is given an unlabeled untrusted batch, a third test joins the combination:
            Simes over every column with each column's p-values weighted by how much
            signal the column shows on that batch (``causalmad.calibration.batch_weights``;
            stored as ``column_weights_``, so scores still depend on their input alone).
            ``False``: the batch is not used. Without a batch it changes nothing.
        input_cut: directions of the input-cut scrubs (``causalmad.input_cut``):
            ``"base"`` (trusted parts into ``x``, every hypothesis value kept) and
            ``"dual"`` (``x``'s parts into trusted inputs, scored against the hypothesis'
            prediction for the hybrid); default both; ``()`` for none. Without a
            hypothesis, or without parts (``causalmad.input_cut.part_masks``), none.
        input_cut_budget: at most this many subsets of input parts, each tested in every
            direction of ``input_cut``.
        site_parts: each claim of the hypothesis (a variable at its site, an output
            mechanism) is also tested on this many pieces of its sites
            (``causalmad.explanations.piece_explanations``: seeded random groups of the
            site's coordinates, one resampled at a time, the rest kept from ``x``); ``1``:
            none. A whole site resampled leaves nothing of ``x`` there, so an anomaly whose
            cause sits at the site too (a trigger that overdetermines the answer) leaves
            the scrubbed output; a piece keeps the rest of the cause in place.
        batch_size: most rows per scrubbed forward pass (fewer if ``memory_mb`` says so).
        memory_mb: memory budget of scoring (MiB): inputs are processed in chunks and
            passes capped so that cached activations plus one pass stay under it.
        random_state: seed of every random choice.
        progress: show a progress bar over explanations (off by default; on in the CLI).

    Example:
        >>> import causalmad as cm, torch  # doctest: +SKIP
        >>> det = cm.ScrubbingDetector(model, hypothesis=h).fit(trusted)  # doctest: +SKIP
        >>> det.score(untrusted)  # doctest: +SKIP
    """

    min_trusted = 40
    #: what a folder saved before these arguments existed was fitted with
    params_before_saved: ClassVar[dict[str, Any]] = {
        "hypothesis_statistic": "mean",
        "part_statistic": "mean",
        "interchange_outputs": "all",
        "counterfactual_resolution": None,
        "hypothesis_free": True,
        "site_parts": 1,
        "combination": "by-family",
        "weight_by_batch": True,
        "upper_tail": "exponential",
        "lower_tail": "exponential",
    }
    accepts_untrusted = True

    def __init__(
        self,
        model: Any,
        hypothesis: Hypothesis | None = None,
        resamples: int = 4,
        counterfactual_resamples: int = 32,
        dual_resamples: int = 8,
        hypothesis_statistic: str = "median",
        part_statistic: str = "trimmed",
        interchange_outputs: str = "downstream",
        tolerance: float = 0.1,
        min_recovered: float | None = 0.9,
        min_iia: float = 0.8,
        site_choice: str = "earliest",
        sites: dict[str, list[Site]] | None = None,
        hypothesis_free: bool | str = "auto",
        pca_variance: float = 0.99,
        das_rank: int | str | None = "auto",
        n_pairs: int = 256,
        readouts: list[Readout] | None = None,
        split: tuple[float, float, float, float] = (0.4, 0.2, 0.2, 0.2),
        min_scale: float = 1e-3,
        counterfactual_resolution: float | None = 1e-6,
        aggregation: str = "calibrated",
        combination: str = "both",
        upper_tail: str = "gpd",
        lower_tail: str = "log",
        weight_by_batch: bool = True,
        input_cut: tuple[str, ...] = ("base", "dual"),
        input_cut_budget: int = 32,
        site_parts: int = 2,
        batch_size: int = 1024,
        memory_mb: float = 2048.0,
        random_state: int = 0,
        progress: bool = False,
    ) -> None:
        super().__init__(model, random_state)
        self.hypothesis = hypothesis
        self.resamples = resamples
        self.counterfactual_resamples = counterfactual_resamples
        self.dual_resamples = dual_resamples
        self.hypothesis_statistic = hypothesis_statistic
        self.part_statistic = part_statistic
        self.interchange_outputs = interchange_outputs
        self.tolerance = tolerance
        self.min_recovered = min_recovered
        self.min_iia = min_iia
        self.site_choice = site_choice
        self.sites = sites
        self.hypothesis_free = hypothesis_free
        self.pca_variance = pca_variance
        self.das_rank = das_rank
        self.n_pairs = n_pairs
        self.readouts = readouts
        self.split = split
        self.min_scale = min_scale
        self.counterfactual_resolution = counterfactual_resolution
        self.aggregation = aggregation
        self.combination = combination
        self.upper_tail = upper_tail
        self.lower_tail = lower_tail
        self.weight_by_batch = weight_by_batch
        self.input_cut = input_cut
        self.input_cut_budget = input_cut_budget
        self.site_parts = site_parts
        self.batch_size = batch_size
        self.memory_mb = memory_mb
        self.progress = progress

    # ------------------------------------------------------------------ fit
    def fit(self, trusted: torch.Tensor, untrusted: torch.Tensor | None = None) -> ScrubbingDetector:
        """Align, build and validate the explanation family on trusted inputs, then (given
        ``untrusted``, an unlabeled batch, and ``weight_by_batch``) weight its columns by the
        signal each shows on that batch ([`adapt`][causalmad.ScrubbingDetector.adapt]).

        Args:
            trusted: ``[n, ...]`` inputs on which the model behaves normally.
            untrusted: an optional unlabeled ``[m, ...]`` batch of the inputs to be scored.

        Returns:
            ``self``, fitted.

        Raises:
            InputError: as [`Detector.fit`][causalmad.Detector.fit]; an argument out of range.
            HypothesisError: the hypothesis is not usable on the inputs.
        """
        self._check_params()
        super().fit(trusted, untrusted)
        return self

    def adapt(self, untrusted: torch.Tensor) -> ScrubbingDetector:
        """Weight the fitted columns by the signal each shows on an unlabeled untrusted
        batch, keeping everything fitted on trusted inputs: the batch's tail probabilities
        give each column a weight (``causalmad.calibration.batch_weights``), and the score
        adds Simes' test over the weighted columns to its combination; the held-out trusted
        scores and ``threshold_`` are recomputed with it. Scores stay per input: the
        weights are fixed until the next ``adapt`` or ``fit``. What
        ``fit(trusted, untrusted)`` does after fitting; calling it again replaces the weights.

        Args:
            untrusted: ``[m, ...]`` unlabeled inputs (at least one).

        Returns:
            ``self``, with ``column_weights_`` set (or unset if ``weight_by_batch`` is off or
            ``aggregation`` is ``"max-z"``).

        Raises:
            NotFittedError: if the detector is not fitted.
            InputError: if the inputs do not fit the model or the fitted shape, or the batch is empty.
            PersistenceError: a detector loaded from a folder saved before ``adapt`` existed
                (it lacks the held-out divergences the threshold is recomputed from): refit it.
        """
        x = self._check(untrusted)
        if "heldout_divergences_" not in self.__dict__:
            raise PersistenceError(
                "This detector was saved before adapt() existed and lacks its held-out trusted divergences; "
                "refit it to weight it by a batch."
            )
        self._adapt(x)
        self.threshold_ = self.threshold(DEFAULT_FPR)
        return self

    def _adapt(self, x: torch.Tensor) -> None:
        self.__dict__.pop("column_weights_", None)
        self.__dict__.pop("_adapted", None)
        if self.weight_by_batch and self.aggregation == "calibrated" and len(self.column_names_):
            if len(x) == 0:
                raise InputError("adapt needs at least one untrusted input, got an empty batch.")
            found = self._explanation_scores(x, self._values(x))
            self.column_weights_ = calibration.batch_weights(
                self._log_p(found[0]), self._log_p(self.heldout_divergences_)
            )
            # scoring the same batch next (as the benchmark does) reuses these divergences
            self._adapted = (self._scoring_key(x), found)
        self.heldout_scores_ = self.combine(self.heldout_divergences_)

    def _scoring_key(self, x: torch.Tensor) -> tuple[Any, ...]:
        """What an input batch's divergences depend on besides the fitted state."""
        return (
            row_keys(x).tobytes(),
            tuple(x.shape),
            self.resamples,
            self.counterfactual_resamples,
            self.dual_resamples,
            self.hypothesis_statistic,
            self.part_statistic,
            self.random_state,
        )

    def _check_params(self) -> None:
        """Check the hypothesis and every argument before any work (``fit`` and the cost
        estimate call it).

        Raises:
            HypothesisError: the hypothesis is not a [`Hypothesis`][causalmad.Hypothesis] or
                does not validate.
            InputError: an argument is out of its range or of the wrong type.
        """
        counts = {
            "resamples": self.resamples,
            "counterfactual_resamples": self.counterfactual_resamples,
            "dual_resamples": self.dual_resamples,
            "input_cut_budget": self.input_cut_budget,
            "site_parts": self.site_parts,
            "n_pairs": self.n_pairs,
            "batch_size": self.batch_size,
        }
        for name, value in counts.items():
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise InputError(f"{name} must be a whole number, got {value!r}.")
        if self.hypothesis is not None:
            if not isinstance(self.hypothesis, Hypothesis):
                raise HypothesisError(
                    f"hypothesis must be a causalmad.Hypothesis, got {type(self.hypothesis).__name__}."
                )
            self.hypothesis.validate()
        if min(self.resamples, self.counterfactual_resamples, self.dual_resamples) < 1:
            raise InputError(
                f"resamples, counterfactual_resamples and dual_resamples must be >= 1, got "
                f"{self.resamples}, {self.counterfactual_resamples} and {self.dual_resamples}."
            )
        if self.site_parts < 1:
            raise InputError(f"site_parts must be >= 1 (1: no pieces), got {self.site_parts}.")
        if not self.memory_mb > 0 or self.batch_size < 1:
            raise InputError(
                f"memory_mb must be > 0 and batch_size >= 1, got {self.memory_mb} and {self.batch_size}."
            )
        if not (
            self.das_rank is None
            or self.das_rank == "auto"
            or (isinstance(self.das_rank, int) and not isinstance(self.das_rank, bool) and self.das_rank > 0)
        ):
            raise InputError(f"das_rank must be a positive int, 'auto' or None, got {self.das_rank!r}.")
        if self.hypothesis_free not in (True, False, "auto"):
            raise InputError(f"hypothesis_free must be True, False or 'auto', got {self.hypothesis_free!r}.")
        if self.hypothesis is None and self.hypothesis_free in (False,):
            raise InputError(
                "hypothesis_free=False leaves no explanation without a hypothesis: give a hypothesis, "
                "or hypothesis_free='auto'."
            )
        if not set(self.input_cut) <= set(input_cut.DIRECTIONS) or isinstance(self.input_cut, str):
            raise InputError(f"input_cut must be a tuple of {input_cut.DIRECTIONS}, got {self.input_cut!r}.")
        self._check_scoring_params()
        if self.aggregation not in AGGREGATIONS:
            raise InputError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}.")
        if self.site_choice not in SITE_CHOICES:
            raise InputError(f"site_choice must be one of {SITE_CHOICES}, got {self.site_choice!r}.")
        if self.sites is not None:
            inner = set(self.hypothesis.inner) if self.hypothesis is not None else set()
            if not isinstance(self.sites, dict) or not all(
                k in inner and isinstance(v, (list, tuple)) and v and all(isinstance(t, Site) for t in v)
                for k, v in self.sites.items()
            ):
                raise InputError(
                    f"sites must map inner variables of the hypothesis ({sorted(inner)}) to non-empty "
                    f"lists of causalmad.Site, got {self.sites!r}."
                )
        if len(self.split) != 4 or abs(sum(self.split) - 1) > 1e-6 or min(self.split) <= 0:
            raise InputError(f"split must be four positive fractions summing to 1, got {self.split}.")

    def _values(self, x: torch.Tensor) -> list[dict[str, Hashable]]:
        if self.hypothesis is None:
            return [{} for _ in range(len(x))]
        return self.hypothesis.values_rows(x)  # type: ignore[return-value]

    def _fit(self, trusted: torch.Tensor, untrusted: torch.Tensor | None = None) -> None:
        for stale in ("column_weights_", "_adapted"):
            self.__dict__.pop(stale, None)
        adapter = self.adapter_
        h = self.hypothesis
        seq_len = int(trusted.shape[1]) if adapter.has_positions else 1
        self.readouts_ = self._readouts(seq_len)
        values = self._values(trusted)  # hypothesis errors surface here, before any forward pass
        pool_i, align_i, cal_i, thr_i = split_indices(len(trusted), self.split, self.random_state)
        take = lambda idx: (trusted[torch.as_tensor(idx)], [values[i] for i in idx])  # noqa: E731
        pool, align, cal, thr = take(pool_i), take(align_i), take(cal_i), take(thr_i)

        for site in (t for v in (self.sites or {}).values() for t in v):
            adapter.module(site.hook)  # an unknown hook: one line naming it, before any forward pass
        self.alignment_: Alignment | None = None
        if h is not None and h.inner:
            self.alignment_ = search(
                adapter,
                h,
                h.inner,
                align,
                pool,
                cal,
                n_pairs=self.n_pairs,
                random_state=self.random_state,
                sites=self.sites,
                prefer_earliest=self.min_iia if self.site_choice == "earliest" else None,
                **self._das_options(),
            )
        self.seen_values_ = seen_values(values)
        self.pool_ = SourcePool(adapter, *pool, seen=self.seen_values_)
        family: list[Explanation] = []
        if h is not None:
            family += hypothesis_explanations(adapter, h, self.alignment_, self.min_iia, seq_len)
        # "auto": without a hypothesis, or when it gives no claim of its own to test (no
        # variable reached the IIA bar and no output is read at a position)
        if not family if self.hypothesis_free == "auto" else bool(self.hypothesis_free):
            family += hypothesis_free_explanations(adapter, self.pool_, seq_len, self.pca_variance)
        # each claim of the hypothesis also on pieces of its sites, valid where the claim is
        pieces = piece_explanations(adapter, self.pool_, family, self.site_parts, self.random_state)
        claim_of = {len(family) + n: i for n, (_, i) in enumerate(pieces)}
        family += [e for e, _ in pieces]
        self.pool_.gather([s for e in family for s in e.sites])

        # each conditional explanation beside its own sites resampled from *any* trusted
        # source: how much of the output that destroys, the explanation must give back
        conditional = [
            i
            for i, e in enumerate(family)
            if e.target is None and i not in claim_of and any(r.match for r in e.resamples)
        ]
        ablations = [
            Explanation(
                f"{family[i].name} [any source]",
                family[i].family,
                [Resample(r.site) for r in family[i].resamples],
            )
            for i in conditional
        ]
        cal_div, cal_unmatched = self._divergences(family + ablations, cal[0], cal[1])
        ablated = np.full(len(family), np.nan)
        ablated[conditional] = cal_div[:, len(family) :].mean(0)
        cal_div, cal_unmatched = cal_div[:, : len(family)], cal_unmatched[:, : len(family)]
        self.calibration_unmatched_ = int(cal_unmatched.any(1).sum())
        # cells with no agreeing source measure the pool's coverage, not the explanation
        matched = np.where(cal_unmatched, np.nan, cal_div)
        with warnings.catch_warnings():  # an explanation no calibration input matches: all NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nan_to_num(np.nanmean(matched, 0), nan=np.inf)
            stds = np.nan_to_num(np.nanstd(matched, 0), nan=0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            recovered = np.where(ablated > 0, 1 - means / ablated, np.nan)
        valid = means <= self.tolerance
        if self.min_recovered is not None:
            valid |= np.nan_to_num(recovered, nan=-np.inf) >= self.min_recovered
        # an interchange explanation holds where its variable's IIA on the (held-out)
        # calibration split does: its divergence measures counterfactual errors
        for i, e in enumerate(family):
            if e.target is not None and self.alignment_ is not None:
                key = " + ".join(s.key for s in e.sites)
                cand = next(c for c in self.alignment_.candidates[e.target] if c.key == key)
                valid[i] = cand.heldout_iia >= self.min_iia
        for i, claim in claim_of.items():
            valid[i] = valid[claim]
        self.explanations_: list[dict[str, Any]] = [
            {
                "name": e.name,
                "family": e.family,
                "valid": bool(v),
                "trusted_mean_divergence": float(m),
                "trusted_std_divergence": float(s),
                "recovered": None if np.isnan(r) else float(r),
            }
            for e, v, m, s, r in zip(family, valid, means, stds, recovered)
        ]
        self.valid_ = [e for e, v in zip(family, valid) if v]
        self.variable_explanations_ = [e for e in family if e.family == "hypothesis-subset"]
        cut_div = self._fit_input_cut(trusted[0], cal)
        raw = np.concatenate([matched[:, valid], cut_div], 1)
        targets = [e.target for e in self.valid_] + [None] * cut_div.shape[1]
        self.columns_ = _conditions(raw, targets, cal[1])
        names = [e.name for e in self.valid_] + list(self.input_cut_["names"])
        families = [e.family for e in self.valid_] + [
            f"input-cut ({d})" for d in self.input_cut_["directions"]
        ]
        self.column_names_ = [names[j] + _describe(cond) for j, cond in self.columns_]
        self.families_ = [families[j] for j, _ in self.columns_]
        # an interchange is perfect at 0 (the model follows the hypothesis' counterfactual)
        # and its trusted failures are the alignment's imperfections: an input that follows
        # the counterfactual better than trusted inputs do shows a lucky site, not another
        # mechanism, so only its upper tail counts. Every other column is two-sided.
        self.two_sided_ = np.array([targets[j] is None for j, _ in self.columns_], dtype=bool)
        columns = _calibration_columns(raw, cal[1], self.columns_)
        self.loc_ = np.nanmean(columns, 0) if len(columns) else np.zeros(columns.shape[1])
        self.scale_ = np.nan_to_num(np.nanstd(columns, 0)) + self.min_scale
        # each column's trusted divergences (held out of alignment), the distribution
        # its divergence on an input is a tail probability under
        self.calibration_ = calibration.sorted_columns(columns)
        dropped = len(family) - len(self.valid_)
        logger.info(
            "explanations: %d searched, %d valid, %d dropped as invalid",
            len(family),
            len(self.valid_),
            dropped,
        )
        if not self.valid_:
            raise InputError(
                f"None of the {len(family)} candidate explanations holds on the trusted calibration split "
                f"(tolerance={self.tolerance} nats). Raise tolerance or check the hypothesis' readouts."
            )
        # the held-out trusted inputs' divergences: the threshold's scores, recomputed
        # from them when adapt weights the columns
        self.heldout_divergences_ = self._explanation_scores(thr[0], thr[1])[0]
        self.heldout_scores_ = self.combine(self.heldout_divergences_)
        if untrusted is not None:
            self._adapt(untrusted)

    def _fit_input_cut(
        self, example: torch.Tensor, cal: tuple[torch.Tensor, list[dict[str, Hashable]]]
    ) -> np.ndarray:
        """Build and validate the input-cut scrubs; ``[cal, valid scrubs]`` divergences.

        A base scrub holds when its mean divergence on the calibration split is within
        ``tolerance``; a dual scrub when the model gives the hypothesis' answer on at least
        ``min_iia`` of the calibration inputs' hybrids (an interchange accuracy)."""
        none: dict[str, Any] = {
            "names": [],
            "masks": np.zeros((0, *example.shape), dtype=bool),
            "directions": [],
        }
        self.input_cut_: dict[str, Any] = none
        if self.hypothesis is None or not self.input_cut:
            return np.zeros((len(cal[0]), 0))
        cut = input_cut.build(
            self.hypothesis, example, self.input_cut_budget, self.random_state, self.input_cut
        )
        # a scrub that makes no hybrid on the first calibration inputs tests (almost) none:
        # dropped before its sources are searched for every calibration input
        few = cal[0][:SCREEN]
        testable = input_cut.testable(
            self.hypothesis,
            cut["masks"],
            cut["directions"],
            few,
            cal[1][:SCREEN],
            row_keys(few),
            self.pool_.inputs,
            self.pool_.keys,
            self.resamples,
            seed=self.random_state,
        )
        self.explanations_ += [
            {
                "name": name,
                "family": f"input-cut ({d})",
                "valid": False,
                "trusted_mean_divergence": float("nan"),
                "trusted_std_divergence": float("nan"),
                "recovered": None,
                "untestable": True,
            }
            for name, d, t in zip(cut["names"], cut["directions"], testable)
            if not t
        ]
        cut = {
            "names": [n for n, t in zip(cut["names"], testable) if t],
            "masks": cut["masks"][testable],
            "directions": [d for d, t in zip(cut["directions"], testable) if t],
        }
        if not cut["names"]:
            return np.zeros((len(cal[0]), 0))
        div, agree = self._input_cut_divergences(cut, cal[0], cal[1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            means, agreement = np.nanmean(div, 0), np.nanmean(agree, 0)
        valid = np.where(
            np.array(cut["directions"]) == "dual",
            np.nan_to_num(agreement) >= self.min_iia,
            np.nan_to_num(means, nan=np.inf) <= self.tolerance,
        )
        self.explanations_ += [
            {
                "name": name,
                "family": f"input-cut ({d})",
                "valid": bool(v),
                "trusted_mean_divergence": float(m),
                "trusted_std_divergence": float(np.nanstd(div[:, j]))
                if np.isfinite(div[:, j]).any()
                else float("nan"),
                "recovered": None,
                **({"agreement": float(a)} if d == "dual" else {}),
            }
            for j, (name, d, v, m, a) in enumerate(
                zip(cut["names"], cut["directions"], valid, means, agreement)
            )
        ]
        keep = np.flatnonzero(valid)
        self.input_cut_ = {
            "names": [cut["names"][j] for j in keep],
            "masks": cut["masks"][keep],
            "directions": [cut["directions"][j] for j in keep],
        }
        return div[:, keep]

    def _input_cut_divergences(
        self, cut: dict[str, Any], x: torch.Tensor, values: list[dict[str, Hashable]]
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.hypothesis is None or not cut["names"]:
            return np.zeros((len(x), 0)), np.zeros((len(x), 0))
        return input_cut.scrub_input_cut(
            self.adapter_,
            self.hypothesis,
            self.readouts_,
            cut["masks"],
            cut["directions"],
            x,
            values,
            row_keys(x),
            self.pool_.inputs,
            self.pool_.keys,
            self.resamples,
            seed=self.random_state,
            batch_size=self.batch_size,
            dual_resamples=self.dual_resamples,
            statistic=self.part_statistic,
        )

    def _das_options(self) -> dict[str, Any]:
        if self.das_rank == "auto":
            return {"das_rank": AUTO_DAS_RANK, "das_if_below": self.min_iia}
        return {"das_rank": self.das_rank}

    def _readouts(self, seq_len: int) -> list[Readout]:
        if self.hypothesis is not None:
            rs = list(self.hypothesis.readouts.values())
        else:
            rs = self.readouts or [Readout(position=-1 if self.adapter_.has_positions else None)]
        for r in rs:
            if r.position is not None and not (
                self.adapter_.has_positions and -seq_len <= r.position < seq_len
            ):
                raise HypothesisError(
                    f"Readout position {r.position} does not exist for inputs of {seq_len} positions."
                )
        return rs

    # ------------------------------------------------------------------ score
    def _divergences(
        self, family: list[Explanation], x: torch.Tensor, values: list[dict[str, Hashable]]
    ) -> tuple[np.ndarray, np.ndarray]:
        # each input's sources depend only on the input, the explanation and the seed, so
        # a score does not depend on the batch the input is scored in; the unscrubbed
        # readouts come from the engine's own clean pass (clean_logprobs=None)
        # interchange explanations (per-input IIA) draw counterfactual_resamples sources
        div = np.full((len(x), len(family)), np.nan)
        unmatched = np.zeros((len(x), len(family)), dtype=bool)
        for k in sorted({self._resamples(e) for e in family}):
            cols = [j for j, e in enumerate(family) if self._resamples(e) == k]
            div[:, cols], unmatched[:, cols] = scrub_many(
                self.adapter_,
                [family[j] for j in cols],
                x,
                values,
                None,
                self.pool_,
                self.readouts_,
                k,
                seed=self.random_state,
                batch_size=self.batch_size,
                keys=row_keys(x),
                memory_mb=self.memory_mb,
                progress=self.progress,
                counterfactual=self._counterfactual,
                statistic=[self._statistic(family[j]) for j in cols],
            )
        return div, unmatched

    def _statistic(self, e: Explanation) -> str:
        return self.hypothesis_statistic if e.family in HYPOTHESIS_FAMILIES else self.part_statistic

    def _resamples(self, e: Explanation) -> int:
        return self.counterfactual_resamples if e.target is not None else self.resamples

    def _counterfactual(self, values: dict[str, Hashable], variable: str, value: Hashable) -> list[int]:
        """The classes the hypothesis predicts with ``variable`` set to ``value``, for the
        outputs downstream of it (``interchange_outputs="downstream"``);
        ``UNSCORED`` for the others. An
        interchange claims how the outputs that depend on its variable change; scoring
        the outputs that cannot change too adds their noise to every row, which buries a
        small but systematic departure (on the addition backdoor's hard split, the final
        carry's interchange at 0.94 AUROC over the thousands digit alone, 0.70 summed over
        all four digits)."""
        h = self.hypothesis
        if h is None:
            raise HypothesisError("Interchange explanations need a hypothesis.")
        affected = h.outputs if self.interchange_outputs == "all" else h.outputs_affected_by(variable)
        cf = h.counterfactual(values, {variable: value})
        return [int(cf[o]) if o in affected else UNSCORED for o in h.outputs]  # type: ignore[call-overload]

    def score_explanations(self, inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Standardised divergence of every input under every valid explanation.

        Returns:
            ``[n, E]`` z-scores (columns follow ``valid_``; NaN where the explanation could
            not be tested because the pool lacks the input's combination of values) and
            an ``[n, E]`` mask of cells where no trusted source shared the input's values.
        """
        x = self._check(inputs)
        _, z, unmatched = self._explanation_scores(x, self._values(x))
        return z, unmatched

    def divergences(self, inputs: torch.Tensor) -> np.ndarray:
        """``[n, C]`` each input's divergence under every valid explanation and input-cut
        scrub: the columns ``column_names_`` names, in ``families_``; NaN where a column
        could not be tested on the input. What ``score`` calibrates (``calibration_``)
        and combines."""
        x = self._check(inputs)
        return self._explanation_scores(x, self._values(x))[0]

    def _explanation_scores(
        self, x: torch.Tensor, values: list[dict[str, Hashable]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``[n, E]`` divergences, z-scores and unmatched mask under the valid explanations."""
        adapted = self.__dict__.pop("_adapted", None)
        if adapted is not None and adapted[0] == self._scoring_key(x):
            return adapted[1]  # type: ignore[no-any-return]
        div, unmatched = self._divergences(self.valid_, x, values)
        cut, _ = self._input_cut_divergences(self.input_cut_, x, values)
        raw = np.concatenate([div, cut], 1)
        unmatched = np.concatenate([unmatched, np.isnan(cut)], 1)
        columns = getattr(
            self, "columns_", [(j, None) for j in range(raw.shape[1])]
        )  # folders saved before columns_
        div = _expand(raw, values, columns)
        return div, (div - self.loc_) / self.scale_, unmatched[:, [j for j, _ in columns]]

    def _score(self, inputs: torch.Tensor) -> np.ndarray:
        return self._details(inputs).scores

    def score_details(self, inputs: torch.Tensor) -> ScoreDetails:
        """Scores with the columns they combine: ``parts`` holds ``divergences``, ``z``
        (standardised against trusted) and ``unmatched`` (no trusted source shared the
        input's values), each ``[n, C]`` over ``column_names_``, and ``unmatched_any``
        (``[n]``: some explanation, not counting the input cut, had no agreeing source)."""
        return self._details(self._check(inputs))

    def _details(self, inputs: torch.Tensor) -> ScoreDetails:
        values = self._values(inputs)
        div, z, unmatched = self._explanation_scores(inputs, values)
        # the input cut's NaN: no hybrid kept the values
        explanations = [not f.startswith("input-cut") for f in self.families_]
        unmatched_any = np.asarray(unmatched[:, explanations].any(1), dtype=bool)
        novel = self._novel(values)
        if novel.any():
            logger.warning(
                "%d input(s) have hypothesis values no trusted input shares; explanations matching "
                "on them scrubbed from random trusted sources (see explain())",
                int(novel.sum()),
            )
        gaps = int((unmatched_any & ~novel).sum())
        if gaps:
            logger.info(
                "%d input(s) have a combination of values missing from the source pool; the "
                "explanations that match on it were skipped for them",
                gaps,
            )
        return ScoreDetails(
            np.asarray(self.combine(div), dtype=np.float64),
            {"divergences": div, "z": z, "unmatched": unmatched, "unmatched_any": unmatched_any},
        )

    def combine(
        self,
        divergences: np.ndarray,
        columns: np.ndarray | None = None,
        weighted: bool = True,
    ) -> np.ndarray:
        """``[n]`` scores from ``[n, C]`` divergences
        ([`divergences`][causalmad.ScrubbingDetector.divergences]), combined as ``score``
        combines them, over the ``columns`` mask only (default: all): what the detector
        would score with only those explanations and scrubs (with ``column_weights_``, if
        set and ``weighted``, renormalised over them; ``weighted=False``: as if ``adapt``
        had not run). ``causalmad.evaluation.rescore_scrubbing`` scores them other ways
        (other tail models, combinations) from the detector's stored arrays."""
        keep = (
            np.ones(len(self.column_names_), dtype=bool)
            if columns is None
            else np.asarray(columns, dtype=bool)
        )
        div = np.asarray(divergences)[:, keep]
        if self.aggregation == "max-z":
            return nan_max((div - self.loc_[keep]) / self.scale_[keep])
        weights = self.__dict__.get("column_weights_") if weighted else None
        if weights is not None:
            weights = np.asarray(weights)[keep]
            weights = weights / weights.mean() if weights.sum() > 0 else np.ones(len(weights))
        families = [f for f, k in zip(self.families_, keep) if k]
        return calibration.score(self._log_p(div, keep), families, self.combination, weights)

    def _log_p(self, divergences: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
        """``[n, C']`` log tail probabilities of ``divergences`` under the trusted columns ``keep``."""
        keep = np.ones(len(self.column_names_), dtype=bool) if keep is None else keep
        return calibration.log_p_values(
            divergences,
            self.calibration_[:, keep],
            self.column_resolutions()[keep],
            self._two_sided()[keep],
            self.upper_tail,
            self.lower_tail,
        )

    def column_resolutions(self) -> np.ndarray:
        """``[C]`` the resolution each column's tail probability compares divergences at
        (``counterfactual_resolution`` for interchanges, ``min_scale`` for the rest)."""
        res = self.min_scale if self.counterfactual_resolution is None else self.counterfactual_resolution
        return np.where(np.asarray(self.families_) == "hypothesis-interchange", res, self.min_scale)

    def _two_sided(self) -> np.ndarray:
        """Per column: whether both tails count (folders saved before ``two_sided_``: all)."""
        return getattr(self, "two_sided_", np.ones(len(self.column_names_), dtype=bool))

    def _novel(self, values: list[dict[str, Hashable]]) -> np.ndarray:
        return np.array(
            [any(v not in self.seen_values_.get(k, ()) for k, v in row.items()) for row in values], dtype=bool
        )

    # ------------------------------------------------------------------ persistence
    def _get_state(self) -> dict[str, Any]:
        state = super()._get_state()
        state["pool_"] = self.pool_.state()
        return state

    _stored_arrays: ClassVar[dict[str, tuple[int, str | None]]] = {
        "heldout_scores_": (1, None),
        "loc_": (1, "column_names_"),
        "scale_": (1, "column_names_"),
        "calibration_": (2, "column_names_"),
        "two_sided_": (1, "column_names_"),
        "heldout_divergences_": (2, "column_names_"),
        "column_weights_": (1, "column_names_"),
    }

    def _check_scoring_params(self) -> None:
        res = self.counterfactual_resolution
        if res is not None and (isinstance(res, bool) or not isinstance(res, (int, float)) or not res > 0):
            raise InputError(f"counterfactual_resolution must be a positive number or None, got {res!r}.")
        for name in ("hypothesis_statistic", "part_statistic"):
            if getattr(self, name) not in STATISTICS:
                raise InputError(f"{name} must be one of {STATISTICS}, got {getattr(self, name)!r}.")
        if self.upper_tail not in calibration.TAILS:
            raise InputError(f"upper_tail must be one of {calibration.TAILS}, got {self.upper_tail!r}.")
        if self.lower_tail not in calibration.LOWER_TAILS:
            raise InputError(f"lower_tail must be one of {calibration.LOWER_TAILS}, got {self.lower_tail!r}.")
        if self.combination not in calibration.COMBINATIONS:
            raise InputError(
                f"combination must be one of {calibration.COMBINATIONS}, got {self.combination!r}."
            )
        if self.interchange_outputs not in INTERCHANGE_OUTPUTS:
            raise InputError(
                f"interchange_outputs must be one of {INTERCHANGE_OUTPUTS}, got {self.interchange_outputs!r}."
            )

    def _check_state(self) -> None:
        super()._check_state()
        self._check_scoring_params()  # what scoring reads, from a folder edited under trust_modified
        if "families_" in self.__dict__ and len(self.families_) != len(self.column_names_):
            raise ValueError(
                f"families_ has {len(self.families_)} entries for {len(self.column_names_)} columns"
            )

    def _restore(self) -> None:
        stored = self.pool_
        self.pool_ = SourcePool.from_state(self.adapter_, stored, seen=self.seen_values_)  # type: ignore[arg-type]
        if self.hypothesis is not None and self._values(self.pool_.inputs) != self.pool_.values:
            raise PersistenceError(
                f"Hypothesis {self.hypothesis.name!r} gives the stored trusted inputs other values than it "
                "gave them at fit time: its mechanisms changed since the detector was saved. Refit, or load "
                "with the hypothesis it was fitted with."
            )

    # ------------------------------------------------------------------ explain
    def explain(self, example: torch.Tensor, top: int = 5, fpr: float = 0.01) -> ScrubbingExplainResult:
        """Why one input scored as it did: which explanations and variables broke on it.

        Args:
            example: one input, with or without a leading batch axis of 1.
            top: how many of the explanations that broke most to report (``broken``).
            fpr: false-positive rate of the reported threshold (on held-out trusted
                inputs).

        Returns:
            A [`ScrubbingExplainResult`][causalmad.ScrubbingExplainResult]: ``score``,
            ``threshold``, ``fpr`` and ``flagged``; ``broken``, the ``top`` valid
            explanations whose scrub moved the output most; ``variables``, each hypothesis
            variable scrubbed alone and its share of the excess divergence; ``values``, the
            input's hypothesis values; ``values_unseen_in_trusted``. ``to_dict()`` makes it
            JSON-ready.

        Raises:
            NotFittedError: if the detector is not fitted.
            InputError: if ``example`` is a batch of more than one input, or does not fit.
        """
        x = torch.as_tensor(example)
        x = x.unsqueeze(0) if x.ndim == len(getattr(self, "input_shape_", ())) else x
        if len(x) != 1:
            raise InputError(f"explain takes one input, got a batch of {len(x)}.")
        x = self._check(x)
        threshold = self.threshold(fpr)
        values = self._values(x)
        div, z, unmatched = self._explanation_scores(x, values)
        div, z, unmatched = div[0], z[0], unmatched[0]
        score = float(self.combine(div[None])[0])
        p = np.exp(self._log_p(div[None])[0])
        stats = {e["name"]: e for e in self.explanations_}
        # the explanations that broke most: the smallest tail probability (largest z under "max-z")
        order = (
            np.argsort(np.nan_to_num(p, nan=np.inf))
            if self.aggregation == "calibrated"
            else np.argsort(-np.nan_to_num(z, nan=-np.inf))
        )
        broken = [
            {
                "explanation": self.column_names_[j],
                "family": self.families_[j],
                "divergence": _num(div[j]),
                "trusted_mean": float(self.loc_[j]),
                "trusted_std": float(self.scale_[j] - self.min_scale),
                "z": _num(z[j]),
                "p": _num(p[j]),
                "unmatched": bool(unmatched[j]),
            }
            for j in order[:top]
        ]
        singles = self.variable_explanations_
        vdiv, vunmatched = self._divergences(singles, x, values) if singles else (np.zeros((1, 0)),) * 2
        variables: list[dict[str, Any]] = []
        for j, e in enumerate(singles):
            st = stats[e.name]
            mean, std = float(st["trusted_mean_divergence"]), float(st["trusted_std_divergence"])
            variables.append(
                {
                    "variable": e.variables[0],
                    "explanation": e.name,
                    "divergence": _num(vdiv[0, j]),
                    "trusted_mean": mean,
                    "z": _num((vdiv[0, j] - mean) / (std + self.min_scale)),
                    "valid": bool(st["valid"]),
                    "unmatched": bool(vunmatched[0, j]),
                }
            )
        excess = np.array([max(0.0, (v["divergence"] or 0.0) - v["trusted_mean"]) for v in variables])
        for v, e in zip(variables, excess):
            v["share"] = float(e / excess.sum()) if excess.sum() > 0 else 0.0
        unseen = sorted(k for k, v in values[0].items() if v not in self.seen_values_.get(k, ()))
        return ScrubbingExplainResult(
            score,
            threshold,
            fpr,
            bool(score > threshold),
            broken=broken,
            variables=variables,
            values={k: _plain(v) for k, v in values[0].items()},
            values_unseen_in_trusted=unseen,
        )

    def summary(self) -> dict[str, Any]:
        """Counts of searched / valid explanations and input-cut scrubs, in all and per
        family, and the alignment."""
        self._require_fitted()
        fams: dict[str, dict[str, int]] = {}
        for e in self.explanations_:
            f = fams.setdefault(str(e["family"]), {"searched": 0, "valid": 0})
            f["searched"] += 1
            f["valid"] += int(e["valid"])
        return {
            "searched": len(self.explanations_),
            "valid": sum(f["valid"] for f in fams.values()),  # of those searched: the scrubs too
            "by_family": fams,
            "heldout_iia": self.alignment_.heldout_iia() if self.alignment_ else {},
        }


Condition = tuple[str, tuple[Hashable, ...], bool] | None


def _conditions(
    raw: np.ndarray, targets: list[str | None], values: list[dict[str, Hashable]]
) -> list[tuple[int, Condition]]:
    """The scored columns: ``(raw column, condition)`` pairs.

    An interchange explanation for variable ``v`` tests a different claim on inputs with
    different values of ``v`` (on a carry of 0 it claims that setting it to 1 changes the
    answer, and the other way round), and the two can fail on trusted inputs at very
    different rates. So its column splits into one per value of ``v`` that at least
    ``MIN_GROUP`` calibration inputs take (condition ``(v, (value,), True)``), each
    calibrated on those inputs alone, plus one for the other values (``(v, values,
    False)``). An input is tested in exactly one of them. Other columns: ``(j, None)``."""
    out: list[tuple[int, Condition]] = []
    for j, var in enumerate(targets):
        if var is None:
            out.append((j, None))
            continue
        seen = Counter(row[var] for row, d in zip(values, raw[:, j]) if np.isfinite(d))
        groups = tuple(sorted((v for v, count in seen.items() if count >= MIN_GROUP), key=repr))
        if len(seen) < 2 or not groups:  # one value, or none common enough to calibrate alone
            out.append((j, None))
            continue
        out += [(j, (var, (v,), True)) for v in groups] + [(j, (var, groups, False))]
    return out


def _describe(condition: Condition) -> str:
    if condition is None:
        return ""
    var, vals, include = condition
    return f" | {var}={vals[0]!r}" if include else f" | {var} otherwise"


def _holds(condition: Condition, values: list[dict[str, Hashable]]) -> np.ndarray:
    if condition is None:
        return np.ones(len(values), dtype=bool)
    var, vals, include = condition
    return np.array([(row[var] in vals) == include for row in values], dtype=bool)


def _expand(
    raw: np.ndarray, values: list[dict[str, Hashable]], columns: list[tuple[int, Condition]]
) -> np.ndarray:
    """``[n, C]`` scored columns from ``[n, R]`` raw ones: NaN where an input is not
    tested in a column (its value belongs to another)."""
    out = np.full((len(raw), len(columns)), np.nan)
    for c, (j, cond) in enumerate(columns):
        out[:, c] = np.where(_holds(cond, values), raw[:, j], np.nan)
    return out


def _calibration_columns(
    raw: np.ndarray, values: list[dict[str, Hashable]], columns: list[tuple[int, Condition]]
) -> np.ndarray:
    """``[m, C]`` each column's trusted divergences: those of the calibration inputs it
    tests (all of them for a column of other values that fewer than ``MIN_GROUP``
    calibration inputs fall in)."""
    out = _expand(raw, values, columns)
    for c, (j, _) in enumerate(columns):
        if np.isfinite(out[:, c]).sum() < MIN_GROUP:
            out[:, c] = raw[:, j]
    return out
