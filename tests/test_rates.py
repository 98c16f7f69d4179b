"""gnflow.rates: per-seed slopes and the rate verdict, driven with synthetic errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from gnflow.rates import rate_comparison, seed_slopes, slope_comparison

WIDTHS = [100, 300, 1000, 3000, 10000]
SEEDS = [1, 2, 3, 4, 5]


def _errors(slope: float, noise: float, seed: int = 0) -> np.ndarray:
    """C_k M^slope times log-normal noise of scale ``noise``, shape (seed, width)."""
    rng = np.random.default_rng(seed)
    m = np.asarray(WIDTHS, dtype=float)
    scale = rng.uniform(0.5, 2.0, size=(len(SEEDS), 1))
    return scale * m**slope * np.exp(noise * rng.standard_normal((len(SEEDS), m.size)))


def test_seed_slopes_recover_the_exponent_and_skip_unusable_points() -> None:
    e = _errors(-0.5, 0.0)
    np.testing.assert_allclose(seed_slopes(WIDTHS, e), -0.5, atol=1e-12)
    e[0, 1] = 0.0  # floor-dominated point: left out of seed 1's fit
    e[1, :4] = np.nan  # one usable width: no slope
    slopes = seed_slopes(WIDTHS, e)
    assert slopes[0] == pytest.approx(-0.5) and np.isnan(slopes[1])


def test_rate_verdict_flips_with_the_measured_slope() -> None:
    at_rate = rate_comparison(WIDTHS, _errors(-0.5, 0.05), seeds=SEEDS, claim="e ~ M^-1/2")
    assert at_rate.verdict == "supported"
    assert at_rate.low < -0.5 < at_rate.high
    too_fast = rate_comparison(WIDTHS, _errors(-1.0, 0.05), seeds=SEEDS, claim="e ~ M^-1/2")
    assert too_fast.verdict == "contradicted" and too_fast.high < -0.65
    flat = rate_comparison(WIDTHS, _errors(0.0, 0.05), seeds=SEEDS, claim="e ~ M^-1/2")
    assert flat.verdict == "contradicted" and flat.low > -0.35
    # the same errors with the band moved onto their slope are supported
    assert rate_comparison(WIDTHS, _errors(-1.0, 0.05), seeds=SEEDS, claim="c", rate=-1.0).verdict == "supported"


def test_rate_verdict_is_inconclusive_on_noise() -> None:
    noisy = rate_comparison(WIDTHS, _errors(-0.5, 1.5, seed=3), seeds=SEEDS, claim="e ~ M^-1/2")
    assert noisy.verdict == "inconclusive"
    assert noisy.low < -0.65 or noisy.high > -0.35  # the interval leaves the band


def test_rate_interval_is_the_t_interval_of_the_mean_slope() -> None:
    e = _errors(-0.4, 0.3, seed=7)
    result = rate_comparison(WIDTHS, e, seeds=SEEDS, claim="c", tolerance=0.2)
    slopes = seed_slopes(WIDTHS, e)
    half = stats.t.ppf(0.975, len(SEEDS) - 1) * np.std(slopes, ddof=1) / np.sqrt(len(SEEDS))
    assert result.slope == pytest.approx(np.mean(slopes))
    assert (result.low, result.high) == pytest.approx((np.mean(slopes) - half, np.mean(slopes) + half))
    assert "5/5 seeds" in result.summary()


def test_a_seed_without_slope_is_not_usable() -> None:
    e = _errors(-0.5, 0.05)
    e[2] = np.nan
    result = rate_comparison(WIDTHS, e, seeds=SEEDS, claim="c")
    assert result.n_usable == 4 and result.below.n_usable == 4
    assert result.verdict == "supported"


def test_bad_input_is_refused_with_one_line() -> None:
    with pytest.raises(ValueError, match="errors must have shape"):
        seed_slopes(WIDTHS, np.ones((2, 3)))
    with pytest.raises(ValueError, match="two distinct positive"):
        seed_slopes([10, 10], np.ones((1, 2)))
    with pytest.raises(ValueError, match="tolerance"):
        rate_comparison(WIDTHS, _errors(-0.5, 0.0), seeds=SEEDS, claim="c", tolerance=0.0)
    with pytest.raises(ValueError, match="seeds"):
        rate_comparison(WIDTHS, _errors(-0.5, 0.0), seeds=[1], claim="c")


def test_slope_comparison_decides_a_decrease() -> None:
    def decrease(slope: float, noise: float) -> str:
        slopes = seed_slopes(WIDTHS, _errors(slope, noise, seed=5))
        return slope_comparison(WIDTHS, slopes, seeds=SEEDS, claim="c", bound=0.0, direction="less").verdict

    assert decrease(-0.3, 0.05) == "supported"
    assert decrease(0.3, 0.05) == "contradicted"
    assert decrease(0.0, 1.5) == "inconclusive"
