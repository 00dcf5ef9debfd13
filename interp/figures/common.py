"""What every figure module shares: getting a table from a DataFrame or a result object, the hook
order, component labels, row selection, and the common layout (title, template, margins).

Figures only select, sort and pivot the tables of a run dir; nothing is recomputed here.
"""

from __future__ import annotations

import html
from typing import Any, Callable

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..hooks import HOOK_POINTS, display_order

# The order hook points are listed in (from the hook-point table, interp.hooks.display_order).
HOOK_ORDER = [h for h in display_order() if h in HOOK_POINTS]

# A link for a component (hook, layer, component) or a pair (pair id): the viewer passes these so
# that points and bars of a figure open the matching page (written into ``customdata``).
ComponentURL = Callable[[str, int, int], str]
PairURL = Callable[[str], str]


def table(data: Any, name: str = "stability") -> pd.DataFrame:
    """``data`` itself when it is a DataFrame, else its attribute ``name`` (a result object with
    ``.stability``, ``.pairs``, ``.divergence``, ``.contrast``, ``.stability_by_category``, ...)."""
    if isinstance(data, pd.DataFrame):
        return data
    t = getattr(data, name, None)
    if isinstance(t, pd.DataFrame):
        return t
    raise TypeError(f"expected a DataFrame or an object with a .{name} table, got {type(data).__name__}")


def hook_sort_key(h: str) -> tuple[int, str]:
    return (HOOK_ORDER.index(h) if h in HOOK_ORDER else len(HOOK_ORDER), h)


def values(df: pd.DataFrame, col: str) -> list:
    """The distinct values of a column (fast for categoricals), missing values left out."""
    if col not in df.columns or df.empty:
        return []
    c = df[col]
    if isinstance(c.dtype, pd.CategoricalDtype):
        return [v for v in c.cat.categories[np.unique(c.cat.codes[c.cat.codes >= 0])].tolist()]
    return [v for v in pd.unique(c.dropna()).tolist()]


def esc(s: Any) -> str:
    """Text for plotly labels: plotly turns a few HTML tags in labels into markup, so escape them."""
    return html.escape(str(s), quote=False)


def label(hook: str, layer: int, comp: int, head: Any = None) -> str:
    """``hook[layer].component``; points with a per-head view as ``z[layer].hHEAD.component``."""
    if hook in HOOK_POINTS and HOOK_POINTS[hook].heads and head is not None and not pd.isna(head):
        return f"{hook}[{layer}].h{int(head)}.{comp}"
    return f"{hook}[{layer}].{comp}"


def flag_columns(d: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(offset, massive) flags of stability rows: ``offset_dim`` (a large, nearly constant offset)
    and ``massive`` (a massive activation, Sun et al. 2024). Tables written before ``offset_dim``
    existed call the offset flag ``massive`` and have no massive-activation flag."""
    def col(name: str) -> pd.Series:
        if name not in d.columns:
            return pd.Series(False, index=d.index)
        return d[name].astype("boolean").fillna(False).astype(bool)

    if "offset_dim" in d.columns:
        return col("offset_dim"), col("massive")
    return col("massive"), pd.Series(False, index=d.index)


def flag_suffix(offset: bool, massive: bool) -> str:
    """`` (offset)``, `` (massive)``, `` (offset, massive)`` or nothing: a component's label suffix."""
    names = [n for n, on in (("offset", offset), ("massive", massive)) if on]
    return f" ({', '.join(names)})" if names else ""


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def interval(v: Any, lo: Any, hi: Any) -> str:
    """``v [lo, hi]`` (3 significant digits; the interval left out where it is missing)."""
    fv, flo, fhi = _num(v), _num(lo), _num(hi)
    out = "–" if fv is None else f"{fv:.3g}"
    return out + (f" [{flo:.3g}, {fhi:.3g}]" if flo is not None and fhi is not None else "")


def details(d: pd.DataFrame) -> list[str]:
    """Per stability row, hover lines of the stable rules' columns it has: the ratio with its
    interval, q-values (iid and clustered), the clusters, the adjusted effect with its interval, flags."""
    n = len(d)
    lines: list[list[str]] = [[] for _ in range(n)]

    def get(c: str) -> list:
        return d[c].tolist() if c in d.columns else [None] * n

    if "ratio" in d.columns:
        for i, (v, lo, hi) in enumerate(zip(get("ratio"), get("ratio_lo"), get("ratio_hi"))):
            lines[i].append(f"ratio {interval(v, lo, hi)}")
    for c in ("q_value", "q_cluster"):
        if c in d.columns:
            for i, v in enumerate(get(c)):
                if _num(v) is not None:
                    lines[i].append(f"{c} {float(v):.2g}")
    if "n_clusters" in d.columns:
        for i, v in enumerate(get("n_clusters")):
            if _num(v) is not None and float(v) >= 0:
                lines[i].append(f"clusters {int(v)}")
    if "adj_coef" in d.columns:
        for i, (v, lo, hi) in enumerate(zip(get("adj_coef"), get("adj_lo"), get("adj_hi"))):
            if _num(v) is not None:
                lines[i].append(f"adj_coef {interval(v, lo, hi)}")
    offset, massive = flag_columns(d)
    for i, (o, m) in enumerate(zip(offset.tolist(), massive.tolist())):
        if o or m:
            lines[i].append("flagged" + flag_suffix(o, m).replace(" (", ": ").rstrip(")"))
    return ["<br>".join(x) for x in lines]


def styled(fig: go.Figure, title: str, height: int | None = None, **kw) -> go.Figure:
    """The common layout: escaped title at the top left, white template, narrow margins."""
    fig.update_layout(title={"text": esc(title), "x": 0.01, "font": {"size": 15}}, template="plotly_white",
                      margin={"l": 60, "r": 20, "t": 50, "b": 50}, **({"height": height} if height else {}), **kw)
    return fig


def empty(title: str, message: str) -> go.Figure:
    """A figure that says there is nothing to draw."""
    fig = go.Figure()
    fig.add_annotation(text=esc(message), showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return styled(fig, title, 260)


def page_rows(d: pd.DataFrame, sort: str | None, desc: bool, start: int, per: int,
              ties: tuple[str, ...] = ("hook", "layer", "component")) -> pd.DataFrame:
    """Rows ``start .. start+per`` of ``d`` sorted by ``sort`` (missing values last) without sorting
    every row when only the first pages are asked for (``nsmallest`` / ``nlargest``)."""
    if not sort or sort not in d.columns:
        return d.iloc[start:start + per]
    col = d[sort]
    numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
    valid = d[col.notna()] if numeric else d
    n_first = start + per
    if numeric and n_first < len(valid) // 4:
        top = valid.nlargest(n_first, sort, keep="first") if desc else valid.nsmallest(n_first, sort, keep="first")
        return top.iloc[start:start + per]
    by = [sort] + [c for c in ties if c in d.columns and c != sort]
    if isinstance(col.dtype, pd.CategoricalDtype):
        d = d.assign(**{sort: col.astype(str)})
    out = d.sort_values(by, ascending=[not desc] + [True] * (len(by) - 1), na_position="last", kind="stable")
    return out.iloc[start:start + per]


def select(stab: pd.DataFrame, position: str, hook: str | None = None, layer: int | None = None) -> pd.DataFrame:
    """Stability rows of one position, optionally one hook point and one layer."""
    d = stab[stab["position"] == position]
    if hook:
        d = d[d["hook"] == hook]
    if layer is not None:
        d = d[d["layer"] == layer]
    return d


def top_rows(data: Any, position: str, k: int, hook: str | None = None, key: str = "normalized",
             layer: int | None = None) -> pd.DataFrame:
    """The ``k`` rows with the smallest ``key`` (missing values left out) at one position."""
    d = select(table(data), position, hook, layer)
    key = key if key in d.columns else "normalized"
    return page_rows(d.dropna(subset=[key]), key, False, 0, k)
