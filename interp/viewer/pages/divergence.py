"""How the edit spreads through a run (``divergence.parquet``: layer x offset from the edit, per
category) and the contrast between groups of pairs (``contrast.parquet``), on one page."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, render_template, request

from ... import figures as F
from ...figures.common import hook_sort_key, values
from ..store import CONTRAST, DIVERGENCE, records
from ..web import PER_PAGE_MAX, arg_choice, arg_int, component_url, component_urls, fig_spec, nav, paginate, store

bp = Blueprint("divergence", __name__)


@bp.route("/run/<path:run>/-/divergence")
def divergence(run: str):
    r = store().get(run)
    if not r.divergence:
        abort(404, description="this run has no divergence.parquet or contrast.parquet")
    ctx: dict[str, Any] = {"figs": {}}
    dv = r.table(DIVERGENCE)
    if dv is not None and len(dv) and {"hook", "layer", "offset"} <= set(dv.columns):
        hooks = sorted(set(dv["hook"]), key=hook_sort_key)
        cats = sorted(map(str, values(dv, "category"))) if "category" in dv else []
        hook = arg_choice("hook", hooks, "resid_post" if "resid_post" in hooks else hooks[0])
        cat = arg_choice("category", cats, "all" if "all" in cats else "")
        val = arg_choice("value", [c for c in ("normalized", "normalized_median") if c in dv], "normalized")
        last = max(r.layers) if r.layers else None
        ctx["figs"]["divergence"] = fig_spec(F.divergence_heatmap(dv, hook, cat or None, val))
        ctx["figs"]["div_lines"] = fig_spec(F.divergence_lines(dv, hook, last, val))
        ctx.update(dv_hooks=hooks, dv_hook=hook, dv_cats=cats, dv_cat=cat, dv_val=val,
                   dv_vals=[c for c in ("normalized", "normalized_median") if c in dv])
    ct = r.table(CONTRAST)
    if ct is not None and len(ct):
        f = {}
        d = ct
        for col in ("hook", "position", "quantity"):  # the distinct values: of the categoricals, not per row
            if col in ct:
                opts = sorted(map(str, values(ct, col)), key=hook_sort_key if col == "hook" else None)
                f[col] = (opts, arg_choice("c" + col, [""] + opts, ""))
                if f[col][1]:
                    d = d[d[col].astype(str) == f[col][1]] if d[col].dtype == object else d[d[col] == f[col][1]]
        if "layer" in d and request.args.get("clayer", "") != "":
            try:
                d = d[d["layer"] == int(request.args["clayer"])]
            except ValueError:
                pass
        sortable = [c for c in ("q_value", "p_value", "effect", "t_stat", "layer") if c in d]
        sort = arg_choice("csort", sortable, sortable[0] if sortable else None)
        desc = request.args.get("cdesc") == "1"
        if sort:
            d = d.sort_values(sort, ascending=not desc, kind="stable", na_position="last")
        if {"effect", "p_value"} <= set(d.columns) and len(d):
            ctx["figs"]["volcano"] = fig_spec(F.volcano(d, url=component_urls(r)))
        per = arg_int("per", 50, 1, PER_PAGE_MAX)
        pg = paginate(len(d), per)
        cols = list(ct.columns)
        rows = []
        for rec in records(d.iloc[pg["start"]:pg["start"] + per], cols):
            href = component_url(r, rec["hook"], rec["layer"], rec["component"]) \
                if {"hook", "layer", "component"} <= set(rec) else None
            rows.append({"cells": rec, "href": href})
        ctx.update(ct_cols=cols, ct_rows=rows, ct_pg=pg, ct_f=f, ct_sortable=sortable, ct_sort=sort, ct_desc=desc,
                   ct_layer=request.args.get("clayer", ""), ct_groups=sorted(
                       f"{a} vs {b}" for a, b in ct[["group_a", "group_b"]].drop_duplicates().itertuples(
                           index=False)) if {"group_a", "group_b"} <= set(ct.columns) else [])
    return render_template("divergence.html", **nav(r), **ctx)
