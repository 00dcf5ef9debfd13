"""The cluster-robust statistics (interp.stats.clustered) against direct computations."""

import numpy as np
import pytest
from scipy import stats as sps

from interp.stats import clustered as cl


def _data(seed=0, N=60, C=4, G=12):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, G, N)
    shared = rng.normal(0, 1, (G, C))[g]  # a cluster effect: pairs of one swap move together
    R = np.abs(rng.normal(2, 0.5, (N, C))) + 0.5
    A = np.abs(R * 0.7 + 0.3 * shared + rng.normal(0, 0.2, (N, C)))
    return A, R, g


def test_cluster_se_and_test_equal_a_direct_loop():
    A, R, g = _data()
    out = cl.paired(A, R, g)
    N, G = len(g), len(set(g))
    d = A - R
    for c in range(A.shape[1]):
        e = d[:, c] - d[:, c].mean()
        meat = sum(e[g == k].sum() ** 2 for k in set(g))
        se = np.sqrt(G / (G - 1) * meat) / N
        assert out["se_cluster"][c] == pytest.approx(se, rel=1e-12)
        t = d[:, c].mean() / se
        assert out["t_cluster"][c] == pytest.approx(t, rel=1e-12)
        assert out["p_cluster"][c] == pytest.approx(sps.t.cdf(t, G - 1), rel=1e-10)
    assert (out["n_clusters"] == G).all()


def test_ratio_interval_contains_the_ratio_and_widens_with_clustering():
    A, R, g = _data(1)
    ratio = A.mean(0) / R.mean(0)
    clus = cl.paired(A, R, g)
    iid = cl.paired(A, R, np.arange(len(g)))
    assert (clus["ratio_lo"] < ratio).all() and (ratio < clus["ratio_hi"]).all()
    # shared cluster effects: the clustered interval is wider than the one that treats pairs as independent
    assert ((clus["ratio_hi"] - clus["ratio_lo"]) > (iid["ratio_hi"] - iid["ratio_lo"])).all()


def test_iid_ratio_interval_from_moments_equals_the_per_pair_one_with_singleton_clusters():
    A, R, g = _data(2)
    N = len(g)
    iid = cl.paired(A, R, np.arange(N))
    lo, hi = cl.ratio_ci_iid(A.mean(0), A.var(0, ddof=1), R.mean(0), R.var(0, ddof=1), (A - R).var(0, ddof=1), N)
    # singleton clusters: CR1 = N/(N-1) * sum psi^2 / N^2 = the sample variance / N
    np.testing.assert_allclose(lo, iid["ratio_lo"], rtol=1e-10)
    np.testing.assert_allclose(hi, iid["ratio_hi"], rtol=1e-10)


def test_adjusted_effect_recovers_a_planted_real_edit_coefficient():
    rng = np.random.default_rng(3)
    N, G = 400, 40
    g = rng.integers(0, G, N)
    x_ab, x_ac = rng.uniform(0.1, 0.5, N), rng.uniform(0.3, 0.9, N)
    # a component whose change is 2 x distance, and 0.5 less on the real edit; another only distance
    A = np.stack([2 * x_ab - 0.5, 2 * x_ab], 1) + rng.normal(0, 0.05, (N, 2)) + 1
    R = np.stack([2 * x_ac, 2 * x_ac], 1) + rng.normal(0, 0.05, (N, 2)) + 1
    out = cl.adjusted_effect(A, R, x_ab, x_ac, g)
    assert out["adj_coef"][0] == pytest.approx(-0.5, abs=0.03)
    assert out["adj_lo"][0] < -0.5 < out["adj_hi"][0]
    assert out["adj_lo"][1] < 0 < out["adj_hi"][1]  # changes exactly as its distance predicts
    # the same coefficient by least squares on the stacked observations
    X = np.concatenate([np.stack([np.ones(N), x_ab, np.ones(N)], 1), np.stack([np.ones(N), x_ac, np.zeros(N)], 1)])
    beta = np.linalg.lstsq(X, np.concatenate([A, R]), rcond=None)[0]
    np.testing.assert_allclose(out["adj_coef"], beta[2], rtol=1e-9)


def test_adjusted_effect_is_nan_when_distance_and_indicator_are_confounded():
    A, R, g = _data(4)
    N = len(g)
    out = cl.adjusted_effect(A, R, np.ones(N), np.zeros(N), g)  # distance = the indicator
    assert np.isnan(out["adj_coef"]).all()


def test_contrast_of_random_halves_rarely_rejects():
    rng = np.random.default_rng(5)
    N, C, G = 200, 300, 25
    g = rng.integers(0, G, N)
    D = rng.normal(0, 1, (G, C))[g] + rng.normal(0, 1, (N, C))  # strong cluster effects
    side = rng.permutation(N) < N // 2
    out = cl.contrast(D, side, g)
    assert np.mean(out["p_cluster"] < 0.05) < 0.12
    assert (out["n_clusters"] == G).all()


def test_pairs_without_a_value_and_single_clusters_give_nan():
    A, R, g = _data(6)
    A[:5] = np.nan  # e.g. no token after the edit
    out = cl.paired(A, R, g)
    assert np.isfinite(out["se_cluster"]).all()
    one = cl.paired(A[5:], R[5:], np.zeros(len(g) - 5))
    assert np.isnan(one["se_cluster"]).all() and np.isnan(one["ratio_hi"]).all()


def test_templates_mask_the_edited_span():
    assert cl.template("She is good at math.", "She is good of math.") == "She is good _ math."
    assert cl.template("He runs.", "He run.") == "He _"
