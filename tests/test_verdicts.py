"""The verdict rule (gnflow.verdicts) on synthetic tables: it flips when the numbers flip, goes
inconclusive on noise, its t interval matches a computation by hand, the bootstrap is
reproducible, and failed, zero and missing arms are handled as the rule states."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from gnflow.studies import Claim, StudyReport, claims_table, write_report
from gnflow.verdicts import VERDICT_RULE, all_of, paired_comparison

SEEDS = (1, 2, 3, 4, 5)
GD = np.array([0.031, 0.028, 0.035, 0.030, 0.033])
GN = GD * np.array([0.42, 0.38, 0.47, 0.40, 0.45])


def compare(numerator, denominator, direction="less", seeds=SEEDS, **kwargs):  # type: ignore[no-untyped-def]
    return paired_comparison(
        numerator,
        denominator,
        claim="GN test loss < GD test loss",
        numerator_label="GN lam=10",
        denominator_label="GD",
        seeds=seeds,
        direction=direction,
        **kwargs,
    )


@pytest.mark.parametrize("method", ["t", "bootstrap"])
def test_verdict_flips_when_the_numbers_flip(method: str) -> None:
    forward = compare(GN, GD, method=method)
    assert forward.verdict == "supported" and forward.n_favour == 5
    assert forward.high < 1.0
    backward = compare(GD, GN, method=method)
    assert backward.verdict == "contradicted" and backward.n_favour == 0
    assert backward.low > 1.0
    # the same table under the opposite claim: the verdicts swap
    assert compare(GN, GD, direction="greater", method=method).verdict == "contradicted"
    assert compare(GD, GN, direction="greater", method=method).verdict == "supported"
    # the interval of the swapped arms is the reciprocal
    assert backward.center == pytest.approx(1 / forward.center)
    if method == "t":
        assert backward.low == pytest.approx(1 / forward.high) and backward.high == pytest.approx(1 / forward.low)


def test_noise_around_one_is_inconclusive() -> None:
    rng = np.random.default_rng(7)
    verdicts = []
    for _ in range(200):
        ratio = np.exp(rng.normal(0.0, 0.3, size=5))
        verdicts.append(compare(GD * ratio, GD).verdict)
    # a 95% interval of a ratio centred on 1 excludes 1 in about 5% of the tables
    assert verdicts.count("inconclusive") >= 180
    assert compare([1.0, 2.0, 1.0, 2.0, 1.0], [2.0, 1.0, 2.0, 1.0, 1.5]).verdict == "inconclusive"


def test_t_interval_matches_a_computation_by_hand() -> None:
    comparison = compare(GN, GD, level=0.9)
    logs = np.log(GN / GD)
    mean, se = logs.mean(), logs.std(ddof=1) / math.sqrt(logs.size)
    half = stats.t.ppf(0.95, df=logs.size - 1) * se
    assert comparison.center == pytest.approx(math.exp(mean), rel=1e-12)
    assert comparison.low == pytest.approx(math.exp(mean - half), rel=1e-12)
    assert comparison.high == pytest.approx(math.exp(mean + half), rel=1e-12)
    lo, hi = stats.t.interval(0.9, df=logs.size - 1, loc=mean, scale=se)
    assert (comparison.low, comparison.high) == pytest.approx((math.exp(lo), math.exp(hi)), rel=1e-12)
    np.testing.assert_allclose(comparison.ratios, GN / GD, rtol=1e-15)
    assert comparison.method == "t on log ratios" and comparison.level == 0.9


def test_a_wider_level_widens_the_interval_until_it_holds_one() -> None:
    numerator = GD * np.array([0.8, 1.05, 0.7, 0.9, 0.85])
    at_80 = compare(numerator, GD, level=0.8)
    at_99 = compare(numerator, GD, level=0.99)
    assert at_99.low < at_80.low and at_99.high > at_80.high
    assert at_80.verdict == "supported" and at_99.verdict == "inconclusive"


def test_equal_log_ratios_give_the_point_interval() -> None:
    comparison = compare(GD * 0.5, GD)
    assert comparison.low == pytest.approx(0.5) and comparison.high == pytest.approx(0.5)
    assert comparison.center == pytest.approx(0.5) and comparison.verdict == "supported"
    assert compare(GD, GD).verdict == "inconclusive"  # ratio exactly 1


def test_bootstrap_is_seeded_and_reproducible() -> None:
    ratio = np.array([0.8, 1.1, 0.7, 0.9, 0.95])
    first = compare(GD * ratio, GD, method="bootstrap")
    again = compare(GD * ratio, GD, method="bootstrap")
    other = compare(GD * ratio, GD, method="bootstrap", bootstrap_seed=1)
    assert (first.low, first.high) == (again.low, again.high)
    assert (first.low, first.high) != (other.low, other.high)
    assert first.method == "bootstrap"
    # a percentile interval lies within the range of the resampled means, which is that of the ratios
    assert ratio.min() <= first.low < first.center < first.high <= ratio.max()


def test_sign_count_counts_the_seeds_that_go_the_claimed_way() -> None:
    ratio = np.array([0.5, 0.6, 1.2, 0.7, 1.0])  # 3 below 1, 1 above, 1 tie
    comparison = compare(GD * ratio, GD)
    assert comparison.n_favour == 3
    assert compare(GD * ratio, GD, direction="greater").n_favour == 1
    assert comparison.summary().startswith(f"{comparison.center:.3g} [{comparison.low:.3g}, {comparison.high:.3g}]")
    assert "(3/5 seeds < 1)" in comparison.summary()


def test_one_seed_is_inconclusive_with_the_reason() -> None:
    comparison = compare([0.01], [0.03], seeds=(1,))
    assert comparison.verdict == "inconclusive"
    assert "only 1 of 1 seeds usable (at least 2 needed)" in comparison.reason
    assert math.isnan(comparison.low) and "no interval" in comparison.summary()
    # min_seeds = 1 lets a single seed decide by its sign
    assert compare([0.01], [0.03], seeds=(1,), min_seeds=1).verdict == "supported"


def test_a_diverged_numerator_is_a_seed_against_a_less_claim() -> None:
    numerator = GN.copy()
    numerator[2] = np.inf
    comparison = compare(numerator, GD)
    assert comparison.ratios[2] == np.inf
    assert comparison.n_favour == 4 and comparison.n_usable == 5
    # the four finite ratios exclude 1, but the diverged seed lies on the other side
    assert comparison.high < 1.0 and comparison.verdict == "inconclusive"
    assert "numerator failed or never reached its level (inf or NaN) at seed 3" in comparison.reason
    # NaN is a failed arm like inf
    numerator[2] = np.nan
    assert compare(numerator, GD).ratios[2] == np.inf
    # under the opposite claim (GN's loss is larger) the diverged seed goes the claimed way, and the
    # table, which disagrees with itself, is still inconclusive
    greater = compare(numerator, GD, direction="greater")
    assert greater.n_favour == 1 and greater.verdict == "inconclusive"


def test_a_diverged_denominator_supports_a_less_claim() -> None:
    denominator = GD.copy()
    denominator[0] = np.inf
    comparison = compare(GN, denominator)
    assert comparison.ratios[0] == 0.0 and comparison.n_favour == 5
    assert comparison.verdict == "supported"
    assert "denominator failed or never reached its level (inf or NaN) at seed 1" in comparison.summary()


def test_every_seed_ordered_decides_by_the_sign() -> None:
    diverged = compare(np.full(5, np.inf), GD)
    assert diverged.verdict == "contradicted" and diverged.n_favour == 0
    assert diverged.center == diverged.low == diverged.high == math.inf
    mixed = compare([np.inf, np.inf, 0.01, np.inf, np.inf], GD)  # one finite ratio below 1
    assert mixed.verdict == "inconclusive" and "disagree" in mixed.reason


def test_zero_is_below_every_positive_value_and_ties_are_unusable() -> None:
    zero = compare([0.0, *GN[1:]], GD)
    assert zero.ratios[0] == 0.0 and zero.verdict == "supported"
    assert "numerator 0 at seed 1" in zero.reason
    both_failed = compare([np.nan, np.inf, *GN[2:]], [np.inf, np.nan, *GD[2:]])
    assert np.isnan(both_failed.ratios[:2]).all()
    assert both_failed.n_usable == 3 and both_failed.verdict == "supported"
    assert "3 of 5 seeds usable" in both_failed.summary()
    # with a minimum of 4 usable seeds the same table is inconclusive
    strict = compare([np.nan, np.inf, *GN[2:]], [np.inf, np.nan, *GD[2:]], min_seeds=4)
    assert strict.verdict == "inconclusive" and "only 3 of 5 seeds usable" in strict.reason


def test_bad_input_is_a_one_line_error() -> None:
    with pytest.raises(ValueError, match="one value per seed"):
        compare(GN[:4], GD)
    with pytest.raises(ValueError, match="negative value"):
        compare([-1.0, *GN[1:]], GD)
    with pytest.raises(ValueError, match="direction"):
        compare(GN, GD, direction="below")
    with pytest.raises(ValueError, match="method"):
        compare(GN, GD, method="wilcoxon")
    with pytest.raises(ValueError, match="level"):
        compare(GN, GD, level=95)


def test_all_of_needs_every_comparison() -> None:
    yes, no, unsure = compare(GN, GD), compare(GD, GN), compare(GD, GD)
    assert all_of([yes, yes]) == "supported"
    assert all_of([yes, unsure]) == "inconclusive"
    assert all_of([yes, unsure, no]) == "contradicted"


def test_report_writes_the_interval_and_the_rule(tmp_path: Path) -> None:
    comparison = compare(GN, GD)
    claims = [
        Claim("GN generalizes better.", "", comparison.verdict, comparison=comparison),
        Claim("GGN is faster per second.", "ratio 2", "inconclusive", comparison=compare(GD, GN), qualifier="hardware"),
        Claim("Quadratic order.", "order 1.9", "not supported"),
    ]
    text = write_report(
        tmp_path / "report.md",
        StudyReport(title="T", setup=["s"], claims=claims),
        name="x",
        scale="smoke",
        wall_time_s=1,
    ).read_text()
    rows = claims_table(text)
    assert rows[0][2] == comparison.summary() and rows[0][3] == "supported"
    assert rows[1][3] == "inconclusive (hardware)"
    assert rows[2][3] == "not supported"
    assert f"\n## How verdicts are decided\n\n{VERDICT_RULE}\n" in text
    # a report without paired comparisons does not state the rule
    plain = StudyReport(title="T", setup=["s"], claims=[claims[2]])
    text = write_report(tmp_path / "plain.md", plain, name="x", scale="smoke", wall_time_s=1).read_text()
    assert "How verdicts are decided" not in text
    with pytest.raises(ValueError, match="differs from its comparison"):
        Claim("GN generalizes better.", "", "contradicted", comparison=comparison)


def test_the_studies_page_states_the_rule_once() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "studies.md").read_text()
    assert page.count(VERDICT_RULE) == 1
