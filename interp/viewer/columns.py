"""The columns of ``stability.parquet`` that the viewer offers to plot, sort and show.

``VALUE_COLUMNS`` comes from the statistics registry (``interp.stats.registry``): a statistic
registered there with a menu place is offered here with no edit to the viewer (the ones a run has
are offered); ``OPTIONAL_STAB_COLUMNS`` are shown only where a run has them.
"""

from __future__ import annotations

from ..stats.registry import value_columns

# Numeric columns one may plot or sort by (present ones are offered).
VALUE_COLUMNS = value_columns()
# Columns written only with controls (analysis.controls.n > 0), shown when present.
OPTIONAL_STAB_COLUMNS = ["control_normalized", "ratio", "p_value", "q_value", "massive", "rank_calibrated"]
