"""The columns of ``stability.parquet`` that the viewer offers to plot, sort and show.

``VALUE_COLUMNS`` is the one list of numeric value columns (the ones a run has are offered);
``OPTIONAL_STAB_COLUMNS`` are those only runs with controls have.
"""

from __future__ import annotations

# Numeric columns one may plot or sort by (present ones are offered).
VALUE_COLUMNS = ["normalized", "mean_abs_diff", "std_abs_diff", "mean_diff", "std_diff", "spread", "act_mean",
                 "normalized_std", "rank", "control_normalized", "ratio", "p_value", "q_value",
                 "rank_calibrated", "n_pairs"]
# Columns written only with controls (analysis.controls.n > 0), shown when present.
OPTIONAL_STAB_COLUMNS = ["control_normalized", "ratio", "p_value", "q_value", "massive", "rank_calibrated"]
