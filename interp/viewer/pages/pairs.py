"""A run's pairs (searched, filtered, sorted, paged) and one pair's page: its change per layer and
position, its most changed and most stable components, attention patterns and causal results."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from flask import Blueprint, abort, render_template, request

from ... import figures as F
from ... import rundir as R
from ...figures.common import hook_sort_key
from ..store import (ABLATION_PAIRS, PAIR_COMPONENTS, PAIR_PROFILE, PATCHING, PATTERN_TEMPLATE, attention_spec,
                     pair_change, pattern_layers, records, saved_tokens)
from ..web import (PER_PAGE_MAX, arg_choice, arg_float, arg_int, component_url, decoder, fig_spec, nav, paginate,
                   patching_specs, store)

bp = Blueprint("pairs", __name__)



@bp.route("/run/<path:run>/-/pairs")
def pairs(run: str):
    r = store().get(run)
    p = r.pairs
    acts = r.saved(R.ACTIVATIONS)
    saved_ids = set(acts.pair_ids) if acts else set()
    cats = sorted(set(p["category"])) if len(p) else []
    types = sorted(set(p["type"])) if len(p) else []
    q = request.args.get("q", "").strip()
    f = {"q": q, "category": arg_choice("category", [""] + cats, ""), "type": arg_choice("type", [""] + types, ""),
         "min": arg_float("min"), "max": arg_float("max"),
         "correct": arg_choice("correct", ["", "yes", "no"], ""), "saved": request.args.get("saved") == "1"}
    d = p
    if q:
        ql = q.lower()
        hit = np.zeros(len(d), dtype=bool)
        for col in ("a", "b", "pair_id", "token_a", "token_b"):
            if col in d:
                hit |= d[col].astype(str).str.lower().str.contains(ql, regex=False).to_numpy()
        d = d[hit]
    if f["category"]:
        d = d[d["category"] == f["category"]]
    if f["type"]:
        d = d[d["type"] == f["type"]]
    if f["min"] is not None:
        d = d[d["margin"] >= f["min"]]
    if f["max"] is not None:
        d = d[d["margin"] <= f["max"]]
    if f["correct"] and "correct" in d:
        want = f["correct"] == "yes"
        d = d[d["correct"].map(lambda v: v is not None and not pd.isna(v) and bool(v) == want).astype(bool)]
    if f["saved"]:
        d = d[d["pair_id"].astype(str).isin(saved_ids)]
    sortable = [c for c in ("pair_id", "margin", "category", "n_tokens", "logprob_a", "logprob_b") if c in d]
    sort = arg_choice("sort", [""] + sortable, "")
    desc = request.args.get("desc") == "1"
    if sort:
        d = d.sort_values(sort, ascending=not desc, kind="stable")
    per = arg_int("per", 50, 1, PER_PAGE_MAX)
    pg = paginate(len(d), per)
    rows = records(d.iloc[pg["start"]:pg["start"] + per])
    for row in rows:
        row["saved"] = str(row["pair_id"]) in saved_ids
    return render_template("pairs.html", **nav(r), rows=rows, pg=pg, f=f, categories=cats, types=types,
                           sortable=sortable, sort=sort, desc=desc, per=per, total=len(p))


@bp.route("/run/<path:run>/-/pair/<anypath:pair_id>")
def pair(run: str, pair_id: str):
    r = store().get(run)
    p = r.pairs
    hit = p.index[p["pair_id"].astype(str) == pair_id]
    if len(hit) == 0:
        abort(404, description=f"no kept pair {pair_id!r} in this run")
    pos = int(hit[0])
    row = records(p.iloc[[pos]])[0]
    prev_id = str(p["pair_id"].iloc[pos - 1]) if pos > 0 else None
    next_id = str(p["pair_id"].iloc[pos + 1]) if pos + 1 < len(p) else None
    acts, pats = r.saved(R.ACTIVATIONS), r.saved(R.PATTERNS)
    edit = int(row.get("edit_pos", -1)) + 1
    ctx: dict[str, Any] = {"saved": False, "figs": {}, "edit": edit, "labels": None}
    rel = request.args.get("rel") == "1"
    ctx["rel"] = rel
    # token strings (saved pairs only)
    src = acts if acts is not None and pair_id in acts.index else (
        pats if pats is not None and pair_id in pats.index else None)
    if src is not None and "tokens" in src.keys:
        ctx.update(saved=True, labels=saved_tokens(decoder(), r, src, src.index[pair_id], row))
    labels = ctx["labels"]
    # per-layer change: pair_profile.parquet (every pair) or else the saved activations
    prof = r.table(PAIR_PROFILE)
    prof = prof[prof["pair_id"].astype(str) == pair_id] if prof is not None and "pair_id" in prof else None
    if prof is not None and len(prof) and {"hook", "layer", "position", "diff_norm"} <= set(prof.columns):
        hooks = sorted(set(prof["hook"]), key=hook_sort_key)
        hook = arg_choice("hook", hooks, "resid_post" if "resid_post" in hooks else hooks[0])
        d = prof[prof["hook"] == hook]
        val = d["diff_norm"] / d["a_norm"].where(d["a_norm"] > 0) if rel and "a_norm" in d else d["diff_norm"]
        grid = d.assign(_v=val).pivot_table(observed=True, index="layer", columns="position", values="_v",
                                            aggfunc="first", dropna=False).sort_index()
        positions = [int(c) for c in grid.columns]
        xl = [labels[0][q] if labels and q < len(labels[0]) else str(q) for q in positions]
        ctx["figs"]["change"] = fig_spec(F.pair_change(
            [int(l) for l in grid.index], grid.to_numpy(dtype=float), xl,
            positions.index(edit) if edit in positions else -1,
            hook, rel, positions, "pair_profile.parquet"))
        at_edit = prof[prof["position"] == edit] if "offset" not in prof else prof[prof["offset"] == 0]
        lines = {}
        for h in hooks:
            g = at_edit[at_edit["hook"] == h].sort_values("layer")
            lines[h] = (g["layer"], g["diff_norm"])
        ctx["figs"]["edit_lines"] = fig_spec(F.pairs.edit_lines(
            lines, "||a−b|| at the edited token per layer, every hook (pair_profile.parquet)"))
        ctx.update(change_hooks=hooks, hook=hook)
    elif acts is not None and pair_id in acts.index and labels:
        ia = acts.index[pair_id]
        n = min(len(labels[0]), len(labels[1]))
        act_hooks = [h for h in r.hooks if any(r.hook_name(h, l) in acts.keys for l in r.layers)]
        if act_hooks:
            hook = arg_choice("hook", act_hooks, "resid_post" if "resid_post" in act_hooks else act_hooks[0])
            layers, grid = pair_change(r, acts, ia, hook, n, rel)
            ctx["figs"]["change"] = fig_spec(F.pair_change(layers, grid, labels[0][:n], edit, hook, rel,
                                                           list(range(n)), "activations.safetensors"))
            lines = {}
            for h in r.hooks:
                hl, hgrid = pair_change(r, acts, ia, h, n, relative=False)
                if len(hl) and 0 <= edit < hgrid.shape[1]:
                    lines[h] = (hl, hgrid[:, edit])
            ctx["figs"]["edit_lines"] = fig_spec(F.pairs.edit_lines(
                lines, "||a−b|| at the edited token per layer, every saved hook"))
            ctx.update(change_hooks=act_hooks, hook=hook)
    # most changed / most stable components of this pair
    pc = r.table(PAIR_COMPONENTS)
    if pc is not None and "pair_id" in pc:
        d = pc[pc["pair_id"].astype(str) == pair_id]
        if len(d):
            chooks = sorted(set(d["hook"]), key=hook_sort_key)
            ch = arg_choice("chook", chooks, "resid_post" if "resid_post" in chooks else chooks[0])
            d = d[d["hook"] == ch].sort_values(["layer", "kind", "order"], kind="stable")
            comp_rows = []
            for (layer_, kind), g in d.groupby(["layer", "kind"], observed=True, sort=True):
                none = [None] * len(g)
                comp_rows.append({"layer": int(layer_), "kind": kind, "items": [
                    {"component": int(c), "abs_diff": a, "normalized": nv,
                     "href": component_url(r, ch, int(layer_), int(c))}
                    for c, a, nv in zip(g["component"], g.get("abs_diff", none), g.get("normalized", none))]})
            ctx.update(comp_hooks=chooks, comp_hook=ch, comp_rows=comp_rows)
    # attention patterns (saved pairs)
    if pats is not None and pair_id in pats.index and labels:
        ip = pats.index[pair_id]
        pat_layers = pattern_layers(pats)
        if pat_layers:
            layer_ = arg_choice("layer", pat_layers, pat_layers[0])
            head_arg = request.args.get("head", "")
            n_heads = pats.shapes[PATTERN_TEMPLATE.format(layer=layer_)][2]
            head_i = int(head_arg) if head_arg.isdigit() and int(head_arg) < n_heads else None
            ctx.update(pat_layers=pat_layers, layer=layer_, head=head_i, n_heads=n_heads,
                       attention=attention_spec(pats, ip, layer_, len(labels[0]), len(labels[1]), labels, head_i))
    # causal results of this pair
    pt = r.table(PATCHING)
    if pt is not None and "pair_id" in pt:
        d = pt[pt["pair_id"].astype(str) == pair_id]
        if len(d):
            ctx["patching"] = patching_specs(d)
    ap = r.table(ABLATION_PAIRS)
    if ap is not None and "pair_id" in ap:
        d = ap[ap["pair_id"].astype(str) == pair_id]
        if len(d):
            cols = [c for c in ("selection", "k", "seed", "mode", "where", "baseline_margin", "margin",
                                "margin_change") if c in d]
            order = [c for c in ("mode", "where", "selection", "k", "seed") if c in d]
            ctx.update(abl_cols=cols, abl_rows=records(d.sort_values(order, kind="stable") if order else d, cols))
    return render_template("pair.html", **nav(r), row=row, prev_id=prev_id, next_id=next_id, **ctx,
                           n_saved=len(acts.pair_ids) if acts else 0)
