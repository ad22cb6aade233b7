"""Rank agreement statistics at exact values."""

import math

import pytest

from nasfpn_tf.search import ranking


def test_ranks_share_ties():
    assert list(ranking.ranks([3.0, 1.0, 3.0, 2.0])) == [3.5, 1.0, 3.5, 2.0]


def test_spearman_and_kendall_at_exact_values():
    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    # 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 4 / 120
    assert ranking.spearman(x, y) == pytest.approx(0.8)
    # 8 concordant, 2 discordant pairs out of 10
    assert ranking.kendall(x, y) == pytest.approx(0.6)
    assert ranking.spearman(x, x[::-1]) == pytest.approx(-1.0)
    assert ranking.kendall(x, x[::-1]) == pytest.approx(-1.0)


def test_kendall_tau_b_corrects_ties():
    # Pairs: (0,1) tied in x only; (0,2), (1,2) concordant.
    assert ranking.kendall([1, 1, 2], [1, 2, 3]) == pytest.approx(
        2 / math.sqrt(2 * 3)
    )


def test_constant_side_is_undefined():
    assert math.isnan(ranking.spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(ranking.kendall([1, 2, 3], [5, 5, 5]))


def test_bootstrap_interval_of_a_monotone_relation_is_one():
    x = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    y = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    low, high = ranking.bootstrap_interval(x, y, ranking.spearman, samples=200)
    # scipy computes rho as Pearson r of the ranks: 1 up to rounding.
    assert (low, high) == pytest.approx((1.0, 1.0), abs=1e-12)


def test_bootstrap_interval_is_seeded_and_ordered():
    x = [0.1, 0.5, 0.2, 0.9, 0.4, 0.3, 0.8]
    y = [0.2, 0.3, 0.1, 0.8, 0.6, 0.2, 0.9]
    first = ranking.bootstrap_interval(x, y, ranking.kendall, seed=3)
    again = ranking.bootstrap_interval(x, y, ranking.kendall, seed=3)
    assert first == again
    assert -1 <= first[0] < ranking.kendall(x, y) < first[1] <= 1
