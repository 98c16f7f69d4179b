"""Rates of convergence over seeds: per-seed log-log slopes, their interval, and a verdict.

An error e_k(M) measured for seeds k at widths M has, per seed, the least-squares slope beta_k of
log e against log M. A rate claim "e falls like M^b" is decided by the shared verdict machinery
(:func:`gnflow.verdicts.paired_comparison`) on per-seed ratios: with R = M_max / M_min, the
ratio R^(beta_k) / R^(b') compares the fitted reduction of seed k's error over the grid with the
reduction of M^(b'), and the Student t interval of its mean log ratio is the interval of the
mean slope, shifted and scaled by log R. :func:`rate_comparison` makes the two comparisons
beta < b + delta (direction ``"less"``) and beta > b - delta (direction ``"greater"``) and
combines them by :func:`gnflow.verdicts.all_of` (:data:`RATE_RULE`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from gnflow.verdicts import PairedComparison, Verdict, all_of, paired_comparison

Direction = Literal["less", "greater"]

__all__ = ["RATE_RULE", "RateComparison", "rate_comparison", "seed_slopes", "slope_comparison"]

RATE_RULE = (
    "A rate claim 'the error falls like M^b' is decided on the per-seed least-squares slopes of log "
    "error against log M (one slope per seed, each from that seed's runs at every width). The 95% "
    "interval is the Student t interval of the mean slope over the seeds (computed by the paired "
    "ratios of the verdict rule, R^slope against R^(b +- delta), R = M_max / M_min). The claim is "
    "*supported* when the interval lies inside [b - delta, b + delta], *contradicted* when it lies "
    "entirely outside it (wholly above b + delta or wholly below b - delta), and *inconclusive* "
    "otherwise (the interval allows a slope inside the band and one outside). A seed whose error is "
    "not finite and positive at two widths or more has no slope and is not usable; the usable count "
    "is reported."
)


@dataclass(frozen=True)
class RateComparison:
    """A rate claim measured on several seeds: the slopes, their interval and the verdict.

    Attributes
    ----------
    claim:
        Short statement, e.g. ``"GD function distance ~ M^(-1/2), tau0 = 0.1"``.
    widths:
        The widths M of the fit, shape (width,).
    seeds:
        The seeds, in the order of ``slopes``.
    slopes:
        Per-seed slopes of log error against log M, shape (seed,); NaN for a seed without one.
    rate, tolerance:
        b and delta of the band [b - delta, b + delta].
    slope, low, high:
        Mean of the finite slopes and its interval (NaN when fewer than two seeds have a slope).
    level:
        Confidence level of the interval.
    below, above:
        The comparisons "slope < b + delta" and "slope > b - delta".
    verdict:
        ``all_of((below, above))``.
    """

    claim: str
    widths: tuple[int, ...]
    seeds: tuple[int, ...]
    slopes: np.ndarray
    rate: float
    tolerance: float
    slope: float
    low: float
    high: float
    level: float
    below: PairedComparison
    above: PairedComparison
    verdict: Verdict

    @property
    def n_usable(self) -> int:
        """Seeds with a slope."""
        return int(np.isfinite(self.slopes).sum())

    @property
    def comparisons(self) -> tuple[PairedComparison, PairedComparison]:
        """The two paired comparisons that decide the verdict."""
        return self.below, self.above

    def summary(self) -> str:
        """One line: ``"slope -0.52 [-0.61, -0.43], 5/5 seeds; band [-0.65, -0.35]"``."""
        band = f"band [{self.rate - self.tolerance:.3g}, {self.rate + self.tolerance:.3g}]"
        seeds = f"{self.n_usable}/{len(self.seeds)} seeds"
        if math.isnan(self.low):
            return f"slope {self.slope:.3g}, no interval, {seeds}; {band}"
        return f"slope {self.slope:.3g} [{self.low:.3g}, {self.high:.3g}], {seeds}; {band}"


def seed_slopes(widths: Sequence[float], errors: np.ndarray) -> np.ndarray:
    """Least-squares slope of log error against log M for each seed.

    Parameters
    ----------
    widths:
        Widths M, shape (width,), all > 0.
    errors:
        Errors, shape (seed, width); values that are not finite and positive are left out of
        their seed's fit.

    Returns
    -------
    numpy.ndarray
        Shape (seed,); NaN for a seed with fewer than two usable widths.
    """
    m = np.asarray(widths, dtype=np.float64)
    e = np.asarray(errors, dtype=np.float64)
    if e.ndim != 2 or e.shape[1] != m.size:
        raise ValueError(f"errors must have shape (seed, {m.size}) for {m.size} widths, got {e.shape}")
    if m.size < 2 or np.any(m <= 0) or np.unique(m).size != m.size:
        raise ValueError(f"widths must be at least two distinct positive numbers, got {m.tolist()}")
    slopes = np.full(e.shape[0], np.nan)
    for k, row in enumerate(e):
        keep = np.isfinite(row) & (row > 0)
        if keep.sum() >= 2:
            slopes[k] = np.polyfit(np.log(m[keep]), np.log(row[keep]), 1)[0]
    return slopes


def slope_comparison(
    widths: Sequence[float],
    slopes: np.ndarray,
    *,
    seeds: Sequence[int],
    claim: str,
    bound: float,
    direction: Direction,
    level: float = 0.95,
) -> PairedComparison:
    """Decide "the slope is below ``bound``" (``"less"``) or above it (``"greater"``) over seeds.

    Per seed k the paired ratio is R^(slope_k) / R^bound with R = max(widths) / min(widths), so
    the interval of the ratio is the interval of the mean slope mapped by R^(. - bound); a seed
    whose slope is NaN is an unusable pair.

    Parameters
    ----------
    widths:
        Widths M of the fit (only their range enters).
    slopes:
        Per-seed slopes, shape (seed,) (:func:`seed_slopes`).
    seeds, claim, level:
        As for :func:`gnflow.verdicts.paired_comparison`.
    bound, direction:
        The claim is slope < bound (``"less"``) or slope > bound (``"greater"``).
    """
    slopes = np.asarray(slopes, dtype=np.float64)
    finite = np.isfinite(slopes)
    span = math.log(max(widths) / min(widths))
    fitted = np.where(finite, np.exp(span * np.where(finite, slopes, 0.0)), np.nan)
    reference = np.where(finite, math.exp(span * bound), np.nan)
    return paired_comparison(
        fitted.tolist(),
        reference.tolist(),
        claim=f"{claim}: slope {'<' if direction == 'less' else '>'} {bound:.3g}",
        numerator_label="fitted reduction R^slope",
        denominator_label=f"R^({bound:.3g})",
        seeds=seeds,
        direction=direction,
        level=level,
    )


def rate_comparison(
    widths: Sequence[float],
    errors: np.ndarray,
    *,
    seeds: Sequence[int],
    claim: str,
    rate: float = -0.5,
    tolerance: float = 0.15,
    level: float = 0.95,
) -> RateComparison:
    """Decide "the error falls like M^rate" by :data:`RATE_RULE`.

    Parameters
    ----------
    widths:
        Widths M, shape (width,).
    errors:
        Errors per seed and width, shape (seed, width).
    seeds:
        The seed of each row of ``errors``.
    claim:
        Short statement of the claim.
    rate, tolerance:
        The claimed slope b and the half-width delta > 0 of the band around it.
    level:
        Confidence level of the interval, in (0, 1).
    """
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise ValueError(f"rate_comparison tolerance must be a finite number > 0, got {tolerance!r}")
    slopes = seed_slopes(widths, errors)
    seed_tuple = tuple(int(s) for s in seeds)
    if len(seed_tuple) != slopes.size:
        raise ValueError(f"rate_comparison {claim!r}: {slopes.size} rows of errors but {len(seed_tuple)} seeds")
    below = slope_comparison(
        widths, slopes, seeds=seed_tuple, claim=claim, bound=rate + tolerance, direction="less", level=level
    )
    above = slope_comparison(
        widths, slopes, seeds=seed_tuple, claim=claim, bound=rate - tolerance, direction="greater", level=level
    )
    finite = np.isfinite(slopes)
    span = math.log(max(widths) / min(widths))
    slope = float(np.mean(slopes[finite])) if finite.any() else math.nan
    low = high = math.nan
    if math.isfinite(below.low) and math.isfinite(below.high) and below.low > 0:
        low = math.log(below.low) / span + rate + tolerance
        high = math.log(below.high) / span + rate + tolerance
    return RateComparison(
        claim=claim,
        widths=tuple(int(w) for w in widths),
        seeds=seed_tuple,
        slopes=slopes,
        rate=float(rate),
        tolerance=float(tolerance),
        slope=slope,
        low=low,
        high=high,
        level=float(level),
        below=below,
        above=above,
        verdict=all_of((below, above)),
    )
