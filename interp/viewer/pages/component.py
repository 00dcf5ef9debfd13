"""One component (or neuron, for points of neurons: ``mlp_post``) of a run: its statistics per position, per category,
and its activation in the saved pairs."""

from __future__ import annotations

import pandas as pd
from flask import Blueprint, abort, render_template, url_for

from ... import figures as F
from ... import rundir as R
from ...figures.common import label
from ...hooks import HOOK_POINTS
from ..columns import OPTIONAL_STAB_COLUMNS, display_columns, headers
from ..store import Run, records, saved_pairs
from ..web import NEURON_POINT, component_url, fig_spec, is_neuron, nav, store

bp = Blueprint("component", __name__)



@bp.route("/run/<path:run>/-/neuron/<int:layer>/<int:neuron>")
def neuron(run: str, layer: int, neuron: int):
    r = store().get(run)
    if NEURON_POINT is None or NEURON_POINT not in r.hooks:
        abort(404, description=f"this run has no neuron rows (hook point {NEURON_POINT} was not recorded)")
    return _component_page(r, NEURON_POINT, layer, neuron)


@bp.route("/run/<path:run>/-/component/<hook>/<int:layer>/<int:component>")
def component(run: str, hook: str, layer: int, component: int):
    return _component_page(store().get(run), hook, layer, component)


def _component_page(r: Run, hook: str, layer: int, comp: int):
    s = r.stab
    d = s[(s["hook"] == hook) & (s["layer"] == layer) & (s["component"] == comp)]
    if d.empty:
        abort(404, description=f"no component {hook}[{layer}].{comp} in this run")
    d = r.with_stable(d)
    rows = []
    for rec in records(d):
        pos = rec["position"]
        at = s[s["position"] == pos]
        same = at[(at["hook"] == hook) & (at["layer"] == layer)]
        v = rec.get("normalized")
        rec["n_ranked"] = int(at["rank"].notna().sum()) if "rank" in at else None
        ok = v is not None and not pd.isna(v)
        rec["rank_in_site"] = int((same["normalized"] < v).sum()) + 1 if ok else None
        rec["n_site"] = len(same)
        rows.append(rec)
    cols = display_columns(c for c in ["position", "n_pairs", "normalized", "normalized_std", "mean_abs_diff",
                                       "std_abs_diff", "mean_diff", "std_diff", "act_mean", "spread", "rank"]
                           + OPTIONAL_STAB_COLUMNS if c in d.columns)
    figs = {}
    cat_rows = []
    bc = r.by_category
    if bc is not None:
        g = bc[(bc["hook"] == hook) & (bc["layer"] == layer) & (bc["component"] == comp)]
        if len(g):
            figs["categories"] = fig_spec(F.category_bars(
                g, f"{label(hook, layer, comp)}: normalized change per category"))
            cat_rows = records(g.sort_values(["position", "category"], kind="stable"),
                               ["category", "position", "n_pairs", "normalized", "mean_abs_diff", "mean_diff"])
    # its activation in the saved pairs (a, b and a - b at the edited and the last token)
    acts = r.saved(R.ACTIVATIONS)
    name = r.hook_name(hook, layer)
    saved_rows = []
    if acts is not None and name in acts.keys:
        p = r.pairs
        for pid, rec, i in saved_pairs(p, acts):
            x = acts.get(name, i)
            x = x.reshape(x.shape[0], x.shape[1], -1)
            if comp >= x.shape[2]:
                continue
            n = int(acts.get("mask", i)[0].sum()) if "mask" in acts.keys else x.shape[1]
            e = int(rec["edit_pos"]) + 1
            vals = {"pair_id": pid, "row": rec}
            for tag, t in (("edit", e), ("last", n - 1)):
                if 0 <= t < x.shape[1]:
                    vals[f"{tag}_a"], vals[f"{tag}_b"] = float(x[0, t, comp]), float(x[1, t, comp])
                    vals[f"{tag}_diff"] = vals[f"{tag}_a"] - vals[f"{tag}_b"]
            saved_rows.append(vals)
        if saved_rows:
            figs["saved"] = fig_spec(F.pairs.saved_pair_diffs(
                saved_rows, f"{label(hook, layer, comp)}: a − b in the saved pairs",
                url=lambda pid: url_for("pairs.pair", run=r.id, pair_id=pid)))
    head_i = None
    if hook in HOOK_POINTS and HOOK_POINTS[hook].heads and "head" in d.columns:
        head_i = int(d["head"].iloc[0])
    n_comp = int(s.loc[(s["hook"] == hook) & (s["layer"] == layer), "component"].max()) + 1
    return render_template("component.html", **nav(r), hook=hook, layer=layer, comp=comp, rows=rows,
                           prev_url=component_url(r, hook, layer, comp - 1) if comp > 0 else None,
                           next_url=component_url(r, hook, layer, comp + 1) if comp + 1 < n_comp else None,
                           cols=cols, col_heads=headers(cols, d.columns), figs=figs, cat_rows=cat_rows,
                           saved_rows=saved_rows, head=head_i,
                           n_comp=n_comp, label=label(hook, layer, comp, head_i), is_neuron=is_neuron(hook),
                           inf=r.inference)
