"""Cluster-robust inference from per-pair values: effect sizes with confidence intervals.

Pairs are not independent: the bank's ``article`` category swaps 4 token pairs over 213 pairs, and
some categories reuse one sentence ``a`` 30 times. With hundreds of pairs an iid test makes any
consistent 5% difference "significant", so the stability table leads with effect sizes whose
intervals respect the clusters. All functions take, per hook site and position mode, the per-pair
values of every component at once (``[N, C]`` arrays, pairs x components) and a cluster code per
pair, and return one value per component.

Definitions (``G`` clusters, ``N`` pairs with a value, ``S_g`` the sum over cluster ``g``):

- ``cluster_se(delta)``: the CR1 standard error of the mean of ``delta = |a-b| - ctrl``:
  ``sqrt(G / (G - 1) * sum_g S_g(delta - mean)^2) / N``; the paired test is ``t = mean / se`` with
  ``G - 1`` degrees of freedom (one-sided, "|a-b| changes less than a control edit").
- the ratio of means ``mean |a-b| / mean ctrl`` and its interval by the delta method on the log
  ratio, with the per-pair influence ``(A - mean A) / mean A - (R - mean R) / mean R`` summed per
  cluster (the same CR1 factor), ``t_{G-1}`` quantiles; a component the real edits never move
  (every ``|a-b|`` = 0) has the interval [0, 0].
- ``adjusted_effect``: the regression of a component's change on the substitution's size. Each pair
  gives two observations, the real edit (``y = |a-b|``, ``x = dist_ab``, ``real = 1``) and its
  controls (``y = ctrl``, ``x = dist_ac_mean``, ``real = 0``), where the distances are cosine
  distances of the input embeddings of the swapped tokens; ``y = b0 + b1 x + b2 real``. ``b2`` is
  the change of a real edit beyond what its size predicts (negative: the component changes less
  than an equally large control edit); its standard error is cluster-robust (both observations of a
  pair in the pair's cluster), with the factor ``G / (G - 1)`` alone (Stata's CR1 also multiplies by
  ``(n - 1) / (n - k)``, here ``(2N - 1) / (2N - 3)``: under 1% for 60 pairs).
- ``contrast``: the difference of the mean ``delta`` between two sets of pairs, clusters spanning
  both sides allowed.

Components with no spread or no control change give NaN; fewer than two clusters give NaN.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats as scipy_stats

from ..pairs.records import word_edit


# the float columns of the stability table computed here (besides n_clusters and the ratio's interval)
COLUMNS = ("se_cluster", "t_cluster", "p_cluster", "adj_coef", "adj_lo", "adj_hi", "adj_normalized")


def cluster_keys(pairs, kind: str) -> np.ndarray:
    """Cluster codes of the rows of a pairs table: ``swap`` = the unordered pair {token_id_a,
    token_id_b} (the first token of each side for span edits);
    ``template`` = sentence a with the edited span masked (the text a and b share around the
    edit); ``none`` = one cluster per pair."""
    if kind == "none":
        return np.arange(len(pairs), dtype=np.int64)
    if kind == "swap":  # unordered: a -> an and an -> a are the same lexical swap
        return codes(tuple(sorted(x)) for x in zip(pairs["token_id_a"].tolist(), pairs["token_id_b"].tolist()))
    if kind == "template":
        return codes(template(a, b) for a, b in zip(pairs["a"].tolist(), pairs["b"].tolist()))
    raise ValueError(f"analysis.cluster={kind!r} is not one of swap, template, none")


def template(a: str, b: str) -> str:
    """Sentence ``a`` with the words where it differs from ``b`` replaced by ``_``."""
    wa, _, i, j = word_edit(a, b)
    return " ".join(wa[:i] + ["_"] + wa[len(wa) - j:])


def codes(keys) -> np.ndarray:
    """Cluster codes 0..G-1 from any per-pair keys (in order of first appearance)."""
    index: dict = {}
    return np.array([index.setdefault(k, len(index)) for k in keys], dtype=np.int64)


def _sums(x: torch.Tensor, g: torch.Tensor, G: int) -> torch.Tensor:
    """Per-cluster sums of the rows of x [N, C] -> [G, C]."""
    return torch.zeros((G, x.shape[1]), dtype=x.dtype).index_add_(0, g, x)


def _crv(score: torch.Tensor, g: torch.Tensor, G: int) -> torch.Tensor:
    """CR1 variance of a sum of per-observation scores [N, C]: G/(G-1) * sum_g S_g^2."""
    return G / (G - 1) * _sums(score, g, G).square().sum(0)


def _prep(g: np.ndarray, *arrays: np.ndarray):
    """Keep pairs with every value finite (a pair without a value at a position mode is NaN
    throughout); recode the clusters 0..G-1. Returns (g, G, tensors...) in float64."""
    ok = np.ones(len(g), dtype=bool)
    for a in arrays:
        ok &= np.isfinite(a).all(axis=tuple(range(1, a.ndim))) if a.ndim > 1 else np.isfinite(a)
    gc = codes(np.asarray(g)[ok])
    G = int(gc.max()) + 1 if len(gc) else 0
    return torch.from_numpy(gc), G, [torch.from_numpy(np.asarray(a, dtype=np.float64)[ok]) for a in arrays]


def _tq(level: float, G: int) -> float:
    return float(scipy_stats.t.ppf(0.5 + level / 2, max(G - 1, 1)))


def paired(A: np.ndarray, R: np.ndarray, g: np.ndarray, level: float = 0.95) -> dict[str, np.ndarray]:
    """The cluster-robust statistics of one site and position mode.

    A, R: [N, C] per-pair |a-b| and control mean; g: [N] cluster keys. Returns per component:
    ``n_clusters``, ``ratio_lo``/``ratio_hi`` (the interval of mean A / mean R at ``level``),
    ``se_cluster`` (of mean(A - R)), ``t_cluster`` and the one-sided ``p_cluster``."""
    gt, G, (a, r) = _prep(g, A, R)
    C = A.shape[1]
    nan = np.full(C, np.nan)
    out = {"n_clusters": np.full(C, G, dtype=np.int64), "ratio_lo": nan, "ratio_hi": nan.copy(),
           "se_cluster": nan.copy(), "t_cluster": nan.copy(), "p_cluster": nan.copy()}
    N = a.shape[0]
    if G < 2:
        return out
    d = a - r
    md = d.mean(0)
    se = _crv(d - md, gt, G).sqrt() / N
    ma, mr = a.mean(0), r.mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (md / se).numpy()
        p = np.where(np.isfinite(t), scipy_stats.t.cdf(t, G - 1), np.nan)
        psi = (a - ma) / ma - (r - mr) / mr
        se_log = (_crv(psi, gt, G).sqrt() / N).numpy()
        log_ratio = np.log(ma.numpy()) - np.log(mr.numpy())
    q = _tq(level, G)
    live = (ma.numpy() > 0) & (mr.numpy() > 0) & np.isfinite(se_log)
    zero = (ma.numpy() == 0) & (mr.numpy() > 0)  # the real edit never moves it: the ratio is exactly 0
    out.update(se_cluster=se.numpy(), t_cluster=t, p_cluster=p,
               ratio_lo=np.where(live, np.exp(log_ratio - q * se_log), np.where(zero, 0.0, np.nan)),
               ratio_hi=np.where(live, np.exp(log_ratio + q * se_log), np.where(zero, 0.0, np.nan)))
    return out


def adjusted_effect(A: np.ndarray, R: np.ndarray, x_ab: np.ndarray, x_ac: np.ndarray, g: np.ndarray,
                    level: float = 0.95) -> dict[str, np.ndarray]:
    """The real-edit coefficient of ``y ~ 1 + distance + real`` per component (module docstring):
    ``adj_coef``, ``adj_lo``, ``adj_hi`` (NaN where the design is singular: e.g. every control
    exactly as far from ``a`` as its real edit)."""
    gt, G, (a, r, xb, xc) = _prep(g, A, R, x_ab, x_ac)
    C = A.shape[1]
    nan = np.full(C, np.nan)
    out = {"adj_coef": nan, "adj_lo": nan.copy(), "adj_hi": nan.copy()}
    N = a.shape[0]
    if G < 2:
        return out
    one = torch.ones(N, dtype=torch.float64)
    X = torch.cat([torch.stack([one, xb, one], 1), torch.stack([one, xc, 0 * one], 1)])  # [2N, 3]
    Y = torch.cat([a, r])  # [2N, C]
    xtx = X.T @ X
    if torch.linalg.cond(xtx) > 1e12:
        return out
    inv = torch.linalg.inv(xtx)
    beta = inv @ (X.T @ Y)  # [3, C]
    u = Y - X @ beta
    w = X @ inv[2]  # [2N]: observation i's weight in the real-edit coefficient
    se = _crv(w[:, None] * u, torch.cat([gt, gt]), G).sqrt().numpy()
    q = _tq(level, G)
    coef = beta[2].numpy()
    out.update(adj_coef=coef, adj_lo=coef - q * se, adj_hi=coef + q * se)
    return out


def contrast(D: np.ndarray, side: np.ndarray, g: np.ndarray) -> dict[str, np.ndarray]:
    """Cluster-robust two-sided test of mean D[side] - mean D[~side] per component (D: [N, C]
    per-pair values, side: [N] bool): ``n_clusters``, ``se_cluster``, ``t_cluster``, ``p_cluster``."""
    gt, G, (d, s) = _prep(g, D, np.asarray(side, dtype=np.float64))
    C = D.shape[1]
    nan = np.full(C, np.nan)
    out = {"n_clusters": np.full(C, G, dtype=np.int64), "se_cluster": nan, "t_cluster": nan.copy(),
           "p_cluster": nan.copy()}
    sa = s > 0.5
    na, nb = int(sa.sum()), int((~sa).sum())
    if G < 2 or na < 1 or nb < 1:
        return out
    ma, mb = d[sa].mean(0), d[~sa].mean(0)
    psi = torch.where(sa[:, None], (d - ma) / na, -(d - mb) / nb)
    se = _crv(psi, gt, G).sqrt()
    with np.errstate(divide="ignore", invalid="ignore"):
        t = ((ma - mb) / se).numpy()
        p = np.where(np.isfinite(t), 2 * scipy_stats.t.sf(np.abs(t), G - 1), np.nan)
    out.update(se_cluster=se.numpy(), t_cluster=t, p_cluster=p)
    return out


def ratio_ci_iid(mean_a, var_a, mean_r, var_r, var_d, n, level: float = 0.95):
    """The ratio-of-means interval from moments alone (pairs as independent; sites whose per-pair
    values a run did not keep): cov(A, R) = (var A + var R - var(A - R)) / 2."""
    with np.errstate(divide="ignore", invalid="ignore"):
        cov = (var_a + var_r - var_d) / 2
        v = (var_a / mean_a ** 2 + var_r / mean_r ** 2 - 2 * cov / (mean_a * mean_r)) / n
        se = np.sqrt(np.maximum(v, 0))
        q = scipy_stats.t.ppf(0.5 + level / 2, np.maximum(n - 1, 1))
        lr = np.log(mean_a) - np.log(mean_r)
        live = (mean_a > 0) & (mean_r > 0) & (n > 1) & np.isfinite(se)
        zero = (mean_a == 0) & (mean_r > 0) & (n > 1)
        return (np.where(live, np.exp(lr - q * se), np.where(zero, 0.0, np.nan)),
                np.where(live, np.exp(lr + q * se), np.where(zero, 0.0, np.nan)))


def mean_ci(x: np.ndarray, g: np.ndarray, level: float = 0.95) -> dict[str, np.ndarray]:
    """The mean of per-pair values x ([N] or [N, C]) with its CR1 standard error and t interval
    (``G - 1`` degrees of freedom): ``mean``, ``se``, ``lo``, ``hi``, ``n``, ``n_clusters``
    (non-finite values dropped; NaN below two clusters)."""
    x = np.asarray(x, dtype=np.float64)
    one = x.ndim == 1
    gt, G, (v,) = _prep(g, x[:, None] if one else x)
    C = v.shape[1]
    nan = np.full(C, np.nan)
    N = v.shape[0]
    mean = v.mean(0).numpy() if N else nan
    out = {"mean": mean, "se": nan, "lo": nan.copy(), "hi": nan.copy(), "n": np.full(C, N),
           "n_clusters": np.full(C, G)}
    if G >= 2:
        se = (_crv(v - v.mean(0), gt, G).sqrt() / N).numpy()
        q = _tq(level, G)
        out.update(se=se, lo=mean - q * se, hi=mean + q * se)
    return {k: (a[0] if one else a) for k, a in out.items()}
