"""Verdicts on paper claims: t intervals checked against hand-computed values and scipy's tests."""

import math

import pytest
from scipy import stats

from sslkd.report.verdicts import MAX_SEEDS, judge, mean_std, seeds_to_settle, verdict_table


def test_welch_interval_by_hand():
    # a - b = -3; each side's variance of the mean 1/3, se = sqrt(2/3); Welch df = (2/3)^2 / (2 * (1/3)^2 / 2) = 4
    v = judge("A beats B", [1, 2, 3], [4, 5, 6], paired=False)
    half = 2.7764451051977987 * math.sqrt(2 / 3)  # t(0.975, 4)
    assert v.difference == pytest.approx(-3.0)
    assert (v.low, v.high) == pytest.approx((-3 - half, -3 + half))
    assert v.p_value == pytest.approx(stats.ttest_ind([1, 2, 3], [4, 5, 6], equal_var=False).pvalue)
    assert v.verdict == "reversed"
    assert judge("B beats A", [1, 2, 3], [4, 5, 6], paired=False, direction=-1).verdict == "paper's direction reproduced"


def test_paired_interval_and_margin():
    trained, floor = [45, 47, 42], [31, 32, 33]  # differences 14, 15, 9: mean 12.67, sd sqrt(31/3)
    v = judge("DINO above its floor", trained, floor, paired=True, threshold=10)
    half = 4.302652729911275 * math.sqrt(31 / 3) / math.sqrt(3)  # t(0.975, 2)
    assert (v.low, v.high) == pytest.approx((38 / 3 - half, 38 / 3 + half))
    assert v.p_value == pytest.approx(stats.ttest_rel(trained, floor).pvalue)
    assert v.verdict == "paper's direction reproduced; mean reaches the +10 margin"
    assert "misses the +15 margin" in judge("x", trained, floor, paired=True, threshold=15).verdict


def test_overlapping_groups_are_within_noise_and_one_seed_has_no_interval():
    assert judge("x", [1, 3, 5], [2, 3, 4], paired=False).verdict == "within noise"
    one = judge("x", [47.1], [31.2], paired=True, threshold=10)
    assert one.low is None and one.verdict.startswith("no interval with 1 seed(s)")
    assert "reaches the +10 margin" in one.verdict
    assert judge("x", [], [1.0], paired=False).verdict == "no runs yet"
    with pytest.raises(ValueError, match="paired comparison needs"):
        judge("x", [1.0, 2.0], [1.0], paired=True)


def test_table_rows_show_both_sides_and_the_test():
    text = verdict_table([judge("A beats B", [1, 2, 3], [4, 5, 6], paired=False)], "MOKD", "alone")
    assert "| claim | MOKD | alone |" in text
    assert "| A beats B | 2.00 +- 1.00 (n=3) | 5.00 +- 1.00 (n=3) | -3.00 [-5.27, -0.73] |" in text
    assert "(Welch t) | reversed |" in text
    assert mean_std([47.1]) == "47.10 (n=1)"


def test_seeds_to_settle_a_result_within_noise():
    # paired differences 1 and 3: mean 2, sd sqrt(2); t(0.975, n-1) * sqrt(2/n) first drops below 2 at n = 5
    # (n=4: 3.182 * 0.707 = 2.25; n=5: 2.776 * 0.632 = 1.76)
    v = judge("x", [11, 13], [10, 10], paired=True)
    assert v.verdict == "within noise" and v.seeds_to_settle == 5
    # Welch, a = [0, 2] (variance 2), b = [0, 0]: difference 1, df n - 1; t * sqrt(2/n): n=10 1.012, n=11 0.950
    assert judge("x", [0, 2], [0, 0], paired=False).seeds_to_settle == 11
    assert seeds_to_settle([0, 2], [1, 1], paired=False) is None  # equal means: no number of seeds separates them
    assert seeds_to_settle([0, 2.2], [1, 1], paired=False) is None  # 0.1 apart, spread 1.56: over MAX_SEEDS
    assert judge("x", [1, 2, 3], [4, 5, 6], paired=False).seeds_to_settle is None  # already decided
    rows = verdict_table([judge("a", [11, 13], [10, 10], paired=True), judge("b", [0, 2.2], [1, 1], paired=False),
                          judge("c", [1, 2, 3], [4, 5, 6], paired=False)]).splitlines()
    assert rows[0].endswith("| verdict | seeds to settle |")
    assert rows[2].endswith("| within noise | 5 |")
    assert rows[3].endswith(f"| within noise | over {MAX_SEEDS} |")
    assert rows[4].endswith("| reversed |  |")
