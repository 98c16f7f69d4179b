"""The verdict rule of every study: a comparison decided on per-seed paired ratios and an interval.

A comparative claim ("GN's test loss is below GD's") is measured once per seed on both arms; the
per-seed ratio numerator / denominator is the paired statistic. :func:`paired_comparison` forms
the ratios, counts the seeds that go the claimed way, computes an interval of the ratio (a
Student t interval of the mean log ratio, or a seeded percentile bootstrap of it) and decides:

- ``"supported"``: the interval lies entirely on the claimed side of 1;
- ``"contradicted"``: it lies entirely on the other side;
- ``"inconclusive"``: it contains 1, or too few seeds were usable.

Values that are not finite and positive are not dropped: a failed arm (NaN or +inf: diverged, a
level never reached) is worse than every finite value, i.e. infinitely large, and a value of
zero is smaller than every positive one, so such a pair still says which arm is smaller (an
*ordered* pair, ratio +inf or 0) without having a finite log ratio. :data:`VERDICT_RULE` states
the full rule; every report that uses it writes it out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

__all__ = ["VERDICT_RULE", "PairedComparison", "Verdict", "all_of", "paired_comparison"]

Verdict = Literal["supported", "contradicted", "inconclusive"]
Direction = Literal["less", "greater"]
METHODS: dict[str, str] = {"t": "t on log ratios", "bootstrap": "bootstrap"}
BOOTSTRAP_RESAMPLES = 10_000

VERDICT_RULE = (
    "Each comparative claim is decided on per-seed paired ratios (numerator arm / denominator arm, "
    "same seed for both). The interval is a two-sided interval of the geometric-mean ratio at the "
    "stated level (95% unless said otherwise): a Student t interval of the mean log ratio by default "
    "(the point itself when every log ratio is equal), or a seeded percentile bootstrap of it. The claim "
    "is *supported* when the interval lies entirely on the claimed side of 1, *contradicted* when it lies "
    "entirely on the other side, and *inconclusive* otherwise. The sign count is the number of seeds "
    "whose ratio goes the claimed way. A failed arm (diverged, NaN, or a level never reached: +inf) "
    "counts as larger than every finite value and a value of 0 as smaller than every positive one: such "
    "a seed is an ordered pair (ratio +inf or 0) that enters the sign count but not the interval, and the "
    "verdict stays inconclusive if an ordered pair lies on the other side of 1 from the interval's "
    "verdict; with fewer than two finite ratios the verdict needs every usable seed on the same side. "
    "Seeds where both arms failed, or both are 0, are unusable; no seed is dropped silently: the "
    "report gives the usable count, and fewer usable seeds than the minimum (2 unless said otherwise) "
    "make the claim inconclusive."
)


@dataclass(frozen=True)
class PairedComparison:
    """One comparative claim measured on paired seeds, its interval and its verdict.

    Attributes
    ----------
    claim:
        Short statement, e.g. ``"GN test loss < GD test loss at tau0 = 0.1"``.
    numerator, denominator:
        Labels of the two arms; the ratio is numerator / denominator.
    ratios:
        Per-seed ratios, shape (seed,): finite positive for a measured pair, +inf or 0 for an
        ordered pair (one arm failed or zero), NaN for an unusable one (both failed or both zero).
    seeds:
        The seeds, in the order of ``ratios``.
    direction:
        ``"less"``: the claim is ratio < 1; ``"greater"``: ratio > 1.
    level:
        Confidence level of the interval (0.95).
    center:
        Geometric mean of the finite ratios (NaN when there are none; 0 or +inf when every usable
        pair is ordered on that side).
    low, high:
        The interval of the ratio at ``level`` (from the finite ratios; NaN with fewer than two
        of them, unless every usable pair is ordered on one side, then the point 0 or +inf).
    method:
        ``"t on log ratios"`` or ``"bootstrap"``.
    n_favour:
        Sign count: usable seeds whose ratio goes the claimed way.
    verdict:
        ``"supported"``, ``"contradicted"`` or ``"inconclusive"``.
    n_usable:
        Seeds with a measured or ordered pair.
    reason:
        Why the verdict is inconclusive beyond the interval containing 1 (empty otherwise), and
        which seeds had a failed or zero arm.
    """

    claim: str
    numerator: str
    denominator: str
    ratios: np.ndarray
    seeds: tuple[int, ...]
    direction: Direction
    level: float
    center: float
    low: float
    high: float
    method: str
    n_favour: int
    verdict: Verdict
    n_usable: int = 0
    reason: str = ""

    @property
    def n_seeds(self) -> int:
        """Number of seeds compared (usable or not)."""
        return len(self.seeds)

    def summary(self) -> str:
        """One line for a report cell: ``"0.42 [0.31, 0.57] (5/5 seeds < 1)"``, plus the reason."""
        side = "< 1" if self.direction == "less" else "> 1"
        if math.isnan(self.low):
            head = f"ratio {_number(self.center)}, no interval"
        else:
            head = f"{_number(self.center)} [{_number(self.low)}, {_number(self.high)}]"
        usable = "" if self.n_usable == self.n_seeds else f", {self.n_usable} of {self.n_seeds} seeds usable"
        text = f"{head} ({self.n_favour}/{self.n_seeds} seeds {side}{usable})"
        return f"{text}; {self.reason}" if self.reason else text


def _number(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf"
    return f"{value:.3g}"


def _log_interval(logs: np.ndarray, level: float, method: str, bootstrap_seed: int) -> tuple[float, float]:
    """Interval of the mean of ``logs`` (shape (n,), n >= 2) at ``level``."""
    if method == "t":
        spread = float(np.std(logs, ddof=1))
        if spread == 0.0:
            mean = float(np.mean(logs))
            return mean, mean
        half = float(stats.t.ppf(0.5 + level / 2, logs.size - 1)) * spread / math.sqrt(logs.size)
        mean = float(np.mean(logs))
        return mean - half, mean + half
    rng = np.random.default_rng(bootstrap_seed)
    picks = rng.integers(0, logs.size, size=(BOOTSTRAP_RESAMPLES, logs.size))
    means = logs[picks].mean(axis=1)
    low, high = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return float(low), float(high)


def _side(low: float, high: float) -> Direction | None:
    """The side of 1 the interval [low, high] lies on, None when it contains 1."""
    if high < 1.0:
        return "less"
    if low > 1.0:
        return "greater"
    return None


def paired_comparison(
    numerator: Sequence[float],
    denominator: Sequence[float],
    *,
    claim: str,
    numerator_label: str,
    denominator_label: str,
    seeds: Sequence[int],
    direction: Direction,
    level: float = 0.95,
    method: Literal["t", "bootstrap"] = "t",
    min_seeds: int = 2,
    bootstrap_seed: int = 0,
) -> PairedComparison:
    """Decide a comparative claim on per-seed paired ratios by :data:`VERDICT_RULE`.

    Parameters
    ----------
    numerator, denominator:
        The measured quantity of each arm per seed, shape (seed,): nonnegative (losses, times,
        iteration counts); NaN or +inf for a failed arm (diverged, level never reached).
    claim:
        Short statement of the claim.
    numerator_label, denominator_label:
        Labels of the arms.
    seeds:
        The seed of each pair, shape (seed,).
    direction:
        ``"less"`` (the claim is numerator < denominator) or ``"greater"``.
    level:
        Confidence level of the interval, in (0, 1).
    method:
        ``"t"``: Student t interval of the mean log ratio; ``"bootstrap"``: percentile bootstrap
        of it (10,000 resamples drawn from ``bootstrap_seed``, so reproducible).
    min_seeds:
        Fewest usable pairs for a verdict other than inconclusive (at least 1).
    bootstrap_seed:
        Seed of the bootstrap resampling.

    Raises
    ------
    ValueError
        On arrays of different lengths, a negative value or -inf, an unknown direction or method,
        a level outside (0, 1) or min_seeds < 1.
    """
    num = np.asarray(numerator, dtype=np.float64).reshape(-1)
    den = np.asarray(denominator, dtype=np.float64).reshape(-1)
    seed_tuple = tuple(int(s) for s in seeds)
    if not num.size == den.size == len(seed_tuple):
        raise ValueError(
            f"paired_comparison {claim!r}: numerator, denominator and seeds need one value per seed, "
            f"got lengths {num.size}, {den.size}, {len(seed_tuple)}"
        )
    if direction not in ("less", "greater"):
        raise ValueError(f"paired_comparison direction must be 'less' or 'greater', got {direction!r}")
    if method not in METHODS:
        raise ValueError(f"paired_comparison method must be one of {', '.join(METHODS)}, got {method!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"paired_comparison level must lie in (0, 1), got {level!r}")
    if min_seeds < 1:
        raise ValueError(f"paired_comparison min_seeds must be at least 1, got {min_seeds!r}")
    for label, values in ((numerator_label, num), (denominator_label, den)):
        if np.any(values < 0):  # NaN compares False: a failed arm, handled below
            raise ValueError(
                f"paired_comparison {claim!r}: arm {label!r} has a negative value or -inf "
                f"({values[values < 0][0]!r}); allowed: values >= 0, NaN or +inf for a failed arm"
            )
    # a failed arm (NaN, +inf) is +inf in the ordering; 0 is below every positive value
    num_o = np.where(np.isnan(num), np.inf, num)
    den_o = np.where(np.isnan(den), np.inf, den)
    measured = np.isfinite(num_o) & np.isfinite(den_o) & (num_o > 0) & (den_o > 0)
    tied = (num_o == den_o) & ~measured  # both failed or both zero
    ordered = ~measured & ~tied
    ratios = np.full(num.size, np.nan)
    ratios[measured] = num_o[measured] / den_o[measured]
    ratios[ordered] = np.where(num_o[ordered] > den_o[ordered], np.inf, 0.0)
    usable = measured | ordered
    n_usable = int(usable.sum())
    favour = ratios[usable] < 1.0 if direction == "less" else ratios[usable] > 1.0
    n_favour = int(favour.sum())

    notes = []
    for what, mask in (("numerator", np.isnan(num) | np.isinf(num)), ("denominator", np.isnan(den) | np.isinf(den))):
        if mask.any():
            notes.append(f"{what} failed or never reached its level (inf or NaN) at {_seeds(seed_tuple, mask)}")
    for what, mask in (("numerator", num == 0), ("denominator", den == 0)):
        if mask.any():
            notes.append(f"{what} 0 at {_seeds(seed_tuple, mask)}")

    logs = np.log(ratios[measured])
    center = float(np.exp(np.mean(logs))) if logs.size else math.nan
    low = high = math.nan
    if logs.size >= 2:
        log_low, log_high = _log_interval(logs, level, method, bootstrap_seed)
        low, high = math.exp(log_low), math.exp(log_high)
    ordered_ratios = ratios[ordered]
    verdict_side: Direction | None
    why = ""
    if n_usable < min_seeds:
        verdict_side, why = None, f"only {n_usable} of {num.size} seeds usable (at least {min_seeds} needed)"
    elif logs.size >= 2:
        verdict_side = _side(low, high)
        against = (ordered_ratios > 1.0) if verdict_side == "less" else (ordered_ratios < 1.0)
        if verdict_side is not None and against.any():
            verdict_side, why = None, f"{int(against.sum())} ordered seed(s) on the other side of 1 from the interval"
    else:
        # no interval: decided only when every usable seed lies on the same side of 1
        used = ratios[usable]
        verdict_side = "less" if np.all(used < 1.0) else "greater" if np.all(used > 1.0) else None
        if verdict_side is None:
            why = "fewer than 2 finite ratios and the usable seeds disagree"
        if logs.size == 0 and verdict_side is not None:
            center = low = high = 0.0 if verdict_side == "less" else math.inf
    if verdict_side is None:
        verdict: Verdict = "inconclusive"
    else:
        verdict = "supported" if verdict_side == direction else "contradicted"
    return PairedComparison(
        claim=claim,
        numerator=numerator_label,
        denominator=denominator_label,
        ratios=ratios,
        seeds=seed_tuple,
        direction=direction,
        level=float(level),
        center=center,
        low=low,
        high=high,
        method=METHODS[method],
        n_favour=n_favour,
        verdict=verdict,
        n_usable=n_usable,
        reason="; ".join([why, *notes] if why else notes),
    )


def _seeds(seeds: tuple[int, ...], mask: np.ndarray) -> str:
    """``"seed 3"`` or ``"seeds 1, 4"``: the seeds where ``mask`` holds."""
    chosen = [str(s) for s, m in zip(seeds, mask, strict=True) if m]
    return f"seed{'s' if len(chosen) > 1 else ''} {', '.join(chosen)}"


def all_of(comparisons: Sequence[PairedComparison]) -> Verdict:
    """The verdict of a claim that holds for every comparison (e.g. at every tau0): supported when
    each is, contradicted when any is, inconclusive otherwise."""
    if not comparisons:
        raise ValueError("all_of needs at least one comparison")
    verdicts = {c.verdict for c in comparisons}
    if "contradicted" in verdicts:
        return "contradicted"
    return "supported" if verdicts == {"supported"} else "inconclusive"
