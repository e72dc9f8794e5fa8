"""Calibration: each explanation's divergence as a tail probability under its own trusted
distribution, and a combination of many explanations that null ones cannot dilute.

The scrubbing detector tests an input under many explanations. Their divergences live on
different scales and have different tails (a confident classifier's KL divergences are
heavy-tailed), so the largest standardised divergence is dominated by whichever
explanation is noisiest, not by the one that carries signal. Here every explanation's
divergence on an input becomes a p-value against the same explanation's divergences on
held-out trusted inputs:

* the empirical tail, ``(1 + #{trusted >= d}) / (m + 1)``, and beyond the top
  ``TAIL`` share of trusted values a fitted tail, so that values past every trusted one
  keep their order instead of tying at ``1 / (m + 1)``. By default
  (``tail="gpd"``) the generalized Pareto law of the peaks-over-threshold model (Pickands,
  "Statistical inference using extreme order statistics", Ann. Statist. 1975: the law
  that the excesses over a high threshold tend to for a broad class of distributions),
  its shape estimated from the column's own top values (Zhang and Stephens, "A new and
  efficient estimation method for the generalized Pareto distribution", Technometrics
  2009) and kept at 0 or above: shape 0 is an exponential tail, a positive shape a
  polynomial one. The shape matters because a divergence is a KL or a negative
  log-likelihood and can be heavy-tailed: a scrub that breaks the output by accident (a
  hybrid that completes a trigger by chance) moves it a thousand times more than a
  typical one, and an exponential tail (``tail="exponential"``, shape 0 imposed) fitted
  to such a column puts a value far out at ``e^-1000``; one accident then outranks every
  real signal, on held-out trusted inputs too, where it sets the 1 % FPR threshold.
  Where a column's top values show no heavier tail, the estimate is near 0 and the two
  agree. ``tail="pareto"`` imposes a polynomial tail instead: Hill's estimator of the
  tail index from the log-excesses of the top values over the threshold (Hill, "A simple
  general approach to inference about the tail of a distribution", Ann. Statist. 1975),
  on ``d + resolution`` so that a column whose trusted values are mostly zero has one; it
  costs power where nothing breaks by accident and anomalies sit far out (a corner patch
  that fires in every hybrid holding it). ``docs/benchmarks.md`` measures the three.
  The lower tail of a divergence is bounded by zero. A nonnegative quantity with a
  density at zero is below ``eps`` with a probability proportional to ``eps``: a power
  law, which ``lower_tail="log"`` (the default) fits as an exponential tail in
  ``log(d + resolution)``, so that ten times less movement is a fixed factor less likely,
  down to the resolution. An exponential tail in ``d`` itself
  (``lower_tail="exponential"``) caps the evidence: a scrub that leaves an input's output
  exactly where it was is then at most ``e^(-u / scale)`` below the threshold ``u``,
  however far every trusted scrub moves the output;
* two-sided: an input whose scrub moves the output far *less* than trusted inputs ever do
  is suspicious too (a trigger that holds the output in place, an overdetermined output),
  so ``p = min(1, 2 min(p_upper, p_lower))``;

and the p-values are combined with Simes' test (Simes, "An improved Bonferroni procedure
for multiple tests of significance", Biometrika 1986: valid under positive dependence; an
explanation whose p-values are uniform on normal and anomalous inputs alike cannot pull a
small p-value up by more than the factor the number of tests grows by, the same factor for
every input). Two Simes combinations see different anomalies, and the score takes the
better of the two, paying a factor 2 for the choice (Bonferroni over the two tests):

* **by family**: Simes within each family of explanations, then across families. A signal
  that one small family carries (one interchange among many explanations) pays only for the
  number of families, not for every explanation;
* **flat**: Simes over every explanation at once. A signal spread over many explanations of
  a large family (a trigger that every input-cut scrub containing its part fires) adds up
  there, while by family it would count once, level with a single noisy explanation of a
  one-explanation family.

Given an unlabeled untrusted batch (``batch_weights``), a third test joins the two, at
three times the smallest p-value: Simes over every column, each p-value divided by a
weight that says how much signal its column shows on the batch (Genovese, Roeder and
Wasserman, "False discovery control with p-value weighting", Biometrika 2006: weights
that average 1 keep the test valid). A column's weight is ``(1 - pi0) / pi0``, with
``pi0`` its share of null p-values on the batch as Storey's estimator gives it (the
group-weighted procedure of Hu, Zhao and Zhou, "False discovery rate control with groups",
JASA 2010, with each column a group): a column whose p-values on the batch are as uniform
as on trusted inputs weighs nothing, one where many inputs have small p-values weighs
most. The weights are fitted once and kept, so a score still depends only on its input.

The detector's score is ``-log`` of the combined p-value: higher = more anomalous.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TAIL = 0.1  # share of the largest (smallest) trusted values the exponential tail is fitted to
#: ``combine``'s ways: the better of the two Simes tests (default), or one of them alone
COMBINATIONS = ("both", "by-family", "flat")
#: the upper tail models ``log_p_values`` fits past the top ``TAIL`` share
TAILS = ("gpd", "exponential", "pareto")
#: the lower tail models ``log_p_values`` fits past the bottom ``TAIL`` share
LOWER_TAILS = ("log", "exponential")
#: Storey's lambda: a column's share of null p-values is estimated from those above it
STOREY_LAMBDA = 0.5


def sorted_columns(trusted: np.ndarray) -> np.ndarray:
    """``[m, E]`` trusted divergences sorted within each column, NaN last (what
    ``p_values`` reads; the state a detector stores)."""
    return np.sort(np.asarray(trusted, dtype=np.float64), axis=0)


def _log_upper(column: np.ndarray, d: np.ndarray, floor: float, tail: str = "exponential") -> np.ndarray:
    """Log upper-tail probability of each of ``d`` under the sorted finite trusted
    ``column``: empirical up to the top ``TAIL`` share, then the ``tail`` model (see the
    module docstring; ``"pareto"`` reads the values as nonnegative divergences)."""
    m = len(column)
    at_least = m - np.searchsorted(column, d, side="left")
    log_p = np.log((1.0 + at_least) / (m + 1.0))
    k = max(1, int(np.ceil(TAIL * m)))
    u = column[m - k]
    if tail == "gpd":
        # fitted to the excesses over one resolution step below u (every one positive),
        # read at d - u, as the exponential tail is
        shape, scale = gpd_fit(column[m - k :] - u + floor)
        scale = max(scale, floor)
        y = np.maximum(d - u, 0.0)
        if shape > 1e-9:
            log_tail = np.log((k + 1.0) / (m + 1.0)) - np.log1p(shape * y / scale) / shape
        else:
            log_tail = np.log((k + 1.0) / (m + 1.0)) - y / scale
        return np.where(d > u, log_tail, log_p)
    if tail == "pareto":
        # Hill's estimator on log(v + floor): no tail steeper than one resolution step at u
        g = lambda v: np.log(np.maximum(v, 0.0) + floor)  # noqa: E731
        scale = max(float(np.mean(g(column[m - k :]) - g(u))), floor / (max(u, 0.0) + floor))
        excess = g(d) - g(u)
    else:
        scale = max(float(np.mean(column[m - k :] - u)), floor)
        excess = d - u
    log_tail = np.log((k + 1.0) / (m + 1.0)) - excess / scale
    return np.where(d > u, log_tail, log_p)


def _log_lower(column: np.ndarray, d: np.ndarray, floor: float, tail: str = "exponential") -> np.ndarray:
    """Log lower-tail probability of each of ``d`` under the sorted finite trusted
    ``column``: empirical down to the bottom ``TAIL`` share, then an exponential tail in
    ``d`` (``"exponential"``) or in ``log(d + floor)`` (``"log"``; see the module docstring)."""
    if tail == "exponential":
        return _log_upper(-column[::-1], -d, floor)
    m = len(column)
    at_most = np.searchsorted(column, d, side="right")
    log_p = np.log((1.0 + at_most) / (m + 1.0))
    k = max(1, int(np.ceil(TAIL * m)))
    u = column[k - 1]
    g = lambda v: np.log(np.maximum(v, 0.0) + floor)  # noqa: E731
    # no tail steeper than one resolution step at u
    scale = max(float(np.mean(g(u) - g(column[:k]))), floor / (max(u, 0.0) + floor))
    log_tail = np.log((k + 1.0) / (m + 1.0)) - (g(u) - g(d)) / scale
    # where trusted values lie at or below d (ties at zero), never below their frequency
    log_tail = np.where(at_most > 0, np.maximum(log_tail, log_p), log_tail)
    return np.where(d < u, log_tail, log_p)


def gpd_fit(excesses: np.ndarray) -> tuple[float, float]:
    """``(shape, scale)`` of a generalized Pareto law fitted to positive ``excesses`` by
    Zhang and Stephens' estimator (Technometrics 2009: a posterior mean over a grid of
    profile-likelihood candidates, stable on a few dozen values where maximum likelihood
    is not), the shape clipped at 0 (no tail lighter than exponential, whose scale is
    then the mean excess). Shape ``xi`` > 0: survival ``(1 + xi y / scale)^(-1 / xi)``.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> light, _ = gpd_fit(rng.exponential(size=400))
        >>> heavy, _ = gpd_fit(rng.pareto(2.0, size=400))  # tail index 2: shape 1/2
        >>> bool(light < 0.1 and 0.35 < heavy < 0.65)
        True
    """
    x = np.sort(np.asarray(excesses, dtype=np.float64))
    n = len(x)
    if n < 2 or not x[-1] > x[0]:
        return 0.0, max(float(np.mean(x)), 0.0) if n else 0.0
    grid = 30 + int(np.sqrt(n))
    b = 1.0 - np.sqrt(grid / (np.arange(1, grid + 1) - 0.5))
    b = b / (3.0 * x[max(int(n / 4 + 0.5) - 1, 0)]) + 1.0 / x[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.log1p(-b[:, None] * x[None]).mean(1)
        profile = n * (np.log(-b / k) - k - 1.0)
    # a candidate at b = 0 (0 / 0) has no likelihood of its own; it weighs nothing
    profile = np.where(np.isfinite(profile), profile, -np.inf)
    if not np.isfinite(profile).any():
        return 0.0, float(np.mean(x))
    w = np.exp(profile - profile.max())  # the candidates' posterior weights
    b_post = float(np.sum(b * w / w.sum()))  # -shape / scale
    shape = float(np.log1p(-b_post * x).mean())
    if not shape > 0.0 or not np.isfinite(shape):
        return 0.0, float(np.mean(x))
    return shape, -shape / b_post


def log_p_values(
    divergences: np.ndarray,
    trusted_sorted: np.ndarray,
    floor: float | Sequence[float] | np.ndarray,
    two_sided: bool | Sequence[bool] | np.ndarray = True,
    tail: str = "gpd",
    lower_tail: str = "log",
) -> np.ndarray:
    """``[n, E]`` logs of the two-sided tail probabilities of ``divergences`` (``[n, E]``)
    under each column's trusted distribution (``trusted_sorted`` from
    ``sorted_columns``); logs, because past every trusted value the tail probability
    falls exponentially and would underflow.

    ``floor`` is the resolution of a divergence (in its units): divergences are compared
    in whole multiples of it, and no exponential tail is steeper than it. An explanation
    whose scrubs do not matter moves the output by float noise only; at full precision
    that noise would rank inputs as finely as a real signal (uniform p-values, on every
    input alike, which a combination must then pay for), at the resolution it is a tie
    and every p-value is 1. ``floor``: one resolution for every column, or one per column.
    NaN divergences (untestable cells) and columns without trusted values give NaN.
    ``two_sided``: one flag for every column, or one per column; ``False``: the upper tail
    alone. ``tail``: the upper tail's model past the top ``TAIL`` share, ``"gpd"``
    (default), ``"exponential"`` or ``"pareto"``; ``lower_tail``: the lower tail's, of two-sided
    columns, ``"log"`` (default) or ``"exponential"`` (the module docstring compares them).
    """
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}, got {tail!r}.")
    if lower_tail not in LOWER_TAILS:
        raise ValueError(f"lower_tail must be one of {LOWER_TAILS}, got {lower_tail!r}.")
    floors = np.broadcast_to(np.asarray(floor, dtype=np.float64), (np.shape(divergences)[1],))
    d = np.floor(np.asarray(divergences, dtype=np.float64) / floors) * floors
    trusted_sorted = np.floor(trusted_sorted / floors) * floors
    out = np.full(d.shape, np.nan)
    sides = np.broadcast_to(np.asarray(two_sided, dtype=bool), (d.shape[1],))
    for j in range(d.shape[1]):
        col = trusted_sorted[:, j]
        col = col[np.isfinite(col)]
        ok = np.isfinite(d[:, j])
        if len(col) == 0 or not ok.any():
            continue
        x = d[ok, j]
        upper = _log_upper(col, x, floors[j], tail)
        if not sides[j]:
            out[ok, j] = upper
            continue
        lowest = np.minimum(upper, _log_lower(col, x, floors[j], lower_tail))
        out[ok, j] = np.minimum(0.0, np.log(2.0) + lowest)
    return out


def simes(log_p: np.ndarray) -> np.ndarray:
    """Simes' combination of each row of ``log_p`` (``[n, E]`` log p-values), as a log:
    ``min_j E' p_(j) / j`` over the row's ``E'`` informative values in ascending order;
    0 (p = 1) for a row with none. Not clipped at p = 1, so that rows with no small
    p-value keep an order.

    NaN cells (untestable) and cells with p = 1 are not counted: p = 1 means the input
    ties with the bulk of trusted inputs at the divergence's resolution, as every input
    does under an explanation whose scrubs never move the output. Such a test could not
    have rejected, so it costs nothing (Tarone, "A modified Bonferroni method for discrete
    data", Biometrics 1990): appending explanations that do not matter leaves every
    score as it was."""
    log_p = np.asarray(log_p, dtype=np.float64)
    return weighted_simes(log_p, np.ones(log_p.shape[1]))


def by_family(log_p: np.ndarray, families: Sequence[str]) -> np.ndarray:
    """``[n]`` log p-values: Simes within each family of columns, then across families."""
    names = sorted(set(families))
    if not names:
        return np.zeros(len(log_p))
    fam = np.asarray(families)
    return simes(np.stack([simes(log_p[:, fam == f]) for f in names], 1))


def batch_weights(
    log_p: np.ndarray, trusted_log_p: np.ndarray | None = None, lam: float = STOREY_LAMBDA
) -> np.ndarray:
    """``[E]`` column weights from an unlabeled batch's ``[m, E]`` log p-values: ``(1 -
    pi0) / pi0`` per column, normalised to mean 1. ``pi0``, the column's share of null
    inputs in the batch, is Storey's estimate (Storey, Taylor and Siegmund, JRSS B 2004):
    the share of the batch's p-values above ``lam`` (plus one, conservatively) over the
    share a null column has there, at most 1. That share is ``1 - lam`` for uniform
    p-values; given ``trusted_log_p`` (``[m', E]``, trusted inputs held out of the
    calibration), it is the trusted inputs' own share, so that a column whose p-values tie
    at 1 for most trusted inputs (a scrub that rarely moves the output) is judged against
    the ties it has, not against a uniform law. NaN cells do not count. A column with no
    counted cell, or whose batch looks null, weighs 0; if every column does, every weight
    is 1 (the weighted test is then Simes over every column).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> p = rng.uniform(size=(400, 3))
        >>> p[:200, 2] = 1e-4  # half the batch is caught by the third column
        >>> w = batch_weights(np.log(p))
        >>> bool(w[2] > 2.5 and w[:2].max() < 0.3)
        True
    """
    if not 0 < lam < 1:
        raise ValueError(f"lam must be in (0, 1), got {lam}.")

    def share_above(lp: np.ndarray, extra: float) -> tuple[np.ndarray, np.ndarray]:
        ok = ~np.isnan(lp)
        n = ok.sum(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (extra + (ok & (lp > np.log(lam))).sum(0)) / n, n

    log_p = np.asarray(log_p, dtype=np.float64)
    batch, counted = share_above(log_p, 1.0)
    if trusted_log_p is None:
        null = np.full(log_p.shape[1], 1.0 - lam)
    else:
        null, _ = share_above(np.asarray(trusted_log_p, dtype=np.float64), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        pi0 = np.minimum(1.0, batch / null)
        w = np.where((counted > 0) & (null > 0), (1.0 - pi0) / pi0, 0.0)
    w = np.nan_to_num(w, nan=0.0, posinf=0.0)
    if not w.sum() > 0:
        return np.ones(log_p.shape[1])
    return w / w.mean()


def weighted_simes(log_p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted Simes over every column (Benjamini and Hochberg, "Multiple hypotheses
    testing with weights", Scand. J. Statist. 1997), as a log: ``min_j E' q_(j) / j``
    with ``q = p / w`` in ascending order. As in ``simes``, a row's untestable cells
    (NaN, p = 1) do not count; its other columns' weights are rescaled to mean 1 over
    them, so that what cannot reject passes its weight on. A column of weight 0 counts
    but never rejects; a row whose testable columns all weigh 0 gets 0 (p = 1)."""
    log_p = np.asarray(log_p, dtype=np.float64)
    if log_p.shape[1] == 0:
        return np.zeros(len(log_p))
    testable = ~(np.isnan(log_p) | (log_p >= 0))
    w = np.where(testable, np.asarray(weights, dtype=np.float64)[None], 0.0)
    count = testable.sum(1)
    total = w.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = w * np.where(total > 0, count / total, 0.0)[:, None]
        q = np.sort(np.where(w > 0, log_p - np.log(w), np.inf), axis=1)
        rank = np.arange(1, log_p.shape[1] + 1)[None]
        adjusted = np.where(np.isfinite(q), q + np.log(count)[:, None] - np.log(rank), np.inf)
    return np.where((count > 0) & (total > 0), adjusted.min(1), 0.0)


def combine(
    log_p: np.ndarray, families: Sequence[str], how: str = "both", weights: np.ndarray | None = None
) -> np.ndarray:
    """``[n]`` combined log p-values. ``how="both"``: the smaller of Simes by family
    (``by_family``) and Simes over every column (``simes``), doubled (Bonferroni over the
    two tests; like ``simes``, not clipped at p = 1, so the order of inputs stays that of
    the smaller one); ``"by-family"`` or ``"flat"``: that test alone. With ``weights``
    (``batch_weights``), ``weighted_simes`` joins the test(s), and the factor counts it."""
    if how not in COMBINATIONS:
        raise ValueError(f"how must be one of {COMBINATIONS}, got {how!r}.")
    if np.shape(log_p)[1] == 0:
        return simes(log_p)
    tests = {"both": ("by-family", "flat"), "by-family": ("by-family",), "flat": ("flat",)}[how]
    found = [by_family(log_p, families) if t == "by-family" else simes(log_p) for t in tests]
    if weights is not None:
        found.append(weighted_simes(log_p, weights))
    if len(found) == 1:
        return found[0]
    return np.log(len(found)) + np.min(np.stack(found), 0)


def score(
    log_p: np.ndarray, families: Sequence[str], how: str = "both", weights: np.ndarray | None = None
) -> np.ndarray:
    """``[n]`` anomaly scores, ``-log`` of the combined p-value (``combine``; higher = more
    anomalous).

    Example:
        >>> import numpy as np
        >>> trusted = sorted_columns(np.random.default_rng(0).normal(size=(200, 3)))
        >>> d = np.array([[0.0, 0.1, -0.2], [0.0, 9.0, 0.0]])
        >>> s = score(log_p_values(d, trusted, 1e-3), ["a", "a", "b"])
        >>> bool(s[1] > s[0] + 5)
        True
    """
    return -combine(log_p, families, how, weights)
