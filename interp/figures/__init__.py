"""The figure library: every plotly figure of a run, for the run dir, the viewer, the PNG export and
``interp.compare``.

Each figure function takes a table (a DataFrame of the run dir) or a result object holding it
(``.stability``, ``.pairs``, ``.divergence``, ``.contrast``, ``.stability_by_category``) and returns a
``plotly.graph_objects.Figure``; nothing is recomputed, tables are only selected, sorted and pivoted.

- ``stability``: heatmaps, ranking (flags, ratio intervals), scatter, layer profile, per-category boxes
  and bars, the directions of the stable set per layer;
- ``pairs``: margins, accuracy, one pair's change per layer and position;
- ``divergence``: layer x offset profiles, the contrast volcano;
- ``causal``: ablation (against k; against matched random selections) and activation patching
  (``interp.patch``);
- ``compare``: two runs side by side (by relative depth; component by component);
- ``export``: writing HTML (offline) and PNG (kaleido), the run's ``figures/`` and the viewer's export.

``python -m interp.figures RUN_DIR`` redraws a run's figures from its tables.
"""

from __future__ import annotations

from .causal import ablation, effect_vs_k, patching_heatmap, patching_panels, vs_random, write_causal_figures
from .cli import main
from .common import table
from .divergence import divergence, divergence_heatmap, divergence_lines, volcano
from .export import (export_figures, run_figures, save_html, save_pngs, viewer_figures, write_figures,
                     write_plotlyjs, write_pngs, write_run_figures)
from .pairs import accuracy, margins, pair_change
from .stability import (category_bars, category_boxes, directions_lines, head_dimensions, heatmap, layer_profile,
                        ranking, scatter)

__all__ = [
    "ablation", "accuracy", "category_bars", "category_boxes", "directions_lines", "divergence", "divergence_heatmap",
    "divergence_lines", "effect_vs_k", "export_figures", "head_dimensions", "heatmap", "layer_profile", "main",
    "margins", "pair_change", "patching_heatmap", "patching_panels", "ranking", "run_figures", "save_html",
    "save_pngs", "scatter", "table", "viewer_figures", "volcano", "vs_random", "write_causal_figures", "write_figures",
    "write_plotlyjs", "write_pngs", "write_run_figures",
]
