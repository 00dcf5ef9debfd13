"""The registry of statistics: which per-pair values are accumulated, and which table columns they give.

Two kinds of small frozen specs, in the order they are used:

- ``Channel``: one per-pair value per component and position mode (``a - b``, ``|a - b|``, the
  control change...), accumulated as moments over pairs. ``per_pair`` is its PyTorch computation
  from a chunk's ``ModeValues`` (the reference the GPU kernel is tested against). Its place in
  ``channels(n_controls)`` is its slot: the channel axis of the running state and of the fused
  kernel's output (``interp.kernels.statistics`` writes one line per channel at that slot).
  Channels that need control edits come after those that do not, so the state of a run without
  controls is a prefix of one with them.
- ``Column``: one column of the stability table. ``site`` columns are computed per hook site and
  position mode from the channels' moments and the component's spread (``SiteMode``); ``table``
  columns from the whole table (ranks, q-values). ``menu`` places a column in a viewer's list of
  values to colour or sort by (``value_columns()``); None leaves it out.

Adding a statistic: a ``Channel`` here, its ``Column``s here, and its line in the kernel
(``interp.kernels.statistics``); ``DiffStats``, the tables and the viewer find it from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .significance import bh_qvalues, paired_t

from ..config import POSITION_MODES as MODES  # noqa: E402,F401  edit, last, after: the order of the per-pair values' mode axis


@dataclass(frozen=True)
class ModeValues:
    """A chunk's per-pair values at the position modes, each [S, B, 3, C] (NaN: no value).

    ``diff`` = a - b (for per-head units: the norm of the head's change, as ``abs``); ``abs`` =
    |a - b|; ``ctrl`` = the mean over the K control edits of |a - c_k| (None without controls)."""

    diff: Tensor
    abs: Tensor
    ctrl: Tensor | None = None


@dataclass(frozen=True)
class Channel:
    """A per-pair value, accumulated as moments over pairs (module docstring)."""

    name: str
    doc: str
    per_pair: Callable[[ModeValues], Tensor]
    needs_controls: bool = False


def _ratio(v: ModeValues) -> Tensor:
    return torch.where(v.ctrl > 0, v.abs / v.ctrl.clamp(min=1e-30), float("nan"))


CHANNELS: tuple[Channel, ...] = (
    Channel("diff", "a - b", lambda v: v.diff),
    Channel("abs", "|a - b|", lambda v: v.abs),
    Channel("ctrl", "mean over the control edits of |a - c_k|", lambda v: v.ctrl, needs_controls=True),
    Channel("delta", "|a - b| - ctrl: the paired difference the t-test uses", lambda v: v.abs - v.ctrl,
            needs_controls=True),
    Channel("ratio", "|a - b| / ctrl (NaN where no control edit moved the component)", _ratio, needs_controls=True),
)


def channels(n_controls: int) -> tuple[Channel, ...]:
    """The channels a run with ``n_controls`` control edits keeps, in slot order."""
    return tuple(c for c in CHANNELS if n_controls or not c.needs_controls)


def channel_names(n_controls: int) -> tuple[str, ...]:
    return tuple(c.name for c in channels(n_controls))


def slot(name: str, n_controls: int) -> int:
    """The channel's index on the channel axis of the state and of the fused kernel's output."""
    return channel_names(n_controls).index(name)


def contrast_channel(n_controls: int) -> str:
    """The per-pair value a contrast between groups compares: ``delta`` with controls, else ``abs``."""
    return "delta" if n_controls else "abs"


@dataclass
class SiteMode:
    """What a site column is computed from: one hook site at one position mode (numpy, over components).

    ``mean(ch)``, ``std(ch)``, ``n(ch)``: the moments over pairs of channel ``ch``; ``act_mean`` and
    ``spread``: the component's own mean and standard deviation over sentence tokens; ``constant``
    and ``offset``, ``massive``: the component flags; ``max_abs``: its largest |activation|."""

    names: tuple[str, ...]
    means: np.ndarray  # [CH, M, C]
    stds: np.ndarray
    ns: np.ndarray
    k: int  # the position mode's index
    act_mean: np.ndarray
    spread: np.ndarray
    constant: np.ndarray
    offset: np.ndarray
    massive: np.ndarray
    max_abs: np.ndarray
    level: float = 0.95  # confidence level of the intervals

    def mean(self, ch: str) -> np.ndarray:
        return self.means[self.names.index(ch), self.k]

    def std(self, ch: str) -> np.ndarray:
        return self.stds[self.names.index(ch), self.k]

    def n(self, ch: str) -> np.ndarray:
        return self.ns[self.names.index(ch), self.k]

    def per_spread(self, x: np.ndarray) -> np.ndarray:
        """``x`` in units of the component's spread (NaN where the component never moves)."""
        return np.where(self.spread > 0, x / self.spread, np.nan)


@dataclass(frozen=True)
class Column:
    """A column of the stability table (module docstring)."""

    name: str
    doc: str
    compute: Callable  # site: SiteMode -> array [C]; table: DataFrame -> Series
    needs_controls: bool = False
    scope: str = "site"  # "site" or "table"
    menu: int | None = None  # place in a viewer's value menu (None: not offered)


def _ratio_ci(m: SiteMode) -> tuple[np.ndarray, np.ndarray]:
    from .clustered import ratio_ci_iid

    return ratio_ci_iid(m.mean("abs"), m.std("abs") ** 2, m.mean("ctrl"), m.std("ctrl") ** 2, m.std("delta") ** 2,
                        m.n("abs"), m.level)


def _t(m: SiteMode) -> tuple[np.ndarray, np.ndarray]:
    return paired_t(m.mean("delta"), m.std("delta"), m.n("delta"))


COLUMNS: tuple[Column, ...] = (
    Column("n_pairs", "pairs with a value at this position mode", lambda m: m.n("abs").astype(np.int64), menu=14),
    Column("mean_diff", "mean of a - b", lambda m: m.mean("diff"), menu=3),
    Column("std_diff", "standard deviation of a - b over pairs", lambda m: m.std("diff"), menu=4),
    Column("mean_abs_diff", "mean of |a - b|", lambda m: m.mean("abs"), menu=1),
    Column("std_abs_diff", "standard deviation of |a - b| over pairs", lambda m: m.std("abs"), menu=2),
    Column("act_mean", "the component's mean over sentence tokens", lambda m: m.act_mean, menu=6),
    Column("spread", "the component's standard deviation over sentence tokens", lambda m: m.spread, menu=5),
    Column("normalized", "mean |a - b| / spread", lambda m: m.per_spread(m.mean("abs")), menu=0),
    Column("normalized_std", "std |a - b| / spread", lambda m: m.per_spread(m.std("abs")), menu=7),
    Column("constant", "the component never moves (spread 0)", lambda m: m.constant),
    Column("offset_dim", "a large, nearly constant offset: rms above analysis.offset.factor x the site's median "
           "rms and spread below analysis.offset.max_cv x |mean| (BOS excluded)", lambda m: m.offset),
    Column("massive", "a massive activation (Sun et al. 2024): max |activation| over every token, BOS and "
           "delimiters included, >= analysis.massive.ratio x the layer's median |activation| and >= "
           "analysis.massive.min_abs", lambda m: m.massive),
    Column("max_abs", "largest |activation| of the component over every token of a and b, BOS included",
           lambda m: m.max_abs),
    Column("mean_control_diff", "mean over pairs of ctrl", lambda m: m.mean("ctrl"), needs_controls=True),
    Column("control_normalized", "mean ctrl / spread", lambda m: m.per_spread(m.mean("ctrl")),
           needs_controls=True, menu=9),
    Column("ratio", "mean |a - b| / mean ctrl",
           lambda m: np.where(m.mean("ctrl") > 0, m.mean("abs") / m.mean("ctrl"), np.nan), needs_controls=True,
           menu=10),
    Column("ratio_lo", "lower end of the ratio's confidence interval (analysis.ci; cluster-robust where "
           "se_method says so, else pairs as independent)", lambda m: _ratio_ci(m)[0], needs_controls=True),
    Column("ratio_hi", "upper end of the ratio's confidence interval: the equivalence rule's statistic",
           lambda m: _ratio_ci(m)[1], needs_controls=True, menu=15),
    Column("ratio_pair_mean", "mean over pairs of the per-pair ratio", lambda m: m.mean("ratio"), needs_controls=True),
    Column("ratio_pair_std", "standard deviation of the per-pair ratio", lambda m: m.std("ratio"), needs_controls=True),
    Column("delta_normalized", "mean delta / spread", lambda m: m.per_spread(m.mean("delta")), needs_controls=True),
    Column("t_stat", "paired t statistic of delta over pairs", lambda m: _t(m)[0], needs_controls=True),
    Column("p_value", "one-sided p of the paired t-test '|a - b| < ctrl'", lambda m: _t(m)[1], needs_controls=True,
           menu=11),
    # cluster-robust columns (``interp.stats.clustered``), computed from the kept per-pair values;
    # sites and position modes without them: NaN, n_clusters -1, se_method "iid"
    Column("n_clusters", "clusters (analysis.cluster) among the pairs with a value", None, needs_controls=True,
           scope="clustered"),
    Column("se_cluster", "cluster-robust (CR1) standard error of mean delta", None, needs_controls=True,
           scope="clustered"),
    Column("t_cluster", "mean delta / se_cluster, with n_clusters - 1 degrees of freedom", None, needs_controls=True,
           scope="clustered"),
    Column("p_cluster", "one-sided p of the cluster-robust test '|a - b| < ctrl'", None, needs_controls=True,
           scope="clustered"),
    Column("adj_coef", "real-edit coefficient of |change| ~ 1 + embedding distance + real edit (each pair's "
           "edit and its controls; negative: smaller than an equally large control edit)", None,
           needs_controls=True, scope="clustered"),
    Column("adj_lo", "lower end of adj_coef's cluster-robust confidence interval", None, needs_controls=True,
           scope="clustered"),
    Column("adj_hi", "upper end of adj_coef's cluster-robust confidence interval", None, needs_controls=True,
           scope="clustered"),
    Column("adj_normalized", "adj_coef / spread", None, needs_controls=True, scope="clustered", menu=16),
    Column("se_method", "how ratio_lo/ratio_hi were computed: cluster:<analysis.cluster> or iid", None,
           needs_controls=True, scope="clustered"),
    # whole-table columns: after the per-site ones (and ``head``/``head_dim``)
    Column("rank", "1 = smallest normalized change, per position mode (constant components: none)",
           lambda df: df.groupby("position")["normalized"].rank(method="first").astype("Int64"), scope="table",
           menu=8),
    Column("q_value", "Benjamini-Hochberg q-value of p_value over every row of the table",
           lambda df: bh_qvalues(df["p_value"].to_numpy()), needs_controls=True, scope="table", menu=12),
    Column("q_cluster", "Benjamini-Hochberg q-value of p_cluster over the rows that have one",
           lambda df: bh_qvalues(df["p_cluster"].to_numpy(dtype=float)), needs_controls=True, scope="table",
           menu=17),
    Column("rank_calibrated", "1 = strongest evidence of changing less than a control edit",
           lambda df: df.groupby("position")["t_stat"].rank(method="first").astype("Int64"), needs_controls=True,
           scope="table", menu=13),
    # the verdict (``interp.rules.stable_mask`` with the run's analysis.rule), added last
    Column("stable", "the run's rule (analysis.rule): equivalence = ratio_hi < analysis.stable_ratio; "
           "significance = q_value < analysis.alpha and t_stat < 0; never a constant, offset or massive "
           "component", None, scope="rule"),
    Column("stable_layers", "layers of this hook point in which the same component index is stable at this "
           "position mode (the residual stream shares its basis across layers: one direction, many layers)",
           None, scope="rule"),
)


def columns(n_controls: int, scope: str = "site") -> tuple[Column, ...]:
    """The stability-table columns of ``scope`` a run with ``n_controls`` control edits has, in order."""
    return tuple(c for c in COLUMNS if c.scope == scope and (n_controls or not c.needs_controls))


def site_columns(m: SiteMode, n_controls: int) -> dict[str, np.ndarray]:
    """The site columns of one hook site at one position mode."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return {c.name: c.compute(m) for c in columns(n_controls, "site")}


def add_table_columns(df: pd.DataFrame, n_controls: int) -> pd.DataFrame:
    """The whole-table columns, added to ``df`` in place (and returned)."""
    for c in columns(n_controls, "table"):
        df[c.name] = c.compute(df)
    return df


def value_columns() -> list[str]:
    """Columns of the stability table that a viewer can colour or sort by, in menu order (a run
    without controls lacks those that need them)."""
    return [c.name for c in sorted((c for c in COLUMNS if c.menu is not None), key=lambda c: c.menu)]


def _check() -> None:
    first = [c.needs_controls for c in CHANNELS]
    if first != sorted(first):
        raise AssertionError("channels that need control edits must come after those that do not")
    names = [c.name for c in COLUMNS]
    if len(set(names)) != len(names):
        raise AssertionError("column names must be unique")


_check()
