"""Figures that set runs side by side: per relative-depth bin (``interp.compare``'s tables, usable
across models and families, one line or column per run) and component by component (two runs of one
model, the viewer's compare page).
"""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .. import rules
from .common import esc, label, styled, table
from .divergence import offset_heatmap
from .pairs import accuracy

# one color per run, in the order of the runs (cycled past ten)
RUN_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
              "#bcbd22", "#17becf")
METRICS = {"share_stable": "share of components stable ({definition})",
           "median_ratio": "median ratio |a-b| / |a-control|",
           "median_normalized": "median normalized change |a-b| / spread"}
# a metric drawn with a band: the medians of its interval's ends (``interp.compare``)
BANDS = {"median_ratio": ("median_ratio_lo", "median_ratio_hi")}
# drawn only where some run has it (``interp.compare``: runs with causal/atp.parquet)
ATP_METRIC = "atp_mass"
TITLES = {**METRICS, ATP_METRIC: "share of each run's AtP mass per hook point (sum of |atp_mean| in the bin / "
                                 "over all bins)"}


def run_label(table_rows: pd.DataFrame, name: str) -> str:
    """A run's legend entry: its name with its null and rule where the table has them."""
    parts = []
    for col, what in (("null", "null"), ("rule", "rule")):
        if col in table_rows.columns:
            v = table_rows[col].dropna()
            if len(v):
                parts.append(f"{what} {v.iloc[0]}")
    return f"{name} ({', '.join(parts)})" if parts else name


def _names(names: Sequence[str] | tuple) -> tuple[str, ...]:
    """Run names given one by one or as one sequence."""
    if len(names) == 1 and not isinstance(names[0], str):
        return tuple(names[0])
    return tuple(names)


def depth_profile(compare_table: pd.DataFrame, metric: str, names: Sequence[str], bins: int, position: str,
                  alpha: float = 0.05, definition: str | None = None,
                  hooks: Sequence[str] | None = None) -> go.Figure:
    """``metric`` of ``compare.parquet`` against relative depth, one panel per hook (``hooks``:
    these; default every hook of the table), one line per run of ``names`` (named with its null and
    rule; a run without rows in a panel, such as a hook point it lacks, has no line there).
    ``definition``: the rule(s) for "stable" in the title (default: the significance rule at
    ``alpha``, the rule of runs before ``analysis.rule``). A metric with an interval (``BANDS``,
    where the table has its ends) is drawn with error bars."""
    hooks = sorted(compare_table["hook"].unique()) if hooks is None else list(hooks)
    fig = make_subplots(rows=1, cols=max(len(hooks), 1), subplot_titles=hooks, shared_yaxes=True)
    band, err, shown = BANDS.get(metric), None, set()
    for i, hook in enumerate(hooks, start=1):
        for k, name in enumerate(names):
            g = compare_table[(compare_table["hook"] == hook) & (compare_table["run"] == name)]
            if g.empty:
                continue
            err = None
            if band and set(band) <= set(g.columns) and g[list(band)].notna().any().all():
                err = {"type": "data", "symmetric": False, "array": (g[band[1]] - g[metric]).clip(lower=0).tolist(),
                       "arrayminus": (g[metric] - g[band[0]]).clip(lower=0).tolist(), "thickness": 1}
            who = esc(run_label(compare_table[compare_table["run"] == name], name))
            fig.add_trace(go.Scatter(x=(g["bin"] + 0.5) / bins, y=g[metric], mode="lines+markers", name=who,
                                     line={"color": RUN_COLORS[k % len(RUN_COLORS)]}, legendgroup=who,
                                     showlegend=name not in shown, error_y=err,
                                     hovertemplate=esc(name) + "<br>layers %{text}<br>%{y:.3f}<extra></extra>",
                                     text=g["layers"]), row=1, col=i)
            shown.add(name)
        fig.update_xaxes(title_text="relative depth", range=[0, 1], row=1, col=i)
    fig.update_yaxes(title_text=metric, row=1, col=1)
    definition = definition or rules.definition("significance", alpha)
    title = TITLES.get(metric, metric).format(definition=definition)
    if band and err is not None:
        title += " (bars: medians of the interval's ends)"
    styled(fig, f"{title}, position {position}", 420, width=max(700, 330 * len(hooks)),
           legend={"orientation": "h", "y": -0.2})
    return fig.update_layout(margin_t=80)  # room for the panel titles under the title


def depth_divergence(div: pd.DataFrame, names: Sequence[str], bins: int, min_pairs: int = 10) -> go.Figure:
    """``compare_divergence.parquet``: depth bin x offset heatmaps, one row per hook, one column per run
    (offsets that at least ``min_pairs`` pairs reach; a hook point a run lacks leaves its panel empty)."""
    dhooks = sorted(div["hook"].unique())
    titles = [esc(f"{n} - {h}") for h in dhooks for n in names]
    fig = make_subplots(rows=len(dhooks), cols=len(names), subplot_titles=titles, shared_xaxes=True)
    for r, hook in enumerate(dhooks, start=1):
        for c, name in enumerate(names, start=1):
            g = div[(div["hook"] == hook) & (div["run"] == name) & (div["n_pairs"] >= min_pairs)]
            if g.empty:
                continue
            p = g.pivot_table(index="bin", columns="offset", values="normalized")
            fig.add_trace(offset_heatmap(p, y=(p.index + 0.5) / bins, hover="depth %{y:.2f}<br>offset %{x}"),
                          row=r, col=c)
            fig.update_yaxes(title_text="relative depth", row=r, col=c)
    fig.update_xaxes(title_text="offset from edit", row=len(dhooks))
    styled(fig, "divergence profile (all pairs): mean normalized |a-b| per depth bin and offset "
           f"(offsets with >= {min_pairs} pairs)", 300 * len(dhooks) + 120, coloraxis={"colorscale": "Magma"},
           width=max(1000, 450 * len(names)))
    return fig.update_layout(margin_t=80)  # room for the panel titles under the title


def compare_figures(compare_table: pd.DataFrame, div: pd.DataFrame, summary: dict, *names: str) -> dict[str, go.Figure]:
    """The figures ``interp.compare`` writes for the runs ``names`` (one by one or as one sequence):
    depth profiles of each metric, the AtP mass per depth where some run has it, the divergence
    panels and error-detection accuracy side by side (``summary``: the compare.json contents)."""
    names, bins = _names(names), int(summary["bins"])
    alpha = summary.get("alpha") or 0.05
    figs = {f"compare_{m}": depth_profile(compare_table, m, names, bins, summary["position"], alpha,
                                          summary.get("stable_definition"))
            for m in METRICS}
    if ATP_METRIC in compare_table.columns and compare_table[ATP_METRIC].notna().any():
        atp = compare_table[compare_table[ATP_METRIC].notna()]
        figs[f"compare_{ATP_METRIC}"] = depth_profile(atp, ATP_METRIC, names, bins, summary["position"], alpha,
                                                      hooks=sorted(atp["hook"].unique()))
    if not div.empty:
        figs["compare_divergence"] = depth_divergence(div, names, bins)
    rows = {n: [{"category": c, "accuracy": v["accuracy"], "n_pairs": v["n"]}
                for c, v in summary["runs"][n]["accuracy"].items()] for n in names}
    if any(rows.values()):
        figs["compare_accuracy"] = accuracy(rows)
    return figs


def joint_rows(a: Any, b: Any, hook: str, position: str, value: str) -> pd.DataFrame:
    """The components of one hook and position present in both runs: ``value_a``, ``value_b``."""
    key = ["hook", "layer", "component", "position"]
    sa, sb = table(a), table(b)
    sa = sa[(sa["hook"] == hook) & (sa["position"] == position)]
    sb = sb[(sb["hook"] == hook) & (sb["position"] == position)]
    return sa[key + [value]].merge(sb[key + [value]], on=key, suffixes=("_a", "_b")).dropna()


def joint(a: Any, b: Any, hook: str, position: str, value: str = "normalized", name_a: str = "A",
          name_b: str = "B", max_points: int = 5000) -> go.Figure | None:
    """``value`` of the same components in two runs, one against the other (None: none in common)."""
    both = joint_rows(a, b, hook, position, value)
    if not len(both):
        return None
    shown = both.sample(max_points, random_state=0) if len(both) > max_points else both
    fig = go.Figure(go.Scatter(
        x=shown[f"{value}_a"], y=shown[f"{value}_b"], mode="markers",
        marker={"color": shown["layer"], "colorscale": "Viridis", "showscale": True, "opacity": 0.6,
                "colorbar": {"title": {"text": "layer"}}},
        text=[label(hook, l, c) for l, c in zip(shown["layer"], shown["component"])],
        hovertemplate="%{text}<br>A %{x:.4g}<br>B %{y:.4g}<extra></extra>"))
    lo = float(min(shown[f"{value}_a"].min(), shown[f"{value}_b"].min()))
    hi = float(max(shown[f"{value}_a"].max(), shown[f"{value}_b"].max()))
    fig.add_shape(type="line", x0=lo, y0=lo, x1=hi, y1=hi, line={"dash": "dot", "color": "#888"})
    return styled(fig, f"{value} of the same {hook} components at '{position}': A vs B ({len(both)} matched)", 460,
                  xaxis_title=f"A: {esc(name_a)}", yaxis_title=f"B: {esc(name_b)}")
