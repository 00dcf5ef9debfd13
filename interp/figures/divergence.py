"""Figures of how the edit spreads and is absorbed (``divergence.parquet``: normalized |a-b| per
layer and token offset from the edit, per category) and of the group contrast (``contrast.parquet``).

Every layer x offset heatmap (one category, one panel per category, and the depth-bin panels of
``interp.compare``) is drawn by ``offset_heatmap``.
"""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .common import ComponentURL, esc, label, styled, table

VOLCANO_MAX_POINTS = 5000


def offset_heatmap(grid: pd.DataFrame, y: Sequence | None = None, hover: str = "layer %{y}<br>offset %{x}",
                   value: str | None = None) -> go.Heatmap:
    """A heatmap trace of ``grid`` (rows: layers or depth bins, columns: offsets from the edit).
    ``value``: a colour bar of its own with that title; None: the figure's shared colour axis."""
    colors = {"colorscale": "Magma", "colorbar": {"title": {"text": value}}} if value else {"coloraxis": "coloraxis"}
    return go.Heatmap(z=grid.to_numpy(dtype=float), x=[int(c) for c in grid.columns],
                      y=[int(i) for i in grid.index] if y is None else list(y), **colors,
                      hovertemplate=hover + "<br>%{z:.4g}<extra></extra>")


def divergence_grid(data: Any, hook: str, category: str | None = "all",
                    value: str = "normalized") -> tuple[pd.DataFrame, str]:
    """(layer x offset grid of ``value`` at one hook, what it shows): one category, or with
    ``category`` None the categories together, each weighted by its pairs."""
    dv = table(data, "divergence")
    d = dv[dv["hook"] == hook]
    if category:
        d = d[d["category"].astype(str) == category]
        grid = d.pivot_table(observed=True, index="layer", columns="offset", values=value,
                             aggfunc="first").sort_index()
        return grid, str(category)
    w = d["n_pairs"] if "n_pairs" in d else pd.Series(1, index=d.index)
    tmp = (d.assign(_wv=d[value] * w, _w=w.where(d[value].notna(), 0))
           .groupby(["layer", "offset"], observed=True)[["_wv", "_w"]].sum())
    grid = (tmp["_wv"] / tmp["_w"].where(tmp["_w"] > 0)).unstack("offset").sort_index()
    return grid, "all categories (mean weighted by pairs)"


def divergence_heatmap(data: Any, hook: str, category: str | None = "all", value: str = "normalized") -> go.Figure:
    """``value`` |a-b| by layer and token offset from the edit at one hook, for one category (None:
    all categories, weighted by pairs)."""
    grid, what = divergence_grid(data, hook, category, value)
    fig = go.Figure(offset_heatmap(grid, value=value))
    return styled(fig, f"{value} |a−b| by layer and token offset from the edit, {hook}, {what}", 220 + 26 * len(grid),
                  xaxis_title="offset from the edited token", yaxis_title="layer",
                  yaxis={"dtick": 1 if len(grid) <= 40 else None})


def divergence(data: Any, hook: str, value: str = "normalized") -> go.Figure:
    """One layer x offset panel per category (``all`` last), sharing one colour scale."""
    dv = table(data, "divergence")
    d = dv[dv["hook"] == hook]
    present = set(d["category"].astype(str))
    cats = [c for c in sorted(present - {"all"}) + ["all"] if c in present]
    fig = make_subplots(rows=1, cols=len(cats), subplot_titles=[esc(c) for c in cats], shared_yaxes=True)
    for i, c in enumerate(cats, start=1):
        grid, _ = divergence_grid(d, hook, c, value)
        fig.add_trace(offset_heatmap(grid, hover=esc(c) + "<br>layer %{y}<br>offset %{x}"), row=1, col=i)
        fig.update_xaxes(title_text="offset from edit", row=1, col=i)
    fig.update_yaxes(title_text="layer", row=1, col=1)
    if d["layer"].nunique() <= 40:
        fig.update_yaxes(dtick=1)
    styled(fig, f"divergence profile, {hook}: mean over components of |a−b| / spread", 460,
           coloraxis={"colorscale": "Magma"}, width=max(700, 260 * len(cats)))
    return fig.update_layout(margin_t=80)  # room for the panel titles under the title


def divergence_lines(data: Any, hook: str, layer: int | None, value: str = "normalized") -> go.Figure:
    """``value`` against the offset from the edit at one layer (e.g. the last), one line per category."""
    dv = table(data, "divergence")
    lines = go.Figure()
    dd = dv[dv["hook"] == hook]
    for c, g in (dd.groupby("category", observed=True, sort=True) if "category" in dd else [("all", dd)]):
        for layer_ in ([layer] if layer is not None else []):
            m = g[g["layer"] == layer_].sort_values("offset")
            lines.add_trace(go.Scatter(x=m["offset"], y=m[value], mode="lines+markers", name=esc(c)))
    last = layer if layer is not None else "?"
    return styled(lines, f"{value} by offset at the last layer ({last}), {hook}, per category",
                  360, xaxis_title="offset from the edited token", yaxis_title=value)


def volcano(data: Any, max_points: int = VOLCANO_MAX_POINTS, url: ComponentURL | None = None) -> go.Figure:
    """Contrast between groups: effect against p-value per row (a seeded random subset beyond ``max_points``)."""
    d = table(data, "contrast")
    shown = d.sample(max_points, random_state=0) if len(d) > max_points else d
    keys = list(zip(shown["hook"], shown["layer"], shown["component"])) \
        if {"hook", "layer", "component"} <= set(shown.columns) else None
    fig = go.Figure(go.Scatter(
        x=shown["effect"], y=shown["p_value"], mode="markers",
        marker={"color": shown["layer"] if "layer" in shown else None, "colorscale": "Viridis",
                "opacity": 0.6, "showscale": "layer" in shown, "colorbar": {"title": {"text": "layer"}}},
        text=[label(h, l, c) for h, l, c in keys] if keys else None,
        customdata=[url(h, l, c) for h, l, c in keys] if keys and url else None,
        hovertemplate="%{text}<br>effect %{x:.4g}<br>p %{y:.3g}<extra></extra>"))
    subset = f" ({len(shown)} of {len(d)}, random subset)" if len(shown) < len(d) else ""
    return styled(fig, "contrast between groups: effect vs p-value" + subset, 420, xaxis_title="effect",
                  yaxis={"type": "log", "autorange": "reversed", "title": {"text": "p-value"}})
