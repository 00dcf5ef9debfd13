"""The columns of ``stability.parquet`` that the viewer offers to plot, sort and show.

``VALUE_COLUMNS`` comes from the statistics registry (``interp.stats.registry``): a statistic
registered there with a menu place is offered here with no edit to the viewer (the ones a run has
are offered); ``OPTIONAL_STAB_COLUMNS`` are shown only where a run has them. ``CI_COLUMNS``: a
column shown with its confidence interval in one cell (``ratio [ratio_lo, ratio_hi]``), so
``display_columns`` leaves the interval's own columns out of tables (they stay sortable).
"""

from __future__ import annotations

from typing import Any, Iterable

from ..stats.registry import COLUMNS, value_columns

# Numeric columns one may plot or sort by (present ones are offered).
VALUE_COLUMNS = value_columns()

# value -> (lower, upper) end of its confidence interval
CI_COLUMNS = {"ratio": ("ratio_lo", "ratio_hi"), "adj_coef": ("adj_lo", "adj_hi")}
# the component flags no rule calls stable (``interp.rules.flagged``); ``offset_dim`` was called
# ``massive`` before the Sun et al. flag existed (the store renames it in old tables)
FLAG_COLUMNS = ("offset_dim", "massive")
# the verdict: ``stable`` (recomputed by the viewer with the run's rule) and ``stable_layers``
RULE_COLUMNS = ("stable", "stable_layers")

# The columns of the stable rules side by side: the null's change and the ratio with its interval,
# the iid and the cluster-robust test, the regression-adjusted effect, the flags and the verdict.
_ORDER = ("control_normalized", "ratio", "ratio_lo", "ratio_hi", "p_value", "q_value", "n_clusters", "q_cluster",
          "adj_coef", "adj_lo", "adj_hi", "adj_normalized", *FLAG_COLUMNS, *RULE_COLUMNS, "rank_calibrated")

DOCS = {c.name: c.doc for c in COLUMNS}  # header tooltips


def _optional_columns() -> list[str]:
    """The columns of the stable rules in ``_ORDER``, then any other value column written only with
    controls (``needs_controls`` in the registry, in menu order): a statistic registered with a menu
    place is shown with no edit here."""
    needs_controls = {c.name for c in COLUMNS if c.needs_controls}
    rest = [c for c in VALUE_COLUMNS if c in needs_controls and c not in _ORDER]
    return list(_ORDER) + rest


# Columns shown beside the others where a run has them.
OPTIONAL_STAB_COLUMNS = _optional_columns()


def display_columns(cols: Iterable[str]) -> list[str]:
    """``cols`` as a table shows them: the ends of an interval whose value is shown are left out
    (that cell shows ``value [lo, hi]``, ``ci_cell``)."""
    cols = list(cols)
    folded = {end for value, ends in CI_COLUMNS.items() if value in cols for end in ends}
    return [c for c in cols if c not in folded]


def with_ci(cols: Iterable[str]) -> list[str]:
    """``cols`` and the interval ends of the values among them (what a row needs for ``ci_parts``)."""
    cols = list(cols)
    return cols + [end for value, ends in CI_COLUMNS.items() if value in cols for end in ends if end not in cols]


def headers(cols: Iterable[str], available: Iterable[str]) -> dict[str, str]:
    """Table headers of ``cols``: ``ratio [CI]`` for a value shown with its interval (where the
    table has the interval's columns, ``available``)."""
    have = set(available)
    return {c: f"{c} [CI]" if c in CI_COLUMNS and set(CI_COLUMNS[c]) <= have else c for c in cols}


def ci_parts(col: str, rec: dict[str, Any]) -> tuple[Any, Any, Any] | None:
    """(value, lower, upper) of a value shown with its interval in the row ``rec``; None when the
    row has no interval for it (old tables, sites without per-pair values)."""
    ends = CI_COLUMNS.get(col)
    if ends is None or ends[0] not in rec or ends[1] not in rec:
        return None
    return rec.get(col), rec[ends[0]], rec[ends[1]]
