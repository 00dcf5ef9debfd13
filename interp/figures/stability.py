"""Figures of the per-component stability table (``stability.parquet``, ``stability_by_category.parquet``):
layer x component heatmaps, the ranking of the most stable components, change scatter plots, a
layer's profile, per-category boxes and bars, a head's dimensions.

Each function takes the table (a DataFrame) or a result object holding it, and returns a
``go.Figure``. ``url`` arguments (the viewer's) make bars and points link to a component's page.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..hooks import HOOK_POINTS, head_points
from .common import (ComponentURL, details, empty, esc, flag_columns, flag_suffix, hook_sort_key, label, select,
                     styled, table, top_rows, values)

SCATTER_MAX_POINTS = 5000  # a seeded random subset beyond this


def heatmap_window(data: Any, hook: str, position: str, cstart: int = 0, cwidth: int | None = None) -> dict:
    """The component columns a heatmap shows: ``{"n_components", "cstart", "cend"}`` (``cwidth``
    columns from ``cstart``; all of them when ``cwidth`` is None)."""
    s = table(data)
    d = s[(s["hook"] == hook) & (s["position"] == position)]
    if d.empty:
        return {"n_components": 0, "cstart": 0, "cend": 0}
    n_comp = int(d["component"].max()) + 1
    cstart = max(0, min(cstart, max(0, n_comp - 1)))
    cend = n_comp if cwidth is None else min(n_comp, cstart + cwidth)
    return {"n_components": n_comp, "cstart": cstart, "cend": cend}


def heatmap(data: Any, hook: str, position: str = "edit", value: str = "normalized", by: str = "component",
            cstart: int = 0, cwidth: int | None = None, block: int = 64) -> go.Figure:
    """Layer x component heatmap of ``value`` at one hook point and position.

    ``by="head"`` (points with a per-head view, ``z``): mean over each head's dimensions;
    ``by="block"``: mean over blocks of ``block`` components (thousands of neurons on one screen);
    ``by="component"``: one column per component, ``cwidth`` of them from ``cstart`` (None: all).
    """
    s = table(data)
    d = s[(s["hook"] == hook) & (s["position"] == position)]
    if d.empty or value not in d.columns:
        return empty(f"{hook} at '{position}'", "no rows for this hook and position")
    if by in ("head", "block") and (by == "block" or ("head" in d.columns and d["head"].notna().any())):
        if by == "head":
            col, what, xlab = d["head"], "head (mean over each head's dimensions)", "head"
        else:
            col = d["component"] // block * block
            what, xlab = f"{block}-component block (mean)", f"block of {block} components (first index)"
        grid = d.assign(_col=col).pivot_table(observed=True, index="layer", columns="_col", values=value,
                                              aggfunc="mean").sort_index()
        fig = go.Figure(go.Heatmap(z=grid.to_numpy(dtype=float), x=[int(c) for c in grid.columns],
                                   y=[int(i) for i in grid.index], colorscale="Viridis",
                                   colorbar={"title": {"text": value}},
                                   hovertemplate="layer %{y}<br>" + xlab.split(" (")[0] + " %{x}<br>mean " + value
                                   + " %{z:.4g}<extra></extra>"))
        return styled(fig, f"{value} at '{position}', {hook}: layer × {what}" if by == "block" else
                      f"{value} at '{position}', {hook}: layer × head (mean over each head's dimensions)",
                      220 + 26 * len(grid), xaxis={"title": {"text": xlab}, **({"dtick": 1} if by == "head" else {})},
                      yaxis={"title": {"text": "layer"}, "dtick": 1 if len(grid) <= 40 else None})
    w = heatmap_window(s, hook, position, cstart, cwidth)
    cstart, cend, n_comp = w["cstart"], w["cend"], w["n_components"]
    d = d[(d["component"] >= cstart) & (d["component"] < cend)]
    grid = d.pivot_table(observed=True, index="layer", columns="component", values=value, aggfunc="first",
                         dropna=False).sort_index()
    z = grid.to_numpy(dtype=float)
    heat = go.Heatmap(z=np.where(np.isfinite(z), z, None), x=[int(c) for c in grid.columns],
                      y=[int(i) for i in grid.index], colorscale="Viridis", colorbar={"title": {"text": value}},
                      hovertemplate="layer %{y}<br>component %{x}<br>" + value + " %{z:.4g}<extra></extra>")
    fig = go.Figure(heat)
    unit = HOOK_POINTS[hook].unit if hook in HOOK_POINTS else ""
    xlab = "component" + {"head_dim": " (head × d_head + dim)", "neuron": " (neuron)"}.get(unit, "")
    window = f", components {cstart}–{cend - 1} of {n_comp}" if cend - cstart < n_comp else ""
    return styled(fig, f"{value} at '{position}', {hook}: layer × component{window}", 220 + 26 * len(grid),
                  xaxis_title=xlab, yaxis_title="layer", yaxis={"dtick": 1 if len(grid) <= 40 else None})


FLAG_COLORS = {"": "#4c78a8", "offset": "#9d755d", "massive": "#e45756", "offset, massive": "#b279a2"}


def ranking(data: Any, position: str = "edit", k: int = 20, hook: str | None = None, key: str = "normalized",
            layer: int | None = None, control: bool = False, url: ComponentURL | None = None,
            value: str | None = None, stable_ratio: float | None = None) -> go.Figure:
    """Bars of the ``k`` components with the smallest ``key`` (the most stable).

    ``value`` (the bars' length): ``normalized`` (with the standard error over pairs) or ``ratio``
    (mean |a-b| / mean control change, with its confidence interval [ratio_lo, ratio_hi] as error
    bars, a line at 1 = as much as a control edit and, given ``stable_ratio``, one at the
    equivalence rule's threshold). Default: ``ratio`` for ``control`` rankings of tables with the
    interval, else ``normalized``. ``control`` with ``normalized``: beside each bar the same
    component's control-edit change and the BH q-value as text. Components flagged ``offset_dim``
    or ``massive`` (never stable) are marked apart in their label and colour; the hover lists the
    stable rules' columns (``common.details``)."""
    d = top_rows(data, position, k, hook, key, layer)
    if d.empty:
        return empty("ranking", "no ranked components")
    has_ci = {"ratio", "ratio_lo", "ratio_hi"} <= set(d.columns) and d["ratio_hi"].notna().any()
    if value is None:
        value = "ratio" if control and has_ci else "normalized"
    if value not in d.columns:
        value = "normalized"
    control = control and "control_normalized" in d and value == "normalized"
    offset, massive = flag_columns(d)
    flags = [flag_suffix(o, m) for o, m in zip(offset.tolist(), massive.tolist())]
    labels = [label(h, l, c, hd) + f
              for h, l, c, hd, f in zip(d["hook"], d["layer"], d["component"],
                                        d["head"] if "head" in d else [None] * len(d), flags)]
    colors = [FLAG_COLORS[f.strip(" ()")] for f in flags]
    err = None
    if value == "ratio" and has_ci:
        hi = (d["ratio_hi"] - d["ratio"]).clip(lower=0)
        lo = (d["ratio"] - d["ratio_lo"]).clip(lower=0)
        err = {"type": "data", "symmetric": False, "array": hi.tolist(), "arrayminus": lo.tolist(), "thickness": 1}
    elif value == "normalized" and "normalized_std" in d and "n_pairs" in d:
        err = {"array": (d["normalized_std"] / np.sqrt(d["n_pairs"].clip(lower=1))).tolist(), "thickness": 1}
    info = details(d)
    bar = go.Bar(x=d[value], y=labels, orientation="h", error_x=err, text=None,
                 customdata=[url(h, l, c) for h, l, c in zip(d["hook"], d["layer"], d["component"])] if url else None,
                 hovertext=info, marker_color=colors,
                 hovertemplate="%{y}<br>" + value + " %{x:.4g}<br>%{hovertext}<extra>click: details</extra>")
    if control:
        bar.update(name="minimal-pair edit", text=[f"q={q:.2g}" for q in d["q_value"]] if "q_value" in d else None,
                   textposition="outside")
    fig = go.Figure(bar)
    if control:
        fig.add_bar(x=d["control_normalized"], y=labels, orientation="h", name="control edit (null baseline)",
                    marker_color="#f58518", hovertemplate="%{y}<br>control %{x:.4g}<extra></extra>")
    if value == "ratio":
        fig.add_vline(x=1, line={"dash": "dot", "color": "#f58518"}, annotation_text="control edit",
                      annotation_position="top")
        if stable_ratio is not None:
            fig.add_vline(x=stable_ratio, line={"dash": "dash", "color": "#54a24b"},
                          annotation_text=f"stable_ratio {stable_ratio:g}", annotation_position="bottom")
    by = "" if key in ("normalized", "rank") else f" (sorted by {key})"
    where = (f", {hook}" if hook else "") + (f", layer {layer}" if layer is not None else "")
    note = "; beside: the control edit's change, text: BH q-value" if control else ""
    if value == "ratio" and has_ci:
        note += "; bars: confidence interval of the ratio"
    if any(flags):
        note += "; (offset): large constant offset, (massive): massive activation, never stable"
    xtitle = ("mean |a−b| / mean control change (CI)" if value == "ratio" and has_ci else
              "mean |a−b| / mean control change" if value == "ratio" else
              "mean |a−b| / component spread (s.e. over pairs)" if value == "normalized" else value)
    return styled(fig, f"{len(d)} most stable components at '{position}'{by}{where}{note}",
                  160 + (34 if control else 22) * len(d),
                  xaxis_title=xtitle, yaxis={"autorange": "reversed"},
                  **({"barmode": "group"} if control else {}))


def directions_lines(data: Any, position: str = "edit", value: str = "mean_diff_relative") -> go.Figure:
    """``directions.parquet``: ``value`` (default ``mean_diff_relative`` = ||mean(a − b)|| /
    ||spread||) per layer, one line per hook point, at one position mode (the pooled rows,
    layer −1, left out)."""
    try:
        dr = table(data, "directions")
    except TypeError:
        dr = None
    if dr is None or dr.empty or value not in dr.columns:
        return empty(value, "no directions table")
    d = dr[(dr["position"] == position) & (dr["layer"] >= 0)]
    fig = go.Figure()
    for h in sorted(set(d["hook"]), key=hook_sort_key):
        g = d[d["hook"] == h].sort_values("layer")
        fig.add_trace(go.Scatter(x=g["layer"], y=g[value], mode="lines+markers", name=h,
                                 hovertemplate=h + "<br>layer %{x}<br>" + value + " %{y:.4g}<extra></extra>"))
    return styled(fig, f"{value} per layer at '{position}' (directions.parquet)", 300,
                  xaxis={"title": {"text": "layer"}, "dtick": 1 if d["layer"].nunique() <= 40 else None},
                  yaxis_title=value, legend={"orientation": "h", "y": -0.25})


def scatter_points(data: Any, position: str, x: str = "spread", y: str = "mean_abs_diff", hook: str | None = None,
                   log: bool = True, layer: int | None = None,
                   max_points: int = SCATTER_MAX_POINTS) -> tuple[pd.DataFrame | None, int]:
    """(the rows a scatter plot draws, how many rows had both values): positive values only on log
    axes, a seeded random subset of ``max_points`` beyond that; None when there is nothing to plot."""
    d = select(table(data), position, hook, layer)
    d = d.dropna(subset=[c for c in (x, y) if c in d.columns])
    n = len(d)
    if x not in d.columns or y not in d.columns or d.empty:
        return None, n
    if log:
        d = d[(d[x] > 0) & (d[y] > 0)]
    if len(d) > max_points:
        d = d.sample(max_points, random_state=0)
    return d, n


def scatter(data: Any, position: str = "edit", x: str = "spread", y: str = "mean_abs_diff", hook: str | None = None,
            log: bool = True, layer: int | None = None, max_points: int = SCATTER_MAX_POINTS,
            diagonal: bool = False, url: ComponentURL | None = None) -> go.Figure:
    """``y`` against ``x`` per component, one marker symbol per hook point, colour = layer.
    ``diagonal``: the line x = y (e.g. edit change against control change: below it = more stable
    than an arbitrary edit)."""
    s = table(data)
    d, n = scatter_points(s, position, x, y, hook, log, layer, max_points)
    if d is None:
        return empty("scatter", "nothing to plot")
    fig = go.Figure()
    symbols = ["circle", "square", "diamond", "cross", "x", "triangle-up", "star"]
    layers = sorted(int(v) for v in values(s, "layer"))
    cmax = max(layers) if layers else 1
    for i, (h, g) in enumerate(sorted(d.groupby("hook", observed=True), key=lambda t: hook_sort_key(t[0]))):
        fig.add_trace(go.Scatter(
            x=g[x], y=g[y], mode="markers", name=h,
            marker={"symbol": symbols[i % len(symbols)], "color": g["layer"], "colorscale": "Viridis",
                    "cmin": 0, "cmax": cmax, "opacity": 0.65, "size": 6,
                    "colorbar": {"title": {"text": "layer"}} if i == 0 else None, "showscale": i == 0},
            text=[label(h, l, c) for l, c in zip(g["layer"], g["component"])], hovertext=details(g),
            customdata=[url(h, l, c) for l, c in zip(g["layer"], g["component"])] if url else None,
            hovertemplate="%{text}<br>" + x + " %{x:.4g}<br>" + y + " %{y:.4g}<br>%{hovertext}<extra></extra>"))
    if diagonal:
        both = d[[x, y]].to_numpy(dtype=float)
        lo, hi = float(np.nanmin(both)), float(np.nanmax(both))
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name=f"{y} = {x}",
                                 line={"dash": "dot", "color": "grey"}, hoverinfo="skip"))
    kind = "log" if log else "linear"
    subset = f" ({len(d)} of {n} components, random subset)" if len(d) < n else ""
    below = f"; below the dotted line: {y} < {x}" if diagonal else ""
    return styled(fig, f"{y} vs {x} at '{position}'{subset}{below}",
                  480, xaxis={"type": kind, "title": {"text": x}}, yaxis={"type": kind, "title": {"text": y}},
                  legend={"orientation": "h", "y": -0.18})


def layer_profile(data: Any, layer: int, position: str, value: str = "normalized",
                  url: ComponentURL | None = None) -> go.Figure:
    """``value`` of every component of one layer, one line per hook point."""
    s = table(data)
    d = s[(s["layer"] == layer) & (s["position"] == position)]
    fig = go.Figure()
    for h in sorted(set(d["hook"]), key=hook_sort_key):
        g = d[d["hook"] == h].sort_values("component")
        fig.add_trace(go.Scatter(x=g["component"], y=g[value], mode="lines+markers" if len(g) <= 256 else "lines",
                                 name=h, marker={"size": 4},
                                 customdata=[url(h, layer, c) for c in g["component"]] if url else None,
                                 hovertemplate=h + ".%{x}<br>" + value + " %{y:.4g}<extra></extra>"))
    return styled(fig, f"{value} of every component of layer {layer} at '{position}'", 380,
                  xaxis_title="component", yaxis_title=value, legend={"orientation": "h", "y": -0.2})


def category_boxes(data: Any, layer: int, hook: str, position: str) -> go.Figure | None:
    """Per category, the distribution of the normalized change of one hook point's components at one
    layer (``stability_by_category``); None without that table or rows."""
    try:
        bc = table(data, "stability_by_category")
    except TypeError:
        return None
    d = bc[(bc["layer"] == layer) & (bc["hook"] == hook) & (bc["position"] == position)]
    if d.empty:
        return None
    fig = go.Figure()
    for cat, g in d.groupby("category", observed=True, sort=True):
        fig.add_trace(go.Box(y=g["normalized"], name=esc(cat), boxpoints="outliers",
                             hovertemplate=esc(cat) + "<br>%{y:.4g}<extra></extra>"))
    return styled(fig, f"normalized change of {hook} components at layer {layer}, '{position}', per category",
                  360, yaxis_title="normalized", showlegend=False)


def category_bars(d: pd.DataFrame, title: str) -> go.Figure:
    """``d``: rows of stability_by_category for one component (or several, e.g. a head's dims)."""
    fig = go.Figure()
    for pos, g in d.groupby("position", observed=True, sort=False):
        err = None
        if "normalized_std" in g and "n_pairs" in g:
            err = {"array": (g["normalized_std"] / np.sqrt(g["n_pairs"].clip(lower=1))).tolist(), "thickness": 1}
        fig.add_trace(go.Bar(x=[esc(c) for c in g["category"]], y=g["normalized"], name=esc(pos), error_y=err,
                             hovertemplate="%{x}<br>normalized %{y:.4g}<extra>" + esc(pos) + "</extra>"))
    return styled(fig, title, 360, barmode="group", yaxis_title="normalized |a−b|", xaxis_title="category")


def head_dimensions(data: Any, layer: int, head: int, url: ComponentURL | None = None,
                    hook: str | None = None) -> go.Figure:
    """Normalized change of each dimension of one attention head of ``hook`` (default: the first point
    with a per-head view, ``z``), one bar group per position."""
    hook = hook or head_points()[0]
    s = table(data)
    d = s[(s["hook"] == hook) & (s["layer"] == layer) & (s["head"] == head)]
    fig = go.Figure()
    for pos, g in d.groupby("position", observed=True, sort=False):
        fig.add_trace(go.Bar(x=g["head_dim"], y=g["normalized"], name=esc(pos),
                             customdata=[url(hook, layer, c) for c in g["component"]] if url else None))
    return styled(fig, f"normalized change of each dimension of head {head}, layer {layer}", 340, barmode="group",
                  xaxis_title="head dimension", yaxis_title="normalized")
