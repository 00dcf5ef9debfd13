"""A run's stability table (or its per-category table): filtered (``stable=1``: the rows stable under
the run's rule), sorted and paged; the ratio and the adjusted effect with their intervals in one cell."""

from __future__ import annotations

from flask import Blueprint, abort, render_template, request

from ...figures.common import hook_sort_key, page_rows, values
from ..columns import OPTIONAL_STAB_COLUMNS, display_columns, headers, with_ci
from ..store import records
from ..web import PER_PAGE_MAX, arg_choice, arg_int, component_url, nav, paginate, store

bp = Blueprint("table", __name__)


@bp.route("/run/<path:run>/-/table")
def table(run: str):
    r = store().get(run)
    which = arg_choice("t", ["stability", "by_category"], "stability")
    df = r.by_category if which == "by_category" else r.stab
    if df is None:
        abort(404, description=r.by_category_note or "this run has no per-category table (it has one category)")
    hooks = sorted(values(df, "hook"), key=hook_sort_key)
    categories = sorted(map(str, values(df, "category")))
    f = {"hook": arg_choice("hook", [""] + hooks, ""),
         "position": arg_choice("position", [""] + r.positions, ""),
         "layer": request.args.get("layer", ""), "component": request.args.get("component", ""),
         "head": request.args.get("head", ""),
         "category": arg_choice("category", [""] + categories, ""),
         "stable": request.args.get("stable") == "1" and "q_value" in df.columns}
    d = df
    if f["hook"]:
        d = d[d["hook"] == f["hook"]]
    if f["position"]:
        d = d[d["position"] == f["position"]]
    if f["category"]:
        d = d[d["category"] == f["category"]]
    for col in ("layer", "component", "head"):
        if f[col] != "" and col in d.columns:
            try:
                d = d[d[col] == int(f[col])]
            except ValueError:
                f[col] = ""
    if f["stable"]:  # the rows stable under the run's rule
        d = d[r.stable(d).to_numpy()]
    sortable = [c for c in ["rank", "normalized", "mean_abs_diff", "spread", "layer", "component", "hook"]
                + OPTIONAL_STAB_COLUMNS if c in d.columns]
    sort = arg_choice("sort", sortable, "rank" if "rank" in d.columns else "normalized")
    desc = request.args.get("desc") == "1"
    per = arg_int("per", 50, 1, PER_PAGE_MAX)
    pg = paginate(len(d), per)
    page = r.with_stable(page_rows(d, sort, desc, pg["start"], per))
    cols = display_columns(c for c in ["category", "hook", "layer", "component", "head", "head_dim", "position",
                                       "n_pairs", "normalized", "normalized_std", "mean_abs_diff", "std_abs_diff",
                                       "mean_diff", "spread", "act_mean", "rank"] + OPTIONAL_STAB_COLUMNS
                           if c in page.columns)
    rows = []
    for rec in records(page, with_ci(cols)):
        rows.append({"cells": rec, "href": component_url(r, rec["hook"], rec["layer"], rec["component"])})
    return render_template("table.html", **nav(r), rows=rows, cols=cols, col_heads=headers(cols, page.columns),
                           pg=pg, f=f, hooks=hooks, which=which,
                           sortable=sortable, sort=sort, desc=desc, per=per, total=len(df),
                           categories=categories, inf=r.inference,
                           has_by_category=r.by_category is not None)
