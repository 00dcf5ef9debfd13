"""Tests from moments: the paired t-test against control edits, Welch's two-sample test, BH q-values.

Each works on numpy arrays of per-component moments (mean, standard deviation, count), so the
tables need no per-pair data. NaN goes in where a test has no value (too few pairs, no spread).
"""

from __future__ import annotations

import numpy as np
from scipy import stats as scipy_stats


def paired_t(mean: np.ndarray, std: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-sided paired t-test "the mean of the per-pair difference is below 0" from its moments:
    (t statistic, p-value); p is NaN where t is not finite or fewer than two pairs."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / (std / np.sqrt(n))
        p = np.where(np.isfinite(t) & (n > 1), scipy_stats.t.cdf(t, np.maximum(n - 1, 1)), np.nan)
    return t, p


def welch(na, xa, va, nb, xb, vb) -> tuple[np.ndarray, np.ndarray]:
    """Welch's two-sided two-sample t-test from counts, means and variances: (t, p)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        se2 = va / na + vb / nb
        t = (xa - xb) / np.sqrt(se2)
        df_w = se2 ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
        p = np.where(np.isfinite(t) & np.isfinite(df_w), 2 * scipy_stats.t.sf(np.abs(t), df_w), np.nan)
    return t, p


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values); NaN p-values stay NaN and are not counted."""
    p = np.asarray(p, dtype=float)
    q = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return q
    pv = p[ok]
    order = np.argsort(pv)
    ranked = pv[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.clip(ranked, 0, 1)
    q[ok] = out
    return q
