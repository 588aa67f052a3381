"""Tests of stats.py: the correlations of the calibration figures and the paired intervals of the effects, each
against published values or a brute-force computation written here."""
import numpy as np
import pytest

import stats


def test_t_quantiles_match_the_table_and_its_expansion():
    # published values of t_{0.975, df}: the table's ends and the expansion past it
    for df, t in [(1, 12.706), (4, 2.776), (30, 2.042), (40, 2.021), (60, 2.000), (120, 1.980)]:
        assert stats.t_quantile_975(df) == pytest.approx(t, abs=1.5e-3)
    with pytest.raises(ValueError):
        stats.t_quantile_975(0)

def test_paired_interval_of_a_known_sample():
    # d = 1..5: mean 3, s² = (4 + 1 + 0 + 1 + 4) / 4 = 2.5, t_{0.975, 4} = 2.776,
    # half-width 2.776 · √2.5 / √5 = 2.776 · √0.5 = 1.96293
    lo, hi = stats.paired_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert lo == pytest.approx(3 - 1.96293, abs=1e-4) and hi == pytest.approx(3 + 1.96293, abs=1e-4)
    assert stats.paired_interval([1.0, 2.0]) is None   # K < 3: no interval

@pytest.mark.parametrize("diffs, verdict", [
    ([1.0, 2.0, 3.0, 4.0, 5.0], "holds"),            # interval [1.04, 4.96]
    ([-1.0, -2.0, -3.0, -4.0, -5.0], "does not hold"),
    ([1.0, -2.0, 3.0, -4.0, 1.5], "inconclusive"),   # mean −0.1, s ≈ 2.9: the interval spans 0
    ([2.5, 2.5, 2.5], "holds"),                      # no spread at all
    ([4.0, 5.0], "indicative"),
    ([3.0], "indicative"),
])
def test_verdict(diffs, verdict):
    assert stats.verdict(diffs) == verdict


def test_ranks_spearman_and_auc_against_brute_force():
    """The calibration numbers: ranks with ties averaged, Spearman's ρ as Pearson's r of the ranks, and the AUC as
    the fraction of (pos, neg) pairs ordered right, ties counting one half, each against a loop written here."""
    x = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0]
    brute = [1 + sum(v < xi for v in x) + (sum(v == xi for v in x) - 1) / 2 for xi in x]   # average rank of ties
    assert stats.ranks(x).tolist() == brute
    y = [2.0, 7.0, 1.0, 8.0, 2.0, 8.0, 1.0, 8.0, 2.0]
    ry = [1 + sum(v < yi for v in y) + (sum(v == yi for v in y) - 1) / 2 for yi in y]
    assert stats.spearman(x, y) == pytest.approx(np.corrcoef(brute, ry)[0, 1])
    assert stats.spearman(x, [-v for v in x]) == pytest.approx(-1.0)
    assert stats.pearson(x, [2 * v + 1 for v in x]) == pytest.approx(1.0)
    assert stats.pearson(x, [1.0] * len(x)) == 0.0   # a constant: no correlation to speak of
    pos, neg = [0.3, 0.9, 0.5, 0.5], [0.1, 0.5, 0.7]
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p in pos for n in neg]
    assert stats.auc(pos, neg) == pytest.approx(sum(pairs) / len(pairs))
    assert stats.auc(pos, []) is None
