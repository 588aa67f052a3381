"""
stats.py: the statistics afd-mini reports, in one place.

- Correlations of a learned logit with the exact log-ratio it estimates (the pipeline's calibration and its
  learned-vs-optimum comparisons): Pearson's r, ranks, Spearman's ρ, the AUC.
- The verdict on an effect over seeds (report.py's effect table): a paired 95% interval of the mean difference
  (Student's t) and the verdict it gives.

Pure functions on numbers; numpy only. The stage cache hashes this file with the pipeline's code, so a statistic
changed here is never read from a stale cached result.
"""
import math

import numpy as np


# -----------------------------------------------------------------------------------------------------------
# Correlations

def pearson(a, b):
    """Pearson's r of two samples; 0 when either is constant (no linear relation to speak of)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def ranks(x):
    """Ranks 1..n of x, ties given their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    for start, c in zip(first, counts):   # tied runs, in sorted order: each gets the mean of its ranks
        if c > 1:
            r[order[start:start + c]] = start + (c + 1) / 2
    return r


def spearman(a, b):
    """Rank correlation: Pearson's r of the ranks. Robust to the log-ratio's heavy tail (off-support responses
    sit near −100 nats and would dominate Pearson's r)."""
    return pearson(ranks(a), ranks(b))


def auc(pos, neg):
    """P(a pos score > a neg score) + ½ P(tie): the area under the ROC curve (Mann–Whitney U / (n_pos n_neg)).
    None when a class is empty."""
    if len(pos) == 0 or len(neg) == 0:
        return None
    r = ranks(np.concatenate([np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)]))
    return float((r[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


# -----------------------------------------------------------------------------------------------------------
# Effects over seeds: every comparison is between two things computed from the same seed's π_init and π_SFT, so
# it is judged on the K per-seed differences d_s (arranged so that the expected sign is positive), not on two
# means: seed-to-seed variation that moves both sides together cancels.

# Student's t, 97.5% quantile (two-sided 95%), for 1..30 degrees of freedom (any table of t).
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042]


def t_quantile_975(df):
    """t_{0.975, df}. Past the table, the Cornish–Fisher expansion of t around the normal quantile
    z = 1.95996 (Abramowitz & Stegun 26.7.5), accurate to 1e-3 for df > 30."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be ≥ 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3


def paired_interval(diffs):
    """95% confidence interval of the mean of K paired differences (Student's t, K − 1 df):
        d̄ ± t_{0.975, K−1} · s / √K,   s the sample standard deviation (ddof = 1).
    Returns [lo, hi], or None for K < 3 (two seeds give one degree of freedom: t = 12.7, no interval
    worth the name)."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 3:
        return None
    half = t_quantile_975(len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return [float(d.mean() - half), float(d.mean() + half)]


def verdict(diffs):
    """The verdict on K paired differences whose expected sign is positive: holds (the 95% interval excludes 0
    above), does not hold (below), inconclusive (it contains 0), indicative (K < 3: no interval)."""
    ci = paired_interval(diffs)
    if ci is None:
        return "indicative"
    return "holds" if ci[0] > 0 else "does not hold" if ci[1] < 0 else "inconclusive"
