"""One layer of a run: per hook point its most stable component, the profile of every component,
per-category boxes, the most stable components and the heads."""

from __future__ import annotations

from flask import Blueprint, abort, render_template

from ... import figures as F
from ...figures.common import hook_sort_key, top_rows
from ..columns import OPTIONAL_STAB_COLUMNS, VALUE_COLUMNS, display_columns, headers, with_ci
from ..store import records
from ..web import HEAD_POINT, arg_choice, component_url, component_urls, default_position, fig_spec, nav, store

bp = Blueprint("layer", __name__)


@bp.route("/run/<path:run>/-/layer/<int:layer>")
def layer(run: str, layer: int):
    r = store().get(run)
    if layer not in r.layers:
        abort(404, description=f"no layer {layer} in this run (layers {r.layers[:1]}…{r.layers[-1:]})")
    position = arg_choice("position", r.positions, default_position(r))
    values = [c for c in VALUE_COLUMNS if c in r.stab.columns]
    value = arg_choice("value", values, "normalized")
    s = r.stab
    d = s[(s["layer"] == layer) & (s["position"] == position)]
    controls = "q_value" in d.columns
    st = r.stable(d) if controls else None  # the run's rule
    summary = []
    for h in sorted(set(d["hook"]), key=hook_sort_key):
        here = (d["hook"] == h).to_numpy()
        n_stable = int(st[here].sum()) if controls else None
        g = d[here].dropna(subset=["normalized"])
        if g.empty:
            summary.append({"hook": h, "n": int(here.sum()), "n_stable": n_stable})
            continue
        best = g.sort_values("normalized", kind="stable").iloc[0]
        summary.append({"hook": h, "n": int((d["hook"] == h).sum()), "best": int(best["component"]),
                        "best_norm": best["normalized"], "best_rank": best.get("rank"),
                        "median": float(g["normalized"].median()), "max": float(g["normalized"].max()),
                        "n_stable": n_stable,
                        "href": component_url(r, h, layer, int(best["component"]))})
    hooks_here = [x["hook"] for x in summary]
    cat_hook = arg_choice("chook", hooks_here, hooks_here[0] if hooks_here else "")
    figs = {"profile": fig_spec(F.layer_profile(s, layer, position, value, url=component_urls(r)))}
    boxes = F.category_boxes(r.by_category, layer, cat_hook, position) if cat_hook else None
    if boxes is not None:
        figs["categories"] = fig_spec(boxes)
    top = r.with_stable(top_rows(s, position, 20, layer=layer))
    top_cols = display_columns(c for c in ["hook", "component", "head", "normalized", "mean_abs_diff", "spread", "rank"]
                               + OPTIONAL_STAB_COLUMNS if c in top.columns)
    top_recs = [{"cells": rec, "href": component_url(r, rec["hook"], layer, rec["component"])}
                for rec in records(top, with_ci(top_cols))]
    heads = []
    zd = d[d["hook"] == HEAD_POINT]
    if len(zd) and "head" in zd:
        for hd, g in zd.groupby("head", observed=True):
            heads.append({"head": int(hd), "mean": float(g["normalized"].mean()),
                          "min": float(g["normalized"].min()),
                          "best_rank": g["rank"].min() if "rank" in g else None})
    i = r.layers.index(layer)
    return render_template("layer.html", **nav(r), layer=layer, position=position, value=value, values=values,
                           hook_summary=summary, figs=figs, top=top_recs, top_cols=top_cols,
                           col_heads=headers(top_cols, top.columns), heads=heads,
                           head_hook=HEAD_POINT, cat_hook=cat_hook, hooks_here=hooks_here, inf=r.inference,
                           prev_layer=r.layers[i - 1] if i > 0 else None,
                           next_layer=r.layers[i + 1] if i + 1 < len(r.layers) else None)
