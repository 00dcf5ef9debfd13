"""Figures of the sentence pairs: error-detection margins and accuracy per category, and one pair's
change per layer and position (from ``pair_profile.parquet`` or the saved activations).

Accuracy is the share of grammar pairs with log P(a) > log P(b) (``interp.rules.accuracy``).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import plotly.graph_objects as go

from .. import rules
from .common import PairURL, empty, esc, styled, table


def margins(data: Any, url: PairURL | None = None) -> go.Figure:
    """log P(a) - log P(b) per pair, one box (all points shown) per category and pair type."""
    p = table(data, "pairs")
    if p.empty or "margin" not in p:
        return empty("margins", "no pairs")
    fig = go.Figure()
    for t, g in p.groupby("type", observed=True, sort=True):
        fig.add_trace(go.Box(
            x=[esc(c) for c in g["category"]], y=g["margin"], name=esc(t), boxpoints="all", jitter=0.4,
            pointpos=0, fillcolor="rgba(0,0,0,0)", line={"width": 1},
            text=[f"{esc(a)}<br>{esc(b)}" for a, b in zip(g["a"], g["b"])],
            customdata=[url(str(pid)) for pid in g["pair_id"]] if url else None,
            hovertemplate="%{text}<br>margin %{y:.3f}<extra></extra>"))
    fig.add_hline(y=0, line_dash="dot")
    return styled(fig, "log P(a) − log P(b) per pair (grammar: a is the correct sentence)", 420,
                  boxmode="group", yaxis_title="margin", xaxis_title="category")


def accuracy_rows(run: Any) -> list[dict]:
    """Grammar categories' accuracy rows (``category``, ``accuracy``, ``n_pairs``) of one run: a list
    of such rows as it is, a manifest (its ``accuracy`` list), a result object (its manifest's, else
    computed from its pairs) or a pairs DataFrame (``interp.rules.summarize``)."""
    if isinstance(run, list):
        return run
    if isinstance(run, Mapping):
        return [r for r in run.get("accuracy", []) if r.get("type") == "grammar"]
    manifest = getattr(run, "manifest", None)
    if isinstance(manifest, Mapping) and "accuracy" in manifest:
        return accuracy_rows(manifest)
    s = rules.summarize(table(run, "pairs"))
    s = s[s["type"] == "grammar"]
    return [{"category": c, "type": "grammar", "accuracy": a, "n_pairs": int(n)}
            for c, a, n in zip(s["category"], s["accuracy"], s["n_pairs"])]


def accuracy(runs: Any) -> go.Figure:
    """Error-detection accuracy per grammar category, one bar group per run.

    ``runs``: one run (see ``accuracy_rows``) or a dict run name -> run (several side by side)."""
    several = isinstance(runs, Mapping) and not any(isinstance(v, (str, int, float)) for v in runs.values())
    named = runs if several else {"": runs}
    fig = go.Figure()
    for name, run in named.items():
        acc = accuracy_rows(run)
        if not acc:
            continue
        fig.add_trace(go.Bar(x=[esc(r["category"]) for r in acc], y=[r.get("accuracy") for r in acc],
                             name=esc(name), text=[f"n={r.get('n_pairs')}" for r in acc],
                             hovertemplate="%{x}<br>accuracy %{y:.1%}<br>%{text}<extra>" + esc(name) + "</extra>"))
    if not fig.data:
        return empty("error-detection accuracy", "no grammar pairs")
    fig.add_hline(y=0.5, line_dash="dot")
    return styled(fig, "error-detection accuracy by category (share of pairs with log P(a) > log P(b))", 360,
                  yaxis={"range": [0, 1], "tickformat": ".0%"}, barmode="group", showlegend=len(named) > 1)


def pair_change(layers: list[int], grid: np.ndarray, labels: list[str], edit: int, hook: str,
                relative: bool, positions: list[int] | None = None, source: str = "") -> go.Figure:
    """Layer x position heatmap of ||a - b|| of one pair; ``edit`` is the column of the edited token."""
    positions = list(range(len(labels))) if positions is None else positions
    x = [f"{q}:{esc(t)}" for q, t in zip(positions, labels)]
    what = "||a−b|| / ||a||" if relative else "||a−b||"
    fig = go.Figure(go.Heatmap(z=np.where(np.isfinite(grid), grid, None), x=x, y=layers, colorscale="Magma",
                               reversescale=True, colorbar={"title": {"text": what}},
                               hovertemplate="layer %{y}<br>position %{x}<br>" + what + " %{z:.4g}<extra></extra>"))
    if 0 <= edit < len(x):
        fig.add_vrect(x0=edit - 0.5, x1=edit + 0.5, line={"color": "#1f77b4", "width": 2})
    return styled(fig, f"{what} at {hook} per layer and position (tokens of sentence a; edit outlined)"
                  + (f" — {source}" if source else ""),
                  200 + 28 * len(layers), xaxis={"title": {"text": "position:token (a)"}, "tickangle": -40},
                  yaxis={"title": {"text": "layer"}, "dtick": 1 if len(layers) <= 40 else None})


def edit_lines(lines: Mapping[str, tuple[Any, Any]], title: str) -> go.Figure:
    """||a - b|| at the edited token per layer of one pair, one line per hook: ``{hook: (layers, values)}``."""
    fig = go.Figure()
    for hook, (layers, vals) in lines.items():
        fig.add_trace(go.Scatter(x=layers, y=vals, mode="lines+markers", name=hook))
    return styled(fig, title, 340, xaxis_title="layer", yaxis_title="||a−b||", xaxis={"dtick": 1},
                  legend={"orientation": "h", "y": -0.25})


def saved_pair_diffs(rows: list[dict], title: str, url: PairURL | None = None) -> go.Figure:
    """One component's a - b at the edited and the last token in each saved pair
    (``rows``: ``pair_id``, ``edit_diff``, ``last_diff``)."""
    fig = go.Figure()
    for tag in ("edit", "last"):
        fig.add_trace(go.Bar(x=[esc(v["pair_id"]) for v in rows], y=[v.get(f"{tag}_diff") for v in rows],
                             name=f"a−b at {tag}",
                             customdata=[url(v["pair_id"]) for v in rows] if url else None))
    return styled(fig, title, 340, barmode="group", xaxis_title="pair", yaxis_title="a − b")

