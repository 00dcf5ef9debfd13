"""One attention head of a run (of the hook-point table's first point with a per-head view, ``z``):
its dimensions' change per position and category, its attention pattern on a saved pair and
|z_a - z_b| of the head in each saved pair."""

from __future__ import annotations

import numpy as np
from flask import Blueprint, abort, render_template

from ... import figures as F
from ... import rundir as R
from ..columns import OPTIONAL_STAB_COLUMNS, display_columns, headers, with_ci
from ..store import attention_spec, records, saved_pairs, saved_tokens
from ..web import (HEAD_POINT, arg_choice, component_url, component_urls, decoder, default_position, fig_spec, nav,
                   store)

bp = Blueprint("head", __name__)


@bp.route("/run/<path:run>/-/head/<int:layer>/<int:head>")
def head(run: str, layer: int, head: int):
    r = store().get(run)
    s = r.stab
    hook = HEAD_POINT
    if hook is None or "head" not in s.columns:
        abort(404, description=f"this run has no per-head rows (hook point {hook} was not recorded)")
    d = s[(s["hook"] == hook) & (s["layer"] == layer) & (s["head"] == head)]
    if d.empty:
        abort(404, description=f"no head {head} at layer {layer} in this run")
    n_heads = int(s.loc[(s["hook"] == hook) & (s["layer"] == layer), "head"].max()) + 1
    controls = "q_value" in d.columns
    per_pos = []
    for pos, g in d.groupby("position", observed=True, sort=False):
        per_pos.append({"position": pos, "n": len(g), "mean": float(g["normalized"].mean()),
                        "min": float(g["normalized"].min()), "best_rank": g["rank"].min() if "rank" in g else None,
                        "n_ranked": int(s.loc[s["position"] == pos, "rank"].notna().sum()) if "rank" in s else None,
                        "mean_abs_diff": float(g["mean_abs_diff"].mean()),
                        "n_stable": int(r.stable(g).sum()) if controls else None})  # the run's rule
    position = arg_choice("position", r.positions, default_position(r))
    dims = r.with_stable(d[d["position"] == position].sort_values("head_dim"))
    figs = {"dims": fig_spec(F.head_dimensions(s, layer, head, url=component_urls(r), hook=hook))}
    bc = r.by_category
    if bc is not None and "head" in bc:
        g = bc[(bc["hook"] == hook) & (bc["layer"] == layer) & (bc["head"] == head)]
        if len(g):
            mean = g.groupby(["position", "category"], observed=True, sort=False,
                             as_index=False)["normalized"].mean()
            figs["categories"] = fig_spec(F.category_bars(
                mean, f"head {head}, layer {layer}: mean normalized change over its dimensions, per category"))
    dim_cols = display_columns(c for c in ["head_dim", "component", "normalized", "mean_abs_diff", "spread", "rank"]
                               + OPTIONAL_STAB_COLUMNS if c in dims.columns)
    dim_rows = [{"cells": rec, "href": component_url(r, hook, layer, rec["component"])}
                for rec in records(dims, with_ci(dim_cols))]
    # attention patterns of this head on a saved pair, and |z_a - z_b| of the head per saved pair
    pats, acts = r.saved(R.PATTERNS), r.saved(R.ACTIVATIONS)
    pattern, saved_rows, sel = None, [], None
    p = r.pairs
    if pats is not None and pats.pair_ids:
        sel = arg_choice("pair", pats.pair_ids, pats.pair_ids[0])
        prow = p[p["pair_id"].astype(str) == sel]
        if len(prow) and "tokens" in pats.keys:
            rec = records(prow)[0]
            i = pats.index[sel]
            labels = saved_tokens(decoder(), r, pats, i, rec)
            pattern = attention_spec(pats, i, layer, len(labels[0]), len(labels[1]), labels, head)
    zname = r.hook_name(hook, layer)
    if acts is not None and zname in acts.keys:
        for pid, rec, i in saved_pairs(p, acts):
            x = acts.get(zname, i)  # [2, pos, head, d_head]
            e = int(rec["edit_pos"]) + 1
            if x.ndim == 4 and e < x.shape[1] and head < x.shape[2]:
                saved_rows.append({"pair_id": pid, "a": rec["a"], "b": rec["b"], "token_a": rec.get("token_a"),
                                   "token_b": rec.get("token_b"), "row": rec,
                                   "diff": float(np.linalg.norm(x[0, e, head] - x[1, e, head]))})
    return render_template("head.html", **nav(r), hook=hook, layer=layer, head=head, n_heads=n_heads, per_pos=per_pos,
                           figs=figs, dim_rows=dim_rows, dim_cols=dim_cols,
                           col_heads=headers(dim_cols, dims.columns), position=position,
                           pattern=pattern, saved_ids=pats.pair_ids if pats else [], sel=sel,
                           saved_rows=saved_rows, inf=r.inference)
