"""The columns of ``stability.parquet`` that the viewer offers to plot, sort and show.

``VALUE_COLUMNS`` comes from the statistics registry (``interp.stats.registry``): a statistic
registered there with a menu place is offered here with no edit to the viewer (the ones a run has
are offered); ``OPTIONAL_STAB_COLUMNS`` are shown only where a run has them.
"""

from __future__ import annotations

from ..stats.registry import COLUMNS, value_columns

# Numeric columns one may plot or sort by (present ones are offered).
VALUE_COLUMNS = value_columns()


def _optional_columns() -> list[str]:
    """The value columns written only with controls (analysis.controls.n > 0, ``needs_controls`` in
    the registry), in menu order, with the ``massive`` flag right after ``q_value`` (the columns of the
    stable rule side by side)."""
    needs_controls = {c.name for c in COLUMNS if c.needs_controls}
    cols = [c for c in VALUE_COLUMNS if c in needs_controls]
    at = cols.index("q_value") + 1 if "q_value" in cols else len(cols)
    return cols[:at] + ["massive"] + cols[at:]


# Columns shown beside the others where a run has them.
OPTIONAL_STAB_COLUMNS = _optional_columns()
